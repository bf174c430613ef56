"""The exported model folder, as TF Serving reads it: `<base>/<version>/saved_model.pb` + variables,
assets and `assets.extra/tf_serving_warmup_requests`.

Everything that decides whether the real server can use an export lives here, once:
- which folders are versions (`list_versions`, `latest_version`, `next_version`);
- how a version appears (`publish_version`: written into a temp folder beside the base, renamed
  into place in one step, because the server polls the base and would load a half-written folder);
- the warmup records (`WARMUP`, `write_warmup`, replayed by `SessionModel.warm_up`);
- loading a version the way tensorflow_model_server does (`SessionModel`: the C++ SavedModel loader
  into a TF1 session, signatures run by tensor name; not Python's tf.saved_model.load), with the
  server's session options (`session_config`: its --mixed_precision=bfloat16 rewrite).
"""
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

from export.loaded_model import LoadedModel, ModelLoadError

WARMUP = Path("assets.extra") / "tf_serving_warmup_requests"  # inside a version folder
SETTINGS = Path("assets") / "export_settings.json"  # what export.saved_model recorded
MAX_WARMUP_RECORDS = 1000  # TF Serving reads at most this many
TMP_PREFIX = ".tmp-"  # .tmp-<version>-<pid>: not a number, so no server takes it for a version
SERVER_MIXED_PRECISIONS = ("", "bfloat16")  # tensorflow_model_server --mixed_precision


def export_settings(version_dir) -> dict:
    """The settings an export recorded (precision, decoding, weights digest...); {} if none."""
    path = Path(version_dir) / SETTINGS
    return json.loads(path.read_text()) if path.is_file() else {}


def _numbered_folders(model_base) -> dict[int, Path]:
    base = Path(model_base)
    return {int(p.name): p for p in base.iterdir() if p.name.isdigit()} if base.is_dir() else {}


def list_versions(model_base) -> dict[int, Path]:
    """Numeric folders holding a saved_model.pb, by version number. A numeric folder without it
    is still being written (or is not a model) and is left out, as TF Serving leaves it."""
    return {v: p for v, p in _numbered_folders(model_base).items() if (p / "saved_model.pb").is_file()}


def latest_version(path) -> Path:
    """`path` itself if it is a version folder, else the newest version inside the base `path`."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = list_versions(path)
    if not versions:
        raise FileNotFoundError(f"{path} holds no SavedModel (saved_model.pb) nor numeric "
                                "version folders with one; export first (python -m export.saved_model)")
    return versions[max(versions)]


def next_version(model_base) -> int:
    """One above every numeric folder, complete or not (a half-written one still takes its number)."""
    return max(_numbered_folders(model_base), default=0) + 1


def publish_version(model_base, write: Callable[[Path, int], None], version="auto") -> Path:
    """Calls write(folder, version) to create the version in a temp folder beside the base, then
    renames it to <base>/<version>: the server sees all of it or nothing. Returns the final path."""
    base = Path(model_base)
    base.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(base)
    version = next_version(base) if str(version) == "auto" else int(version)
    final = base / str(version)
    if final.exists():
        raise FileExistsError(f"{final} already exists; pass --version auto or a new number")
    temp = base / f"{TMP_PREFIX}{version}-{os.getpid()}"
    try:
        write(temp, version)
        os.rename(temp, final)  # atomic on one file system; fails if another writer took the number
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return final


def _remove_stale_temps(base: Path) -> None:
    """A killed export leaves .tmp-<version>-<pid>; servers ignore it, we tidy it once its pid is gone."""
    for temp in base.glob(TMP_PREFIX + "*"):
        pid = temp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(temp, ignore_errors=True)


def write_warmup(version_dir, requests: list[tuple[str, dict]]) -> Path:
    """Writes (signature, {input: value}) pairs as the PredictionLog records TF Serving replays
    before serving a version, so no user meets the first (slow, graph-initialising) call. Not a
    separate atomic write: it goes into a version folder that is published as a whole."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    path = Path(version_dir) / WARMUP
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in requests[:MAX_WARMUP_RECORDS]:
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = signature
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def session_config(mixed_precision: str = "") -> tf.compat.v1.ConfigProto:
    """The session options of `tensorflow_model_server --mixed_precision=<mixed_precision>`:
    "" computes as exported; "bfloat16" turns on grappler's oneDNN bfloat16 auto-mixed-precision
    rewrite (worth it only on CPUs with AMX-BF16 or AVX512-BF16; slower on CPUs without them)."""
    if mixed_precision not in SERVER_MIXED_PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {SERVER_MIXED_PRECISIONS} "
                         f"('' = as exported), got {mixed_precision!r}")
    config = tf.compat.v1.ConfigProto()
    if mixed_precision == "bfloat16":
        config.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 = (
            rewriter_config_pb2.RewriterConfig.ON)
    return config


# TF Serving's loading path. Its TF1 deprecation notice concerns this project's call, not the user,
# so the undecorated function (__wrapped__) is called.
_load = getattr(tf.compat.v1.saved_model.loader.load, "__wrapped__", tf.compat.v1.saved_model.loader.load)


class SessionModel(LoadedModel):
    """A version loaded by the C++ SavedModel loader into a TF1 session, its signatures run by
    tensor names: the path tensorflow_model_server takes. `run` is safe to call from many threads.
    A failed load raises ModelLoadError; a bad request ValueError (export/loaded_model.py)."""

    def __init__(self, export_dir, config: tf.compat.v1.ConfigProto | None = None):
        self.export_dir = Path(export_dir)
        self.session = tf.compat.v1.Session(graph=tf.Graph(), config=config)  # config: session_config()
        try:
            self.meta_graph = _load(self.session, ["serve"], str(self.export_dir))
        except Exception as error:
            self.session.close()
            raise ModelLoadError(f"{self.export_dir}: loading the SavedModel failed: {error}") from error
        self.signatures = dict(self.meta_graph.signature_def)

    def run(self, signature: str, inputs: dict) -> dict:
        """All outputs of `signature` ("" = serving_default) as numpy arrays."""
        sig = self.checked_signature(signature, inputs)
        feed = {sig.inputs[name].name: value for name, value in inputs.items()}
        fetch = {name: info.name for name, info in sig.outputs.items()}
        return self.session.run(fetch, feed)

    def warm_up(self) -> int:
        """Replays the version's warmup records; returns how many. A failing record raises, and
        so fails the load, as in TF Serving."""
        from tensorflow_serving.apis import prediction_log_pb2

        path = self.export_dir / WARMUP
        if not path.is_file():
            return 0
        count = 0
        for record in tf.compat.v1.io.tf_record_iterator(str(path)):
            request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
            self.run(request.model_spec.signature_name,
                     {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
            count += 1
            if count == MAX_WARMUP_RECORDS:
                break
        return count

    def close(self) -> None:
        self.session.close()

