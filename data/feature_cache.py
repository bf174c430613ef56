"""Image features, computed once and kept in a sharded on-disk cache, so training reads features.

file bytes -> batches -> data.images.decode_batch (its per-image errors are the skip reasons) ->
encoder -> shard files, the next batches decoded by a thread while the encoder runs.

cache_dir/
  manifest.json    format_version, encoder_id, preprocessing (data.images.PREPROCESSING),
                   feature_shape (any per-image shape: [2048], [7, 7, 2048]...), feature_dtype
  shard-00000.npz  names [k], features [k, *feature_shape], failed_names, failed_reasons [m],
                   stamps [k + m]: "size:mtime_ns" of each image file, for sorted(all its names)
  .lock            flock held while a run writes; other runs wait up to lock_wait_seconds

data.files.atomic_write makes a shard that exists complete: a killed run leaves temp files
(deleted unread) and images without a shard, computed next time. A cache of other weights,
preprocessing or kind of feature is refused; a request for a subset of its images reuses them,
one adding images extends it, one doing both is refused. A shard whose image files changed is
recomputed, never served stale; a failed image is retried once its file changes.
"""
import collections
import contextlib
import fcntl
import io
import itertools
import json
import logging
import os
import pathlib
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from data.files import atomic_write, remove_partial_files
from data.feature_kinds import FEATURE_KINDS
from data.images import IMAGE_SIZE, MAX_IMAGE_BYTES, PREPROCESSING, decode_batch

FORMAT_VERSION = 2
MANIFEST, LOCK, SHARDS = "manifest.json", ".lock", "shard-*.npz"
LOCK_POLL_SECONDS = 1
FEATURE_DTYPES = ("float32", "float16")
ERROR_UNREADABLE = "unreadable image"  # missing, no read permission, a folder (as data.layouts)
FLICKR30K_IMAGES = 31_783  # for the disk-cost projection in ExtractionReport.summary
DEFAULT_SHARD_SIZE = 256

log = logging.getLogger(__name__)


class FeatureCacheError(ValueError):
    """The cache cannot serve this request (other encoder or kind, other image list, missing)."""


@dataclass
class ExtractionReport:
    num_images: int = 0  # requested images
    num_extracted: int = 0  # features computed in this run
    num_reused: int = 0  # features already in the cache
    images_per_second: float = 0.0  # images processed in this run / seconds
    seconds: float = 0.0
    failures: list = field(default_factory=list)  # (name, reason): this run's and earlier ones
    input_wait_seconds: float = 0.0  # the encoder waiting for decoded images: ~0 if they keep up
    feature_shape: tuple = ()
    feature_dtype: str = "float32"
    bytes_per_image: float = 0.0  # the shard files' total size / the features they hold

    @property
    def skipped(self) -> dict:
        """reason -> count of the requested images without features."""
        return dict(collections.Counter(reason for _, reason in self.failures))

    def summary(self) -> str:
        lines = [f"images: {self.num_images}  extracted: {self.num_extracted}  "
                 f"reused: {self.num_reused}  skipped: {len(self.failures)}",
                 f"speed: {self.images_per_second:.1f} images/s over {self.seconds:.1f} s "
                 f"({self.input_wait_seconds:.1f} s waiting for decoded images)"]
        if self.bytes_per_image:
            lines.append(f"disk: {self.bytes_per_image:,.0f} bytes per image ({self.feature_dtype} "
                         f"[{'x'.join(map(str, self.feature_shape))}], measured on the shard "
                         f"files); Flickr30k's {FLICKR30K_IMAGES:,} images: "
                         f"{self.bytes_per_image * FLICKR30K_IMAGES / 1e9:.2f} GB")
        lines += [f"  skipped {count} x {reason}" for reason, count in sorted(self.skipped.items())]
        return "\n".join(lines)


# A shard file but its features: names with features in row order, {failed name: reason},
# {name: its file's stamp when extracted} for both.
_Shard = collections.namedtuple("_Shard", "path names failed stamps")


