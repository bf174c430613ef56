"""The image encoder: Keras ResNet50 without its classifier, and the kinds of feature it gives.

Input: float32 [batch, 224, 224, 3] already passed through data.images.decode_one (which applies
ResNet50's own preprocess_input). Output, by feature kind (FEATURE_KINDS):
- "pooled": float32 [batch, 2048], the last map averaged over its 7x7 grid;
- "spatial": that last map, [batch, 7, 7, 2048] (SPATIAL_SHAPE), for the attention decoder;
- "conv4": the frozen trunk's output `conv4_block6_out`, [batch, 14, 14, 1024] (CONV4_SHAPE), for
  captioners that train the encoder's top themselves (model/top.py). `build_conv5` is the rest of
  ResNet50 (its conv5_x stage), the trainable top of ImageNet-weight runs.

Weights come from one of three places (model.settings.EncoderConfig.weights):
- "imagenet": Keras' published ImageNet weights. They are looked up in the Keras cache
  (~/.keras/models, or $KERAS_HOME/models) first and only downloaded when absent; without network
  the download fails quickly with EncoderWeightsError explaining how to pass a local copy.
- a path to a local .h5 / .weights.h5 file holding the ResNet50 "notop" weights.
- "random": seeded random initialisation, for tests, benchmarks and the built-in toy dataset.

encoder_id() names the weights; the feature cache stores it so that features computed with other
weights are never mixed in.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import socket
import threading
from urllib.parse import urlsplit

import keras

from data.feature_kinds import (CONV4_SHAPE, FEATURE_DIM, FEATURE_KINDS, GRID,  # noqa: F401
                                SPATIAL_SHAPE)
from data.images import IMAGE_SIZE
from model.settings import EncoderConfig

CONV4_LAYER = "conv4_block6_out"  # the last layer before ResNet50's conv5_x stage

# What Keras' own ResNet50(weights="imagenet", include_top=False) downloads and checks.
IMAGENET_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
                + IMAGENET_FILE)
IMAGENET_MD5 = "4d473c1dd8becc155b73f8504c6f6626"

NETWORK_PROBE_SECONDS = 5.0  # DNS + TCP connect; getaddrinfo has no timeout, so it runs in a thread
DOWNLOAD_SOCKET_TIMEOUT = 30.0  # per blocking socket operation during the download (no total cap)


class EncoderWeightsError(RuntimeError):
    """The requested encoder weights cannot be obtained or do not fit ResNet50."""


def build_encoder(config: EncoderConfig, kind: str = "pooled") -> keras.Model:
    """ResNet50(include_top=False) giving features of `kind` (FEATURE_KINDS) from float32
    [None,224,224,3]: "pooled" [None,2048] (pooling="avg"), "spatial" [None,7,7,2048] (no
    pooling), "conv4" [None,14,14,1024] (cut at CONV4_LAYER).
    Every kind has the same weights for the same config (the pooling layer has none).
    """
    kind = check_kind(kind)
    network = _weighted(config, pooling="avg" if kind == "pooled" else None)
    if kind == "conv4":
        return keras.Model(network.input, network.get_layer(CONV4_LAYER).output,
                           name="resnet50_conv4")
    return network


def build_conv5(config: EncoderConfig | None = None) -> keras.Model:
    """ResNet50's conv5_x stage, [None,14,14,1024] -> [None,7,7,2048]: what follows the "conv4"
    trunk, with the weights of `config` (None: random, for a model whose weights are loaded
    afterwards). Its BatchNorm layers are frozen (trainable=False: Keras then runs them in
    inference mode), the usual recipe when fine-tuning with small batches."""
    network = _weighted(config, pooling=None) if config else _resnet50(None)
    stage = keras.Model(network.get_layer(CONV4_LAYER).output, network.output, name="conv5")
    for layer in stage.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return stage


def check_kind(kind: str) -> str:
    if kind not in FEATURE_KINDS:
        raise ValueError(f"feature kind must be one of {sorted(FEATURE_KINDS)}, got {kind!r}")
    return kind


def _weighted(config: EncoderConfig, pooling: str | None) -> keras.Model:
    """The whole ResNet50 with the weights of `config`."""
    if config.weights == "random":
        # Seeds Python, NumPy, TF and Keras' global seed generator, so the initialisers draw the
        # same values in every process given the same seed.
        keras.utils.set_random_seed(config.seed)
        return _resnet50(pooling)
    if config.weights == "imagenet":
        path = _imagenet_weights_file()  # before building, so a failure is immediate
        return _load(_resnet50(pooling), path, "the ImageNet weights")
    path = pathlib.Path(config.weights).expanduser()
    if not path.is_file():
        raise EncoderWeightsError(
            f"encoder weights file {str(path)!r} does not exist; expected 'imagenet', 'random' or "
            f"the path of a Keras ResNet50 notop weights file ({IMAGENET_FILE})")
    return _load(_resnet50(pooling), path, f"weights file {str(path)!r}")


def encoder_id(config: EncoderConfig) -> str:
    """A stable name of the weights: "imagenet", "random-seed<N>" or "file:<sha256[:16]>".

    A local file holding exactly Keras' ImageNet weights (same MD5 as Keras checks) is "imagenet",
    so a cache made with downloaded weights stays valid when the same file is passed by path.
    Needs no network and no model building.
    """
    if config.weights == "random":
        return f"random-seed{config.seed}"
    if config.weights == "imagenet":
        return "imagenet"
    path = pathlib.Path(config.weights).expanduser()
    if not path.is_file():
        raise EncoderWeightsError(f"encoder weights file {str(path)!r} does not exist")
    md5, sha256 = _file_digests(path)
    return "imagenet" if md5 == IMAGENET_MD5 else f"file:{sha256[:16]}"


def _resnet50(pooling: str | None) -> keras.Model:
    return keras.applications.ResNet50(include_top=False, weights=None, pooling=pooling,
                                       input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))


def _load(model: keras.Model, path: pathlib.Path, what: str) -> keras.Model:
    name = path.name
    if not (name.endswith(".h5") or name.endswith(".hdf5") or name.endswith(".keras")):
        raise EncoderWeightsError(
            f"{what}: expected a .h5 or .weights.h5 file (e.g. {IMAGENET_FILE}), got {name!r}")
    try:
        model.load_weights(str(path))
    except Exception as error:  # h5py OSError, Keras ValueError on layer/shape mismatch, ...
        raise EncoderWeightsError(
            f"{what} could not be loaded into ResNet50 (include_top=False): "
            f"{type(error).__name__}: {error}. Expected Keras' ResNet50 notop weights "
            f"({IMAGENET_FILE}) or a .weights.h5 saved from this encoder.") from error
    return model


def _keras_model_dirs() -> list[pathlib.Path]:
    """Where Keras' get_file keeps downloads: $KERAS_HOME or ~/.keras, else /tmp/.keras."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return [pathlib.Path(home) / "models", pathlib.Path("/tmp/.keras/models")]


