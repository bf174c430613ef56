"""The one image path: encoded bytes -> checked, decoded, resized, encoder-preprocessed tensor.

Feature extraction (data/feature_cache.py) and the exported SavedModel (export/) both call
`decode_one`, so training features and served features come from identical code.

Nothing here may raise on bad input inside a batch: TF Serving merges requests from different
clients into one batch, and an op error would fail all of them. `decode_one` returns a reason for
the failures it can see without decoding (empty, unknown format, too large, animated WebP);
anything that makes a decoder raise (corrupt or truncated data) is caught by tf.data's
`ignore_errors` in `decode_batch` and reported as "corrupt image".
"""
import keras
import tensorflow as tf

IMAGE_SIZE = 224  # ResNet50's input side
# Names this exact preprocessing; feature caches record it, so changing the code below (and this
# name) makes old caches refuse to be reused instead of serving features of other pixels.
PREPROCESSING = "rgb-antialias-resize224-resnet50-caffe-v1"
MAX_IMAGE_BYTES = 16 * 1024 * 1024
MAX_PIXELS = 40_000_000  # checked from the header, before any decoding allocates memory

ERROR_EMPTY = "empty input"
ERROR_FORMAT = "unsupported format (expected JPEG, PNG, GIF, BMP or WebP)"
ERROR_BYTES = f"encoded image over {MAX_IMAGE_BYTES} bytes"
ERROR_PIXELS = f"image over {MAX_PIXELS} pixels"
ERROR_CORRUPT = "corrupt or truncated image"
# TF 2.21's WebP decoder corrupts the heap (the process aborts) on animated WebP with channels=0
# and refuses it with any other channel count, so animations are refused before decoding.
ERROR_ANIMATED_WEBP = "animated WebP (only still WebP images are supported)"

# Format codes returned by sniff_format.
UNKNOWN, JPEG, PNG, GIF, BMP, WEBP = 0, 1, 2, 3, 4, 5


def sniff_format(data: tf.Tensor) -> tf.Tensor:
    """Format code of one encoded image from its magic bytes (int32 scalar)."""
    # Padded to 12 bytes: substr past the end of a shorter input would raise (and a 1-byte text
    # would then be reported as corrupt instead of as an unsupported format).
    head = tf.strings.join([tf.strings.substr(data, 0, 12), b"\0" * 12])
    is_jpeg = tf.equal(tf.strings.substr(head, 0, 3), b"\xff\xd8\xff")
    is_png = tf.equal(tf.strings.substr(head, 0, 8), b"\x89PNG\r\n\x1a\n")
    gif_magic = tf.strings.substr(head, 0, 6)
    is_gif = tf.logical_or(tf.equal(gif_magic, b"GIF87a"), tf.equal(gif_magic, b"GIF89a"))
    is_bmp = tf.equal(tf.strings.substr(head, 0, 2), b"BM")
    is_webp = tf.logical_and(tf.equal(tf.strings.substr(head, 0, 4), b"RIFF"),  # RIFF size WEBP
                             tf.equal(tf.strings.substr(head, 8, 4), b"WEBP"))
    return tf.case(
        [(is_jpeg, lambda: tf.constant(JPEG)), (is_png, lambda: tf.constant(PNG)),
         (is_gif, lambda: tf.constant(GIF)), (is_bmp, lambda: tf.constant(BMP)),
         (is_webp, lambda: tf.constant(WEBP))],
        default=lambda: tf.constant(UNKNOWN))


def _read_uint(data: tf.Tensor, offset: int, size: int, big_endian: bool) -> tf.Tensor:
    """Unsigned integer of `size` bytes at `offset` (int64). Raises if the data is too short,
    which decode_batch reports as a corrupt image."""
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(data, offset, size), tf.uint8), tf.int64)
    weights = [256 ** i for i in range(size)]
    if big_endian:
        weights = weights[::-1]
    # An explicit check: a tf.reshape(raw, [size]) guard is dropped by graph optimisation in
    # tf.data, and then 1 byte of a 3-byte field broadcasts into a wrong, huge value.
    return _checked(tf.reduce_sum(raw * tf.constant(weights, tf.int64)),
                    tf.equal(tf.size(raw), size), "header shorter than its fields")