def extract_features(items: Sequence[tuple[str, pathlib.Path]],
                     encoder: keras.Model | Callable[[], keras.Model], cache_dir, *,
                     encoder_id: str, batch_size: int = 32,
                     shard_size: int = DEFAULT_SHARD_SIZE,
                     progress: bool = True, lock_wait_seconds: float = 0,
                     feature_shape: Sequence[int] | None = None,
                     feature_dtype: str = "float32") -> ExtractionReport:
    """Make sure cache_dir holds features of every (name, path) in items; returns what happened.

    `encoder` maps float32 [B, 224, 224, 3] to [B, *feature_shape], or is a zero-argument function
    building it, called only if something must be computed (a complete cache needs no weights).
    With `feature_shape`, a cache of another shape is refused before any encoder is built. While
    another process extracts into cache_dir, waits up to `lock_wait_seconds`, then reuses its work.
    """
    if batch_size < 1 or shard_size < 1 or feature_dtype not in FEATURE_DTYPES:
        raise ValueError(f"feature_dtype must be one of {FEATURE_DTYPES} and batch_size, "
                         f"shard_size >= 1; got {feature_dtype!r}, {batch_size}, {shard_size}")
    paths: dict[str, str] = {}
    for name, path in items:
        if not (isinstance(name, str) and name) or name in paths:
            raise ValueError(f"image name {name!r} is empty or appears twice; the cache is keyed "
                             "by name")
        paths[name] = os.fspath(path)
    requested = _shape(feature_shape)
    cache_dir = pathlib.Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir, lock_wait_seconds):
        remove_partial_files(cache_dir)  # a killed run's; safe: we hold the lock
        manifest = _manifest(cache_dir, encoder_id, requested, feature_dtype)
        report = ExtractionReport(num_images=len(paths), feature_dtype=feature_dtype)
        pending = _plan(cache_dir, _shards(cache_dir), paths, shard_size, report)
        if pending:
            model = encoder if hasattr(encoder, "output_shape") else encoder()
            shape = _shape(model.output_shape[1:])
            if manifest is None:
                atomic_write(cache_dir / MANIFEST, json.dumps({
                    "format_version": FORMAT_VERSION, "encoder_id": encoder_id,
                    "preprocessing": PREPROCESSING, "feature_shape": shape,
                    "feature_dtype": feature_dtype}, indent=1))
            manifest = _manifest(cache_dir, None, shape, feature_dtype, "this encoder's output")
            _compute(pending, paths, model, manifest, batch_size, progress, report)
        if manifest:
            shards = _shards(cache_dir)
            report.feature_shape = tuple(manifest["feature_shape"])
            report.bytes_per_image = (sum(shard.path.stat().st_size for shard in shards)
                                      / max(1, sum(len(shard.names) for shard in shards)))
    return report


def projected_cache_bytes(items: Sequence[tuple[str, pathlib.Path]], feature_shape: Sequence[int],
                          feature_dtype: str, *, encoder_id: str = "imagenet",
                          shard_size: int = DEFAULT_SHARD_SIZE, progress: bool = False) -> int:
    """Bytes on disk of a complete cache (FEATURE_KINDS gives each kind's shape and dtype) of the
    (name, path) `items`, before extracting anything: the shard files extract_features writes
    (np.savez, uncompressed: features, names and each file's stamp per image, zip and .npy headers
    per shard; every image assumed to decode) plus the manifest. Each shard is written here with
    its real names and stamps and an empty feature array, whose bytes are then added: exact,
    without computing or holding the features."""
    shape, dtype = _shape(feature_shape), str(np.dtype(feature_dtype))
    kind = f"{dtype} [{'x'.join(map(str, shape))}]"
    paths = dict(items)
    names = sorted(paths)
    per_image = int(np.prod(shape)) * np.dtype(dtype).itemsize
    manifest = json.dumps({"format_version": FORMAT_VERSION, "encoder_id": encoder_id,
                           "preprocessing": PREPROCESSING, "feature_shape": list(shape),
                           "feature_dtype": dtype}, indent=1)
    total = len(manifest.encode())
    for start in tqdm(range(0, len(names), shard_size), desc=f"projecting the {kind} cache",
                      unit="shard", disable=not progress):
        shard = names[start:start + shard_size]
        buffer = io.BytesIO()
        np.savez(buffer, names=np.array(shard, str), features=np.zeros((0, *shape), dtype),
                 failed_names=np.array([], str), failed_reasons=np.array([], str),
                 stamps=np.array([_stamp(os.fspath(paths[name])) for name in shard], str))
        header_growth = (_npy_header_bytes((len(shard), *shape), dtype)
                         - _npy_header_bytes((0, *shape), dtype))
        total += buffer.tell() + header_growth + len(shard) * per_image
    return total


