"""model/encoder.py: weight sources, determinism, and errors that arrive fast and say what to do."""
import hashlib
import os
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest

import model.encoder as encoder_module
from model.encoder import (GRID, IMAGENET_FILE, SPATIAL_SHAPE, EncoderWeightsError, build_encoder,
                           encoder_id)
from model.settings import EncoderConfig
from tests.helpers import REPO


WEIGHTS_DIGEST = """
import hashlib, sys
from model.encoder import build_encoder
from model.settings import EncoderConfig
digest = hashlib.sha256()
for w in build_encoder(EncoderConfig("random", seed=int(sys.argv[1]))).get_weights():
    digest.update(w.tobytes())
print(digest.hexdigest())
"""


def _digest_in_subprocess(seed: int) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", WEIGHTS_DIGEST, str(seed)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def _digest(model: keras.Model) -> str:
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(w.tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def random_encoder():
    return build_encoder(EncoderConfig("random", seed=0))


def test_random_encoder_maps_images_to_2048_features(random_encoder):
    features = random_encoder(np.zeros([2, 224, 224, 3], np.float32), training=False)
    assert tuple(features.shape) == (2, 2048)
    assert features.dtype == "float32"
    assert np.all(np.isfinite(np.asarray(features)))


@pytest.mark.slow
def test_same_seed_gives_identical_weights_in_another_process(random_encoder):
    assert _digest_in_subprocess(0) == _digest(random_encoder)


def test_another_seed_gives_other_weights(random_encoder):
    assert _digest(build_encoder(EncoderConfig("random", seed=1))) != _digest(random_encoder)


def test_encoder_ids_name_the_weights(tmp_path):
    assert encoder_id(EncoderConfig("random", seed=3)) == "random-seed3"
    assert encoder_id(EncoderConfig("imagenet")) == "imagenet"
    path = tmp_path / "some.weights.h5"
    path.write_bytes(b"not really weights")
    file_id = encoder_id(EncoderConfig(str(path)))
    assert file_id.startswith("file:") and len(file_id) == len("file:") + 16
    assert file_id == encoder_id(EncoderConfig(str(path)))  # stable


@pytest.mark.slow
def test_local_weights_file_round_trip(tmp_path, random_encoder):
    path = tmp_path / "encoder.weights.h5"
    random_encoder.save_weights(str(path))
    loaded = build_encoder(EncoderConfig(str(path)))
    images = np.random.default_rng(0).normal(size=[1, 224, 224, 3]).astype(np.float32)
    np.testing.assert_allclose(loaded(images), random_encoder(images), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def spatial_encoder(random_encoder):
    return build_encoder(EncoderConfig("random", seed=0), "spatial")


def test_spatial_encoder_maps_images_to_a_7x7_grid(spatial_encoder):
    assert SPATIAL_SHAPE == (GRID, GRID, 2048) == (7, 7, 2048)
    features = spatial_encoder(np.zeros([2, 224, 224, 3], np.float32), training=False)
    assert tuple(features.shape) == (2, *SPATIAL_SHAPE) and features.dtype == "float32"


def test_spatial_map_averaged_over_the_grid_is_the_pooled_vector(random_encoder, spatial_encoder):
    """Same seed, same weights: the pooled encoder is the spatial one plus a mean over 7x7."""
    assert _digest(spatial_encoder) == _digest(random_encoder)
    images = np.random.default_rng(1).normal(size=[2, 224, 224, 3]).astype(np.float32)
    grid = np.asarray(spatial_encoder(images, training=False))
    pooled = np.asarray(random_encoder(images, training=False))
    np.testing.assert_allclose(grid.mean(axis=(1, 2)), pooled, rtol=1e-4, atol=1e-5)


def test_pooled_encoder_keeps_its_layer_names(random_encoder, spatial_encoder):
    """export/precision.py finds the pooling layer by name."""
    assert random_encoder.layers[-1].name == "avg_pool"
    assert random_encoder.output_shape == (None, 2048)
    # The input layer's name is made unique per process (input_layer, input_layer_1...).
    assert [layer.name for layer in spatial_encoder.layers[1:]] == \
        [layer.name for layer in random_encoder.layers[1:-1]]


@pytest.mark.slow
def test_local_weights_file_loads_into_the_spatial_encoder(tmp_path, random_encoder):
    path = tmp_path / "encoder.weights.h5"
    random_encoder.save_weights(str(path))  # saved from the pooled encoder
    loaded = build_encoder(EncoderConfig(str(path)), "spatial")
    images = np.random.default_rng(2).normal(size=[1, 224, 224, 3]).astype(np.float32)
    grid = np.asarray(loaded(images, training=False))
    assert grid.shape == (1, *SPATIAL_SHAPE)
    np.testing.assert_allclose(grid.mean(axis=(1, 2)), random_encoder(images), rtol=1e-4,
                               atol=1e-5)
    with pytest.raises(EncoderWeightsError, match="nope.h5.*does not exist"):
        build_encoder(EncoderConfig(str(tmp_path / "nope.h5")), "spatial")


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(EncoderWeightsError, match="nope.h5.*does not exist"):
        build_encoder(EncoderConfig(str(missing)))
    with pytest.raises(EncoderWeightsError, match="does not exist"):
        encoder_id(EncoderConfig(str(missing)))


def test_file_that_is_not_resnet50_weights(tmp_path):
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(EncoderWeightsError, match="could not be loaded into ResNet50"):
        build_encoder(EncoderConfig(str(text)))
    with h5py.File(tmp_path / "other.h5", "w") as other:  # legacy layout, one Dense layer
        other.attrs["layer_names"] = [b"dense"]
        layer = other.create_group("dense")
        layer.attrs["weight_names"] = [b"dense/kernel:0"]
        layer.create_dataset("dense/kernel:0", data=np.zeros([4, 2], np.float32))
    with pytest.raises(EncoderWeightsError, match="could not be loaded into ResNet50"):
        build_encoder(EncoderConfig(str(tmp_path / "other.h5")))
    wrong_suffix = tmp_path / "weights.bin"
    wrong_suffix.write_bytes(b"x")
    with pytest.raises(EncoderWeightsError, match=r"expected a \.h5"):
        build_encoder(EncoderConfig(str(wrong_suffix)))


@pytest.mark.parametrize("url", [
    "https://weights.invalid/" + IMAGENET_FILE,  # name resolution fails (RFC 2606 .invalid)
    "https://10.255.255.1/" + IMAGENET_FILE,  # unroutable: connect hangs or is refused
])
def test_imagenet_download_failure_is_fast_and_explains_the_offline_route(
        tmp_path, monkeypatch, url):
    # An empty Keras cache, so the download is attempted; the URL never answers on any machine.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(encoder_module, "_keras_model_dirs", lambda: [tmp_path / "keras/models"])
    monkeypatch.setattr(encoder_module, "IMAGENET_URL", url)
    monkeypatch.setattr(encoder_module, "NETWORK_PROBE_SECONDS", 2.0)
    start = time.monotonic()
    with pytest.raises(EncoderWeightsError) as error:
        build_encoder(EncoderConfig("imagenet"))
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert "Downloading the ImageNet ResNet50 weights failed" in message
    assert f"--encoder-weights /path/{IMAGENET_FILE}" in message
    assert str(tmp_path / "keras/models" / IMAGENET_FILE) in message


def test_imagenet_weights_offline_fail_fast_with_the_real_url(tmp_path, monkeypatch):
    """The real configuration on an offline machine (like CI here): an explanation in seconds."""
    if encoder_module._probe("storage.googleapis.com", 443, 5.0) is None:
        pytest.skip("network available: this would download 94 MB")
    monkeypatch.setattr(encoder_module, "_keras_model_dirs", lambda: [tmp_path / "models"])
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(EncoderWeightsError, match=IMAGENET_FILE):
        build_encoder(EncoderConfig("imagenet"))
    assert time.monotonic() - start < 15


def test_damaged_cached_imagenet_file_is_reported_not_redownloaded(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    (models / IMAGENET_FILE).write_bytes(b"half a download")
    monkeypatch.setattr(encoder_module, "_keras_model_dirs", lambda: [models])
    with pytest.raises(EncoderWeightsError, match="MD5"):
        build_encoder(EncoderConfig("imagenet"))