def _imagenet_weights_file() -> pathlib.Path:
    for folder in _keras_model_dirs():
        path = folder / IMAGENET_FILE
        if path.is_file():
            if _file_digests(path)[0] != IMAGENET_MD5:
                raise EncoderWeightsError(
                    f"{path} exists but its MD5 is not {IMAGENET_MD5} (incomplete download?). "
                    "Delete it and retry, or pass a good copy with --encoder-weights PATH.")
            return path
    return _download_imagenet_weights()


def _download_imagenet_weights() -> pathlib.Path:
    host = urlsplit(IMAGENET_URL).hostname
    problem = _probe(host, 443, NETWORK_PROBE_SECONDS)
    if problem is None:
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT)  # urlretrieve itself has no timeout
        try:
            return pathlib.Path(keras.utils.get_file(
                IMAGENET_FILE, IMAGENET_URL, cache_subdir="models", file_hash=IMAGENET_MD5))
        except Exception as error:
            problem = f"{type(error).__name__}: {error}"
        finally:
            socket.setdefaulttimeout(previous)
    raise EncoderWeightsError(offline_instructions(problem))


def offline_instructions(problem: str) -> str:
    cache = _keras_model_dirs()[0]
    return (
        f"Downloading the ImageNet ResNet50 weights failed ({problem}).\n"
        f"  URL: {IMAGENET_URL}\n"
        "Fetch that file on a machine with network access, then either\n"
        f"  pass it:  --encoder-weights /path/{IMAGENET_FILE}\n"
        f"  or copy it to {cache}/{IMAGENET_FILE} (Keras looks there first).\n"
        "For a quick run without ImageNet weights use --encoder-weights random "
        "(features are then meaningless for real captioning).")


def _probe(host: str, port: int, timeout: float) -> str | None:
    """None if host:port accepts a TCP connection within `timeout` seconds, else the reason.

    Runs in a daemon thread because name resolution cannot be given a timeout; a hung resolver
    is abandoned, not waited for.
    """
    result: list[str | None] = ["timed out after %.0f s" % timeout]

    def connect():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result[0] = None
        except OSError as error:
            result[0] = f"cannot reach {host}: {error}"

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0]


def _file_digests(path: pathlib.Path) -> tuple[str, str]:
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            md5.update(block)
            sha256.update(block)
    return md5.hexdigest(), sha256.hexdigest()