def _npy_header_bytes(shape, dtype) -> int:
    """Length of the .npy header np.save writes for an array of this shape and dtype."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
        "shape": tuple(shape)})
    return buffer.tell()


def load_features(cache_dir, names: Sequence[str] | None = None, *,
                  encoder_id: str | None = None, feature_shape: Sequence[int] | None = None,
                  feature_dtype: str | None = None) -> tuple[list[str], np.ndarray]:
    """(names, features [n, *feature_shape] in the stored dtype) from the cache.

    Without `names`: every image with features, in shard order. With `names`: in that order,
    those without features dropped and logged; the returned names say which were kept. With
    `encoder_id`, `feature_shape`, `feature_dtype`: refuse a cache of other weights or another kind.
    Allocated once and filled shard by shard: the peak memory is the result plus one shard.
    """
    cache_dir = pathlib.Path(cache_dir)
    manifest = _manifest(cache_dir, encoder_id, _shape(feature_shape), feature_dtype)
    if manifest is None:
        raise FeatureCacheError(f"no feature cache at {cache_dir} ({MANIFEST} missing); run "
                                "`python -m model.features --cache-dir DIR` first")
    shards = _shards(cache_dir)
    where = {name: (index, row) for index, shard in enumerate(shards)
             for row, name in enumerate(shard.names)}
    kept = list(where) if names is None else [name for name in names if name in where]
    if names is not None and len(kept) < len(names):
        failed = {name for shard in shards for name in shard.failed}
        absent = [name for name in names if name not in where and name not in failed]
        log.log(logging.WARNING if absent else logging.INFO, "%d of %d requested images have no "
                "features in %s: %d were never extracted%s, the rest failed to decode",
                len(names) - len(kept), len(names), cache_dir, len(absent),
                f" (e.g. {absent[:5]})" if absent else "")
    features = np.empty((len(kept), *manifest["feature_shape"]), manifest["feature_dtype"])
    shard_of, row_of = np.array([where[name] for name in kept], int).reshape(-1, 2).T
    for index, shard in enumerate(shards):
        if len(positions := np.flatnonzero(shard_of == index)):
            rows = row_of[positions]
            with np.load(shard.path, allow_pickle=False) as data:
                if _whole_in_order(positions, rows, len(shard.names)):
                    _read_array_into(data, "features", features[positions[0]:positions[-1] + 1])
                else:
                    features[positions] = data["features"][rows]
    return kept, features


def _whole_in_order(positions: np.ndarray, rows: np.ndarray, count: int) -> bool:
    """Whether a shard's `count` rows all go, in order, to consecutive positions."""
    return (len(rows) == count and bool(np.all(rows == np.arange(count)))
            and positions[-1] - positions[0] == count - 1)


