"""The one image path: per-item errors, never a failed batch; every common variant decodes."""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data import images
from data.images import decode_batch, decode_one


def encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


# decode_batch as the export and the feature cache run it: traced once into a graph (autograph
# off, as in the export), then only executed. Each eager call traces its tf.data map anew (~1 s on
# 2 cores): the tests below call this one, test_red_image_matches_between_formats and
# test_decode_one_preprocessing_is_resnet_caffe keep the eager path.
decode_traced = tf.function(decode_batch, input_signature=[tf.TensorSpec([None], tf.string)],
                            autograph=False)

RED = Image.new("RGB", (60, 40), (200, 30, 30))
PNG = encode(RED, "PNG")
JPEG = encode(RED, "JPEG")


def variants():
    gif = encode(RED, "GIF", save_all=True, append_images=[Image.new("RGB", (60, 40), (0, 0, 255))])
    return {
        "png": PNG, "jpeg": JPEG, "grey png": encode(RED.convert("L"), "PNG"),
        "rgba png": encode(RED.convert("RGBA"), "PNG"), "palette png": encode(RED.convert("P"), "PNG"),
        "16-bit png": encode(Image.fromarray(np.full((20, 20), 40000, np.uint16)), "PNG"),
        "cmyk jpeg": encode(RED.convert("CMYK"), "JPEG"), "grey jpeg": encode(RED.convert("L"), "JPEG"),
        "progressive jpeg": encode(RED, "JPEG", progressive=True),
        "animated gif": gif, "bmp": encode(RED, "BMP"),
    }


@pytest.mark.parametrize("name", list(variants()))
def test_variants_decode(name):
    batch, errors = decode_traced(tf.constant([variants()[name]]))
    assert errors.numpy()[0] == b"", name
    assert batch.shape == (1, images.IMAGE_SIZE, images.IMAGE_SIZE, 3)
    assert np.abs(batch.numpy()).sum() > 0


def test_red_image_matches_between_formats():
    batch, errors = decode_batch(tf.constant([PNG, encode(RED, "BMP"), encode(RED.convert("RGBA"), "PNG")]))
    assert list(errors.numpy()) == [b"", b"", b""]
    np.testing.assert_allclose(batch[0], batch[1], atol=1e-4)
    np.testing.assert_allclose(batch[0], batch[2], atol=1e-4)


def test_bad_items_get_reasons_and_good_ones_survive():
    huge = encode(Image.new("L", (8000, 8000)), "PNG")  # 64 Mpx, refused from its header
    batch = [PNG, b"", b"just some text", PNG[: len(PNG) // 2], encode(RED, "TIFF"), huge,
             PNG[:30], b"<html><body>no</body></html>", JPEG]
    pixels, errors = decode_traced(tf.constant(batch))
    errors = [e.decode() for e in errors.numpy()]
    assert errors == ["", images.ERROR_EMPTY, images.ERROR_FORMAT, images.ERROR_CORRUPT,
                      images.ERROR_FORMAT, images.ERROR_PIXELS, images.ERROR_CORRUPT,
                      images.ERROR_FORMAT, ""]
    good = decode_traced(tf.constant([PNG]))[0]
    np.testing.assert_allclose(pixels[0], good[0], atol=1e-5)  # neighbours don't disturb it
    assert np.all(pixels.numpy()[1:8] == 0)


def test_inputs_shorter_than_any_magic_are_an_unsupported_format():
    # Shorter than the 12 bytes the sniffer reads (WebP's "RIFF....WEBP"): never "corrupt".
    short = [b"x", b"GIF8", b"\x89PN", b"RIFF", b"RIFF\x00\x00\x00\x00WEB", b"\xff\xd8"]
    _, errors = decode_traced(tf.constant(short))
    assert [e.decode() for e in errors.numpy()] == [images.ERROR_FORMAT] * len(short)


def test_truncated_jpeg_recovered_or_refused_never_raises():
    big = encode(Image.fromarray(np.random.RandomState(0).randint(0, 255, (200, 300, 3), np.uint8)), "JPEG")
    for fraction in (0.3, 0.6, 0.9):
        _, errors = decode_traced(tf.constant([big[: int(len(big) * fraction)], PNG]))
        assert errors.numpy()[0] in (b"", images.ERROR_CORRUPT.encode())
        assert errors.numpy()[1] == b""


def test_all_bad_and_empty_batches():
    pixels, errors = decode_traced(tf.constant([b"", b"x"]))
    assert pixels.shape[0] == 2 and all(e != b"" for e in errors.numpy())
    pixels, errors = decode_traced(tf.constant([], tf.string))
    assert pixels.shape[0] == 0 and errors.shape == (0,)


def test_decode_batch_in_graph():
    fn = tf.function(decode_batch, input_signature=[tf.TensorSpec([None], tf.string)])
    webp = webp_kinds()["extended alpha"][0]
    _, errors = fn(tf.constant([PNG, b"", webp]))
    assert list(errors.numpy()) == [b"", images.ERROR_EMPTY.encode(), b""]


def test_decode_one_preprocessing_is_resnet_caffe():
    image, error = decode_one(tf.constant(encode(Image.new("RGB", (30, 30), (255, 0, 0)), "PNG")))
    assert error.numpy() == b""
    # caffe mode: RGB -> BGR, minus the ImageNet means (103.939, 116.779, 123.68)
    np.testing.assert_allclose(image.numpy()[10, 10], [-103.939, -116.779, 255 - 123.68], atol=1e-3)


# ---- WebP: the three first-chunk kinds, animation, truncation, the pixel cap from the header ----

# Odd, non-square sides catch an off-by-one in the "minus one" fields and swapped width/height.
NOISE = np.random.RandomState(1).randint(0, 255, (37, 61, 3), np.uint8)


def webp_kinds():
    """{name: (bytes, FourCC of the first chunk)}: what Pillow writes for each option."""
    exif = Image.Exif()
    exif[0x010E] = "a WebP with EXIF"  # ImageDescription; any EXIF forces the VP8X layout
    rgba = Image.fromarray(np.dstack([NOISE, np.full(NOISE.shape[:2], 128, np.uint8)]))
    return {
        "lossy": (encode(Image.fromarray(NOISE), "WEBP", quality=90), b"VP8 "),
        "lossless": (encode(Image.fromarray(NOISE), "WEBP", lossless=True), b"VP8L"),
        "extended alpha": (encode(rgba, "WEBP", quality=90), b"VP8X"),
        "extended exif": (encode(Image.fromarray(NOISE), "WEBP", quality=90, exif=exif.tobytes()),
                          b"VP8X"),
        "lossless alpha": (encode(rgba, "WEBP", lossless=True), b"VP8L"),
    }


def errors_of(items):
    return [e.decode() for e in decode_traced(tf.constant(items))[1].numpy()]


def test_format_error_names_webp():
    assert "WebP" in images.ERROR_FORMAT


@pytest.mark.parametrize("name", list(webp_kinds()))
def test_webp_decodes_like_pillow(name):
    data, chunk = webp_kinds()[name]
    assert data[12:16] == chunk, "Pillow wrote another WebP layout than this test is about"
    fmt = images.sniff_format(tf.constant(data))
    assert fmt.numpy() == images.WEBP
    assert images.header_pixels(tf.constant(data), fmt).numpy() == 61 * 37
    # Same size and pixels as Pillow's decode (both use libwebp; alpha dropped, as Pillow's
    # convert("RGB") does), then through the same resize and preprocessing.
    pillow = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(images._decode_rgb(tf.constant(data), fmt), pillow)
    batch, errors = decode_traced(tf.constant([data]))
    assert errors.numpy()[0] == b""
    expected = images.preprocess_for_encoder(tf.constant(pillow))
    np.testing.assert_allclose(batch[0], expected, atol=1e-3)


def test_animated_webp_refused_before_decoding():
    # TF 2.21's decoder aborts the process on this file with channels=0: it must never reach it.
    frames = [Image.fromarray(NOISE), Image.new("RGB", (61, 37), (0, 0, 255))]
    for options in ({"lossless": True}, {"quality": 80}):
        animated = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], **options)
        assert animated[12:16] == b"VP8X" and animated[20] & 0x02
        assert errors_of([animated, PNG]) == [images.ERROR_ANIMATED_WEBP, ""]


