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
    batch, errors = decode_batch(tf.constant([variants()[name]]))
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
    pixels, errors = decode_batch(tf.constant(batch))
    errors = [e.decode() for e in errors.numpy()]
    assert errors == ["", images.ERROR_EMPTY, images.ERROR_FORMAT, images.ERROR_CORRUPT,
                      images.ERROR_FORMAT, images.ERROR_PIXELS, images.ERROR_CORRUPT,
                      images.ERROR_FORMAT, ""]
    good = decode_batch(tf.constant([PNG]))[0]
    np.testing.assert_allclose(pixels[0], good[0], atol=1e-5)  # neighbours don't disturb it
    assert np.all(pixels.numpy()[1:8] == 0)


def test_truncated_jpeg_recovered_or_refused_never_raises():
    big = encode(Image.fromarray(np.random.RandomState(0).randint(0, 255, (200, 300, 3), np.uint8)), "JPEG")
    for fraction in (0.3, 0.6, 0.9):
        _, errors = decode_batch(tf.constant([big[: int(len(big) * fraction)], PNG]))
        assert errors.numpy()[0] in (b"", images.ERROR_CORRUPT.encode())
        assert errors.numpy()[1] == b""


def test_all_bad_and_empty_batches():
    pixels, errors = decode_batch(tf.constant([b"", b"x"]))
    assert pixels.shape[0] == 2 and all(e != b"" for e in errors.numpy())
    pixels, errors = decode_batch(tf.constant([], tf.string))
    assert pixels.shape[0] == 0 and errors.shape == (0,)


def test_decode_batch_in_graph():
    fn = tf.function(decode_batch, input_signature=[tf.TensorSpec([None], tf.string)])
    _, errors = fn(tf.constant([PNG, b""]))
    assert list(errors.numpy()) == [b"", images.ERROR_EMPTY.encode()]


def test_decode_one_preprocessing_is_resnet_caffe():
    image, error = decode_one(tf.constant(encode(Image.new("RGB", (30, 30), (255, 0, 0)), "PNG")))
    assert error.numpy() == b""
    # caffe mode: RGB -> BGR, minus the ImageNet means (103.939, 116.779, 123.68)
    np.testing.assert_allclose(image.numpy()[10, 10], [-103.939, -116.779, 255 - 123.68], atol=1e-3)