def _read_array_into(npz, key: str, destination: np.ndarray, chunk_bytes: int = 1 << 24) -> None:
    """The array `key` of an open .npz read straight into `destination` (same shape and dtype),
    a chunk at a time: no whole-array copy in between, which for a shard of maps is hundreds of
    MB of fresh memory."""
    with npz.zip.open(f"{key}.npy") as stream:
        version = np.lib.format.read_magic(stream)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(stream)
        if (tuple(shape), fortran_order, dtype) != (destination.shape, False, destination.dtype):
            order = " in Fortran order" if fortran_order else ""
            raise FeatureCacheError(f"{key} holds {dtype} {tuple(shape)}{order}, expected "
                                    f"{destination.dtype} {destination.shape} in C order")
        target, done = memoryview(destination).cast("B"), 0
        while done < len(target):
            chunk = stream.read(min(chunk_bytes, len(target) - done))
            if not chunk:
                raise FeatureCacheError(f"{key} ends after {done} of {len(target)} bytes")
            target[done:done + len(chunk)] = chunk
            done += len(chunk)


def _shape(shape) -> list[int] | None:
    """A feature shape ([2048], [7, 7, 2048]...) as a list of positive ints; None stays None."""
    sizes = None if shape is None else [int(size) for size in shape]
    if sizes is not None and (not sizes or min(sizes) < 1):
        raise ValueError(f"a feature shape is a list of positive sizes such as [2048] or "
                         f"[7, 7, 2048]; got {shape!r}")
    return sizes


def _manifest(cache_dir: pathlib.Path, encoder_id: str | None, shape: list | None,
              dtype: str | None, what: str = "requested") -> dict | None:
    """The cache's manifest (None if there is none yet), or FeatureCacheError if it is not one
    this code reads, or the cache was not made by these weights and this preprocessing, or holds
    features of another shape or dtype (None: not checked)."""
    path = cache_dir / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        version = manifest["format_version"]
        if version == FORMAT_VERSION:  # the keys every reader relies on
            manifest["feature_shape"] = _shape(manifest["feature_shape"])
            if manifest["feature_dtype"] not in FEATURE_DTYPES:
                raise KeyError("feature_dtype")
            manifest["encoder_id"], manifest["preprocessing"]
    except (ValueError, KeyError, TypeError) as error:
        raise FeatureCacheError(f"{path} is not a feature-cache manifest (bad or missing "
                                f"{error}); delete the cache directory and extract again") from error
    if version != FORMAT_VERSION:
        raise FeatureCacheError(f"{path} has format version {version!r}, this code reads version "
                                f"{FORMAT_VERSION}; use another cache directory")
    have = f"{manifest['feature_dtype']} {manifest['feature_shape']}"  # "float16 [7, 7, 2048]"
    want = f"{dtype or manifest['feature_dtype']} {shape or manifest['feature_shape']}"
    if encoder_id is not None and manifest["encoder_id"] != encoder_id:
        problem = f"was made with encoder {manifest['encoder_id']!r}, not {encoder_id!r}"
    elif manifest["preprocessing"] != PREPROCESSING:
        problem = (f"holds features of another image preprocessing "
                   f"({manifest['preprocessing']!r}, this code: {PREPROCESSING!r})")
    elif want != have:
        problem = (f"holds {have} features, {what}: {want}; each kind of feature (pooled, "
                   "spatial, ...) needs its own cache")
    else:
        return manifest
    raise FeatureCacheError(f"feature cache {cache_dir} {problem}: use another --cache-dir (or "
                            "delete this one)")