@pytest.mark.parametrize("name", list(webp_kinds()))
def test_truncated_webp_is_corrupt_never_raises(name):
    data, _ = webp_kinds()[name]
    cuts = [13, 16, 20, 22, 25, 28, 30] + [int(len(data) * f) for f in (0.1, 0.5, 0.9)] + [-1]
    # One batch: the truncated items fail one by one, the good image after them survives.
    assert errors_of([data[:cut] for cut in cuts] + [PNG]) == (
        [images.ERROR_CORRUPT] * len(cuts) + [""])


def test_webp_header_too_short_or_unknown_chunk_is_corrupt():
    riff = b"RIFF\x00\x10\x00\x00WEBP"
    short = [riff, riff + b"VP8 ", riff + b"VP8L\x00\x10\x00\x00\x2f\x01",
             riff + b"VP8X\x0a\x00\x00\x00" + bytes(6),
             riff + b"ABCD" + bytes(40)]  # the spec allows only VP8, VP8L or VP8X first
    assert errors_of(short + [PNG]) == [images.ERROR_CORRUPT] * len(short) + [""]
    assert errors_of([b"RIFF\x00\x10\x00\x00WAVE" + bytes(40)]) == [images.ERROR_FORMAT]


def forge(data: bytes, offset: int, field: bytes) -> bytes:
    return data[:offset] + field + data[offset + len(field):]


def test_oversize_webp_refused_from_header():
    kinds = webp_kinds()
    lossy, lossless, extended = (kinds[k][0] for k in ("lossy", "lossless", "extended exif"))
    side = (16383).to_bytes(2, "little")  # VP8's largest: 14 bits, scale bits 0
    ones = (2 ** 28 - 1).to_bytes(4, "little")  # VP8L: both 14-bit "minus one" fields all ones
    canvas = (2 ** 24 - 1).to_bytes(3, "little") * 2  # VP8X: 2^24 x 2^24
    forged = {16383 * 16383: forge(lossy, 26, side + side),
              16384 * 16384: forge(lossless, 21, ones),
              2 ** 48: forge(extended, 24, canvas)}
    for pixels, data in forged.items():
        assert images.header_pixels(tf.constant(data), tf.constant(images.WEBP)).numpy() == pixels
    # ERROR_PIXELS, not ERROR_CORRUPT: refused from the header, the decoder never ran (the
    # bitstreams are tiny, so decoding them would have failed).
    assert errors_of(list(forged.values()) + [lossy]) == [images.ERROR_PIXELS] * 3 + [""]