def _checked(value: tf.Tensor, ok, what: str) -> tf.Tensor:
    """`value`, once `ok` holds; otherwise raises (reported as a corrupt image by decode_batch)."""
    with tf.control_dependencies([tf.debugging.Assert(ok, [what])]):
        return tf.identity(value)


def header_pixels(data: tf.Tensor, fmt: tf.Tensor) -> tf.Tensor:
    """Width x height read from the header alone (int64), so huge images are refused before
    decoding. JPEG uses TF's header-only shape op; the others are fixed offsets (WebP's depend
    on its first chunk)."""
    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
        return shape[0] * shape[1]

    def png():  # IHDR: width, height as big-endian uint32 at bytes 16 and 20
        return _read_uint(data, 16, 4, True) * _read_uint(data, 20, 4, True)

    def gif():  # logical screen: little-endian uint16 at bytes 6 and 8
        return _read_uint(data, 6, 2, False) * _read_uint(data, 8, 2, False)

    def bmp():  # BITMAPINFOHEADER: int32 width/height at 18 and 22; height < 0 means top-down
        width = _read_uint(data, 18, 4, False)
        height = _read_uint(data, 22, 4, False)
        height = tf.where(height >= 2 ** 31, 2 ** 32 - height, height)
        return width * height

    return tf.switch_case(fmt - 1, [jpeg, png, gif, bmp, lambda: _webp_pixels(data)],
                          default=lambda: tf.constant(0, tf.int64))


def _webp_pixels(data: tf.Tensor) -> tf.Tensor:
    """Canvas size from the first chunk after "RIFF<size>WEBP" (WebP container spec, RFC 9649).
    For VP8X, libwebp refuses a still image whose bitstream size differs from the canvas, so the
    canvas bounds what gets decoded."""
    chunk = tf.strings.substr(data, 12, 4)  # chunk FourCC; its payload starts at byte 20

    def vp8():  # lossy key frame: 3-byte tag, start code 9d 01 2a, then 14-bit width/height
        start_code_ok = tf.equal(tf.strings.substr(data, 23, 3), b"\x9d\x01\x2a")
        width = tf.bitwise.bitwise_and(_read_uint(data, 26, 2, False), 0x3FFF)  # top 2 bits: scale
        height = tf.bitwise.bitwise_and(_read_uint(data, 28, 2, False), 0x3FFF)
        return _checked(width * height, start_code_ok, "VP8 start code")

    def vp8l():  # lossless: signature 0x2f, then width-1 and height-1 as 14-bit fields, LSB first
        signature_ok = tf.equal(tf.strings.substr(data, 20, 1), b"\x2f")
        bits = _read_uint(data, 21, 4, False)
        width = tf.bitwise.bitwise_and(bits, 0x3FFF) + 1
        height = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 14), 0x3FFF) + 1
        return _checked(width * height, signature_ok, "VP8L signature")

    def vp8x():  # extended: flags, 3 reserved bytes, canvas width-1 and height-1 as uint24
        return (_read_uint(data, 24, 3, False) + 1) * (_read_uint(data, 27, 3, False) + 1)

    def unknown():  # the spec allows only these three first chunks
        return _checked(tf.constant(0, tf.int64), tf.constant(False), "WebP first chunk")

    return tf.case([(tf.equal(chunk, b"VP8 "), vp8), (tf.equal(chunk, b"VP8L"), vp8l),
                    (tf.equal(chunk, b"VP8X"), vp8x)], default=unknown)


def webp_is_animated(data: tf.Tensor) -> tf.Tensor:
    """Animation flag (bit 0x02 of the VP8X flags byte 20); only extended WebP can animate."""
    flags = tf.cast(tf.io.decode_raw(tf.strings.substr(data, 20, 1), tf.uint8), tf.int32)
    return tf.logical_and(tf.equal(tf.strings.substr(data, 12, 4), b"VP8X"),
                          tf.reduce_any(tf.bitwise.bitwise_and(flags, 0x02) > 0))