def _plan(cache_dir: pathlib.Path, shards: list[_Shard], paths: dict[str, str], shard_size: int,
          report: ExtractionReport) -> list[tuple[pathlib.Path, list[str]]]:
    """(shard file, sorted names) to compute: the new names and those of shards whose image
    files changed (deleted here), cut into new shards. The rest of the request is counted in
    `report` as reused or skipped."""
    cached = {name for shard in shards for name in shard.stamps}
    new, not_requested = set(paths) - cached, sorted(cached - set(paths))
    if new and not_requested:
        raise FeatureCacheError(
            f"{cache_dir} was made for another image list: {len(new)} requested images are not in "
            f"it (e.g. {min(new)!r}), {len(not_requested)} cached ones not requested (e.g. "
            f"{not_requested[0]!r}); a cache only serves subsets or grows: use another --cache-dir")
    todo = set(new)
    for shard in shards:
        mine = [name for name in shard.stamps if name in paths]
        if all(shard.stamps[name] == _stamp(paths[name]) for name in mine):
            report.num_reused += sum(name not in shard.failed for name in mine)
            report.failures += [(name, shard.failed[name]) for name in mine if name in shard.failed]
        else:  # never served stale; its images not requested are extracted when they are
            log.info("recomputing %s: its image files changed", shard.path)
            shard.path.unlink()
            todo.update(mine)
    todo = sorted(todo)
    first = 1 + max((int(shard.path.stem[len("shard-"):]) for shard in shards), default=-1)
    return [(cache_dir / f"shard-{first + i:05d}.npz", todo[start:start + shard_size])
            for i, start in enumerate(range(0, len(todo), shard_size))]


def _compute(pending: list, paths: dict[str, str], encoder, manifest: dict, batch_size: int,
             progress: bool, report: ExtractionReport) -> None:
    """Computes and writes each pending shard, a batch never spanning two shards."""
    # Stamped before reading: a file changed during the run is recomputed next time. Unopenable
    # files are found here, as inside tf.data a read error would fail the whole batch.
    stamps = {name: _stamp(paths[name]) for _, names in pending for name in names}
    readable = [[name for name in names if stamps[name]] for _, names in pending]
    batches = [[files[i:i + batch_size] for i in range(0, len(files), batch_size)]
               for files in readable]
    decoded = _decoded_batches([[paths[name] for name in batch] for shard in batches
                                for batch in shard])
    encode, dtype = encode_function(encoder), manifest["feature_dtype"]
    bar = tqdm(total=len(stamps), initial=len(stamps) - sum(map(len, readable)), unit="img",
               desc="image features", disable=not progress, smoothing=0.1)
    start = time.perf_counter()
    for (path, names), shard in zip(pending, batches):
        features, failed = {}, {name: ERROR_UNREADABLE for name in names if not stamps[name]}
        for batch in shard:
            waited = time.perf_counter()
            images, errors = next(decoded)
            report.input_wait_seconds += time.perf_counter() - waited
            errors = [error.decode("utf-8") for error in errors.numpy()]
            ok = [i for i, error in enumerate(errors) if not error]
            if ok:  # the images decode_batch refused are zeros: not worth encoding
                found = encode(tf.gather(images, ok) if len(ok) < len(batch) else images).numpy()
                features.update(zip([batch[i] for i in ok], _stored(found, dtype, batch)))
            failed.update((name, error) for name, error in zip(batch, errors) if error)
            bar.update(len(batch))
        good, failed = [name for name in names if name in features], sorted(failed.items())
        atomic_write(path, lambda handle: np.savez(
            handle, names=np.array(good, str), features=np.stack([features[name] for name in good])
            if good else np.zeros((0, *manifest["feature_shape"]), dtype),
            failed_names=np.array([name for name, _ in failed], str),
            failed_reasons=np.array([reason for _, reason in failed], str),
            stamps=np.array([stamps[name] for name in names], str)))
        report.num_extracted += len(good)
        report.failures += failed
    bar.close()
    report.seconds = time.perf_counter() - start
    report.images_per_second = len(stamps) / report.seconds


# Traced once per process, so that only the first extraction pays for it.
_decode_batch = tf.function(decode_batch, input_signature=[tf.TensorSpec([None], tf.string)],
                            autograph=False)


