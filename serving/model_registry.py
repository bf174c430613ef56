"""Finds, loads, polls and unloads model versions, the way tensorflow_model_server does.

Each model has a base path whose numeric sub-folders are versions. A version is loaded through the
TF1 session path the C++ server uses (tf.compat.v1.Session + saved_model.loader.load with tag
"serve"), its signatures are run by tensor name, and its warmup records (if any) are replayed before
it serves. A poll thread picks up new versions, applies the model_version_policy and unloads the
versions the policy drops; a version that fails to load is logged and the others keep serving.
"""
import dataclasses
import logging
import os
import threading

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving.config_protos import ModelConfig
from serving.errors import DeadlineExceededError, InvalidArgumentError, NotFoundError

log = logging.getLogger("serving.model_registry")

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit
DEFAULT_SIGNATURE = "serving_default"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output of a signature: graph tensor name, numpy dtype, shape (None = any)."""
    tensor_name: str
    dtype: np.dtype | None  # None for an op rather than a tensor (e.g. __saved_model_init_op)
    shape: tuple | None  # None when the rank is unknown

    @classmethod
    def from_tensor_info(cls, info) -> "TensorSpec":
        dtype = tf.dtypes.as_dtype(info.dtype).as_numpy_dtype if info.dtype else None
        shape = None
        if not info.tensor_shape.unknown_rank:
            shape = tuple(d.size if d.size >= 0 else None for d in info.tensor_shape.dim)
        return cls(info.name, np.dtype(dtype) if dtype else None, shape)


@dataclasses.dataclass(frozen=True)
class Signature:
    name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


class LoadedVersion:
    """One loaded model version: a session plus its signatures. session.run is thread-safe."""

    def __init__(self, model_name: str, version: int, path: str):
        self.model_name, self.version, self.path = model_name, version, path
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        try:
            meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)
        except Exception:
            self.session.close()
            raise
        self.signature_defs = meta_graph.signature_def  # protos, for GetModelMetadata
        self.signatures = {
            name: Signature(name, {k: TensorSpec.from_tensor_info(v) for k, v in sig.inputs.items()},
                            {k: TensorSpec.from_tensor_info(v) for k, v in sig.outputs.items()})
            for name, sig in meta_graph.signature_def.items()}
        self._lock = threading.Lock()
        self._users = 0
        self._unloading = False

    def signature(self, name: str) -> Signature:
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise InvalidArgumentError(f'Serving signature name: "{name}" not found in signature def')
        return self.signatures[name]

    def run(self, signature: Signature, inputs: dict[str, np.ndarray],
            timeout: float | None = None) -> dict[str, np.ndarray]:
        """All outputs of `signature` for already validated inputs (alias -> array); a run longer
        than `timeout` seconds is cancelled by TensorFlow and raises DeadlineExceededError."""
        feeds = {signature.inputs[alias].tensor_name: value for alias, value in inputs.items()}
        fetches = {alias: spec.tensor_name for alias, spec in signature.outputs.items()}
        options = None
        if timeout is not None:
            options = tf.compat.v1.RunOptions(timeout_in_ms=max(1, int(timeout * 1000)))
        try:
            return self.session.run(fetches, feeds, options=options)
        except tf.errors.InvalidArgumentError as e:
            raise InvalidArgumentError(e.message) from e
        except tf.errors.DeadlineExceededError as e:
            raise DeadlineExceededError(f"Model run timed out after {timeout} s") from e

    def warm_up(self) -> int:
        """Replays <version>/assets.extra/tf_serving_warmup_requests; returns the record count.
        Raises (failing the load, as TF Serving does) if a record is malformed or fails."""
        path = os.path.join(self.path, WARMUP_FILE)
        if not os.path.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS):
            entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if not entry.HasField("predict_log"):
                raise ValueError(f"{path}: record {count} is not a predict_log (only Predict warmup is supported)")
            request = entry.predict_log.request
            signature = self.signature(request.model_spec.signature_name)
            self.run(signature, {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
            count += 1
        return count

    # Reference counting, so that unloading never closes a session a request is still using.
    def acquire(self) -> None:
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            close = self._unloading and self._users == 0
        if close:
            self.session.close()

    def unload(self) -> None:
        with self._lock:
            self._unloading = True
            close = self._users == 0
        if close:
            self.session.close()


def versions_on_disk(base_path: str) -> dict[int, str]:
    """Numeric version folders holding a saved_model.pb(txt). Temp and non-numeric names are not
    versions; a folder without the model file is still being written and is skipped."""
    try:
        names = os.listdir(base_path)
    except OSError:
        return {}
    found = {}
    for name in names:
        path = os.path.join(base_path, name)
        if not (name.isdigit() and os.path.isdir(path)):
            continue
        if any(os.path.exists(os.path.join(path, f)) for f in ("saved_model.pb", "saved_model.pbtxt")):
            found[int(name)] = path
    return found


def aspired_versions(policy, candidates: list[int]) -> set[int]:
    """The versions a ServableVersionPolicy wants, out of the loadable candidates."""
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return set(candidates)
    if which == "specific":
        return set(candidates) & set(policy.specific.versions)
    keep = policy.latest.num_versions if which == "latest" and policy.latest.num_versions else 1
    return set(sorted(candidates, reverse=True)[:keep])


class ModelRegistry:
    """All configured models and their loaded versions; thread-safe."""

    def __init__(self, configs: list[ModelConfig], warmup: bool = True):
        self.configs = {c.name: c for c in configs}
        self.warmup = warmup
        self._loaded: dict[str, dict[int, LoadedVersion]] = {name: {} for name in self.configs}
        self._failed: dict[str, dict[int, tuple[str, float]]] = {name: {} for name in self.configs}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller = None

    # --- loading -------------------------------------------------------------------------------
    def refresh(self) -> None:
        """One poll: load newly aspired versions first, then unload those no longer aspired (so a
        model stays available across the switch)."""
        for name, config in self.configs.items():
            if self._stop.is_set():
                return
            self._refresh_model(name, config)

    def _refresh_model(self, name: str, config: ModelConfig) -> None:
        on_disk = versions_on_disk(config.base_path)
        failed = self._failed[name]
        for version in list(failed):  # a re-published folder gets another chance
            if version not in on_disk or _model_mtime(on_disk[version]) != failed[version][1]:
                del failed[version]
        loaded = self._loaded[name]
        while True:  # until every aspired version is loaded; a failed one drops out, the next steps in
            aspired = aspired_versions(config.model_version_policy,
                                       [v for v in on_disk if v not in failed])
            missing = sorted(aspired - set(loaded), reverse=True)
            if not missing:
                break
            for version in missing:
                self._load(name, version, on_disk[version])
        for version in set(loaded) - aspired:
            with self._lock:
                old = loaded.pop(version)
            old.unload()
            log.info("unloaded %s version %d", name, version)

    def _load(self, name: str, version: int, path: str) -> None:
        log.info("loading %s version %d from %s", name, version, path)
        try:
            loaded = LoadedVersion(name, version, path)
            if self.warmup:
                records = loaded.warm_up()
                if records:
                    log.info("ran %d warmup records for %s version %d", records, name, version)
        except Exception as e:  # any load failure: keep serving the others
            log.error("failed to load %s version %d from %s: %s", name, version, path, e)
            self._failed[name][version] = (f"{type(e).__name__}: {e}", _model_mtime(path))
            return
        with self._lock:
            self._loaded[name][version] = loaded
        log.info("%s version %d is AVAILABLE", name, version)

    def start_polling(self, interval_seconds: float) -> None:
        """Polls the base paths every interval_seconds in a daemon thread (0 disables polling)."""
        if interval_seconds <= 0:
            return

        def poll():
            while not self._stop.wait(interval_seconds):
                try:
                    self.refresh()
                except Exception:
                    log.exception("version poll failed")

        self._poller = threading.Thread(target=poll, name="version-poller", daemon=True)
        self._poller.start()

    def close(self) -> None:
        self._stop.set()
        if self._poller:
            self._poller.join(timeout=30)
        with self._lock:
            versions = [v for loaded in self._loaded.values() for v in loaded.values()]
            for loaded in self._loaded.values():
                loaded.clear()
        for version in versions:
            version.unload()

    # --- lookup --------------------------------------------------------------------------------
    def acquire(self, name: str, version: int | None = None, label: str | None = None) -> LoadedVersion:
        """The requested version (latest if none), already acquired: call .release() when done."""
        with self._lock:
            if name not in self.configs:
                raise NotFoundError(f"Servable not found for request: Latest({name})")
            loaded = self._loaded[name]
            if label is not None:
                labels = self.configs[name].version_labels
                if label not in labels:
                    raise NotFoundError(f"Unrecognized servable version label: {label}")
                version = labels[label]
            if version is None:
                if not loaded:
                    raise NotFoundError(f"Servable not found for request: Latest({name})")
                version = max(loaded)
            if version not in loaded:
                raise NotFoundError(f"Servable not found for request: Specific({name}, {version})")
            found = loaded[version]
            found.acquire()
            return found

    def status(self, name: str, version: int | None = None, label: str | None = None):
        """[(version, state, error_message)] like GetModelStatus: loaded versions are AVAILABLE,
        versions that failed to load are END with their error."""
        with self._lock:
            if name not in self.configs:
                raise NotFoundError(f"Could not find any versions of model {name}")
            if label is not None:
                if label not in self.configs[name].version_labels:
                    raise NotFoundError(f"Unrecognized servable version label: {label}")
                version = self.configs[name].version_labels[label]
            rows = [(v, "AVAILABLE", "") for v in self._loaded[name]]
            rows += [(v, "END", err) for v, (err, _) in self._failed[name].items()]
        if version is not None:
            rows = [r for r in rows if r[0] == version]
            if not rows:
                raise NotFoundError(f"Could not find version {version} of model {name}")
        if not rows:
            raise NotFoundError(f"Could not find any versions of model {name}")
        return sorted(rows, reverse=True)


def _model_mtime(path: str) -> float:
    for f in ("saved_model.pb", "saved_model.pbtxt"):
        try:
            return os.path.getmtime(os.path.join(path, f))
        except OSError:
            continue
    return 0.0