def _decode_rgb(data: tf.Tensor, fmt: tf.Tensor) -> tf.Tensor:
    """uint8 [h, w, 3]. Grey, RGBA, palette and 16-bit PNGs, CMYK JPEGs and WebP with alpha
    become RGB; an animated GIF gives its first frame; a truncated JPEG is recovered as far as
    its data goes."""
    def jpeg():
        return tf.io.decode_jpeg(data, channels=3, try_recover_truncated=True,
                                 acceptable_fraction=0.25)

    def webp():  # [frames=1, h, w, 3 or 4]: the decoder keeps the file's channels; drop alpha
        image = tf.io.decode_webp(data)[0, :, :, :3]
        image.set_shape([None, None, 3])
        return image

    def other():
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        image.set_shape([None, None, 3])
        return image

    return tf.case([(tf.equal(fmt, JPEG), jpeg), (tf.equal(fmt, WEBP), webp)], default=other)


def preprocess_for_encoder(rgb: tf.Tensor) -> tf.Tensor:
    """uint8 RGB [h, w, 3] -> float32 [224, 224, 3] in ResNet50's own input convention."""
    image = tf.image.resize(tf.cast(rgb, tf.float32), (IMAGE_SIZE, IMAGE_SIZE), antialias=True)
    image = tf.clip_by_value(image, 0.0, 255.0)
    return keras.applications.resnet50.preprocess_input(image)


def decode_one(data: tf.Tensor):
    """One encoded image -> (float32 [224, 224, 3] encoder input, error string).

    The error is "" for a good image; otherwise the image is zeros. May still raise for corrupt
    data (decoders do): run it under tf.data's ignore_errors, as decode_batch does.
    """
    zeros = tf.zeros([IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32)
    size = tf.strings.length(data)
    # Cheap checks first; the header is only parsed for a known format of acceptable size.
    fmt = tf.cond(size > 0, lambda: sniff_format(data), lambda: tf.constant(UNKNOWN))
    pre_error = tf.case(
        [(tf.equal(size, 0), lambda: tf.constant(ERROR_EMPTY)),
         (tf.equal(fmt, UNKNOWN), lambda: tf.constant(ERROR_FORMAT)),
         (size > MAX_IMAGE_BYTES, lambda: tf.constant(ERROR_BYTES))],
        default=lambda: tf.constant(""))
    readable = tf.equal(pre_error, "")
    pixels = tf.cond(readable, lambda: header_pixels(data, fmt), lambda: tf.constant(0, tf.int64))
    animated = tf.cond(tf.logical_and(readable, tf.equal(fmt, WEBP)),
                       lambda: webp_is_animated(data), lambda: tf.constant(False))
    error = tf.where(pixels > MAX_PIXELS, ERROR_PIXELS,
                     tf.where(animated, ERROR_ANIMATED_WEBP, pre_error))
    image = tf.cond(tf.equal(error, ""), lambda: preprocess_for_encoder(_decode_rgb(data, fmt)),
                    lambda: zeros)
    return image, error


def decode_batch(images: tf.Tensor):
    """Encoded images [n] -> (float32 [n, 224, 224, 3], error strings [n]); never raises.

    Each item is decoded in a tf.data map so that an item whose decoder raises is dropped by
    ignore_errors instead of failing the batch; dropped items come back as ERROR_CORRUPT.
    """
    n = tf.shape(images, out_type=tf.int64)[0]
    items = tf.data.Dataset.from_tensor_slices((tf.range(n), images))
    decoded = items.map(lambda i, data: (i, *decode_one(data)),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    # A sentinel that always decodes, so the batch below is never empty even if every item failed.
    sentinel = tf.data.Dataset.from_tensors(
        (tf.constant(-1, tf.int64), tf.zeros([IMAGE_SIZE, IMAGE_SIZE, 3]), tf.constant("")))
    index, pixels, errors = decoded.concatenate(sentinel).batch(n + 1).get_single_element()
    keep = index >= 0
    rows = tf.boolean_mask(index, keep)[:, None]
    batch = tf.scatter_nd(rows, tf.boolean_mask(pixels, keep),
                          tf.stack([n, IMAGE_SIZE, IMAGE_SIZE, 3]))
    decoded_mask = tf.scatter_nd(rows, tf.ones_like(rows[:, 0], tf.bool), tf.reshape(n, [1]))
    error = tf.tensor_scatter_nd_update(tf.fill(tf.reshape(n, [1]), ERROR_CORRUPT), rows,
                                        tf.boolean_mask(errors, keep))
    return batch, tf.where(decoded_mask, error, ERROR_CORRUPT)