def _decoded_batches(batches: list[list[str]], ahead: int = 2):
    """(float32 images [B, 224, 224, 3], error strings [B]) per batch of files, in order, with
    `ahead` batches decoded by a thread while the caller encodes (a tf.data map would rebuild
    decode_batch's inner pipeline for every extraction, delaying its first batch)."""
    def read(file: str) -> bytes:  # a longer file is refused by its size: never read it whole
        with open(file, "rb") as handle:
            return handle.read(MAX_IMAGE_BYTES + 1)

    with ThreadPoolExecutor(1) as pool:
        queue = collections.deque()
        for files in batches:
            queue.append(pool.submit(lambda files=files: _decode_batch(tf.constant(
                [read(file) for file in files]))))  # bound now: the loop moves on
            if len(queue) > ahead:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()


_encode_functions = weakref.WeakKeyDictionary()  # encoder -> its traced call, while it lives


def encode_function(encoder: keras.Model):
    """`encoder` traced once for any batch size, so later extractions skip tracing it again."""
    if encoder not in _encode_functions:
        model = weakref.ref(encoder)  # a strong reference would keep the entry alive forever
        _encode_functions[encoder] = tf.function(
            lambda images: model()(images, training=False), autograph=False,
            input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32)])
    return _encode_functions[encoder]


def _stored(features: np.ndarray, dtype: str, names: list[str]) -> np.ndarray:
    """An encoder batch in the storage dtype at once (a shard never holds float32 copies of
    float16 maps); values float16 cannot hold are refused rather than stored as inf."""
    with np.errstate(over="ignore"):
        stored = features.astype(dtype, copy=False)
    if stored is not features and not np.isfinite(stored).all() and np.isfinite(features).all():
        raise FeatureCacheError(
            f"the features of the batch {names[0]!r} .. {names[-1]!r} exceed the {dtype} range "
            f"(largest magnitude {np.abs(features).max():.4g}, {dtype} holds up to "
            f"{np.finfo(dtype).max:.4g}); store them as float32 (feature_dtype=\"float32\")")
    return stored


def _stamp(path: str) -> str:
    """Size and modification time: what tells a changed image file from the one cached; "" for
    a file that cannot be read (missing, a folder, no permission)."""
    try:
        stat = os.stat(path)
    except OSError:
        return ""
    return f"{stat.st_size}:{stat.st_mtime_ns}" if os.path.isfile(path) and os.access(
        path, os.R_OK) else ""


def _shards(cache_dir: pathlib.Path) -> list[_Shard]:
    """What the shard files hold (names, not features), in file order."""
    shards = []
    for path in sorted(cache_dir.glob(SHARDS)):
        try:  # atomic writes rule out half-written shards; this is a disk error or manual editing
            with np.load(path, allow_pickle=False) as data:
                names, failed = data["names"].tolist(), data["failed_names"].tolist()
                reasons, stamps = data["failed_reasons"].tolist(), data["stamps"].tolist()
                if "features" not in data.files or len(stamps) != len(names) + len(failed):
                    raise ValueError("not a feature shard")
        except Exception as error:  # zipfile.BadZipFile, KeyError, ValueError, OSError...
            raise FeatureCacheError(f"{path} is damaged ({error}); delete it and run the "
                                    "extraction again to recompute its images") from error
        shards.append(_Shard(path, names, dict(zip(failed, reasons)),
                             dict(zip(sorted(names + failed), stamps))))
    return shards


@contextlib.contextmanager
def _locked(cache_dir: pathlib.Path, wait_seconds: float):
    """Holds the cache's lock, waiting up to `wait_seconds` for another run to release it."""
    with open(cache_dir / LOCK, "a") as handle:  # closing the file releases the lock
        deadline = time.monotonic() + wait_seconds
        for attempt in itertools.count():
            with contextlib.suppress(BlockingIOError):
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            if time.monotonic() >= deadline:
                raise FeatureCacheError(f"another extraction is writing to {cache_dir}; wait for "
                                        "it or use another cache directory")
            if not attempt:
                log.info("waiting up to %.0f s for another extraction into %s to finish",
                         wait_seconds, cache_dir)
            time.sleep(max(0.0, min(LOCK_POLL_SECONDS, deadline - time.monotonic())))
        yield
