"""Image features, computed once by a tf.data pipeline and kept in a sharded on-disk cache.

Pipeline: (name, path) -> tf.io.read_file -> data.images.decode_one (parallel, deterministic
order) -> ignore_errors -> batch -> encoder -> shard files. Bad images never stop the run: the
reasons decode_one reports ("empty input", "unsupported format ...", ...) are counted, an image
whose decoder raises is dropped by ignore_errors and counted as ERROR_CORRUPT (found as a name
missing from the output), and a missing/unreadable file is counted as ERROR_UNREADABLE.

Cache layout (cache_dir/):
  manifest.json       format_version, encoder_id, image_size, feature_shape (e.g. [2048], or
                      [7, 7, 2048] for spatial maps), feature_dtype ("float32" | "float16"),
                      feature_dim (= feature_shape[-1]), shard_size and, per shard, its file name
                      and the sorted image names assigned to it. A manifest without
                      feature_shape/feature_dtype (written before they existed) is a float32
                      [feature_dim] cache.
  shard-00000.npz     names (unicode [k]), features (feature_dtype [k, *feature_shape]),
                      failed_names, failed_reasons (unicode [m]); k + m = the shard's names;
                      stamps (unicode [k + m]): "size:mtime_ns" of each file, in manifest order
  .lock               held (flock) while an extraction writes, so two runs never interleave

Names are sorted and cut into shards of `shard_size`, so a resumed run plans the very same shards
(the manifest's plan wins: shard_size only applies to shards added later).
Shards and the manifest are written by data.files.atomic_write (temp file, then renamed): a shard
file that exists is complete, an interrupted run redoes only the missing shards, and temp files
left by a killed run are deleted, never read.

Storage: each encoder batch is converted to feature_dtype as soon as it is computed. float16
halves the disk and memory cost of a spatial map: 7 * 7 * 2048 * 2 = 200,704 bytes per image
(6.4 GB for Flickr30k's 31,783 images) instead of 401,408.

Reuse rules:
- another encoder_id (or image size / format version) -> FeatureCacheError: use another cache_dir.
- another feature shape or dtype (a spatial request on a pooled cache, ...) -> FeatureCacheError
  naming both: use another cache_dir.
- the requested names are a subset of the cached ones -> reused as they are.
- the request adds new names to everything cached -> the cache is extended with new shards for the
  new names only (sorted among themselves); existing shards are untouched.
- both new names and cached names not requested -> FeatureCacheError: the cache belongs to another
  image list.
Each shard also records every image file's size and modification time: a shard whose files
changed since (an image replaced under the same name, a regenerated dataset) is recomputed, never
served stale. Images that failed are recorded as failed and are not retried on later runs (their
reasons are reported again); delete the cache to retry after fixing the files.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pathlib
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from data.files import atomic_write, remove_partial_files
from data.images import ERROR_CORRUPT, IMAGE_SIZE, PREPROCESSING, decode_one

FORMAT_VERSION = 2  # 2: shards carry file stamps
MANIFEST = "manifest.json"
LOCK = ".lock"
LOCK_POLL_SECONDS = 1
SHARD_KEYS = ("names", "features", "failed_names", "failed_reasons", "stamps")
# A missing file, no read permission, a folder: the same words data.layouts uses for empty files.
ERROR_UNREADABLE = "unreadable image"
FEATURE_DTYPES = ("float32", "float16")
FLICKR30K_IMAGES = 31_783  # for the disk-cost projection in ExtractionReport.summary

log = logging.getLogger(__name__)


class FeatureCacheError(ValueError):
    """The cache cannot be used for this request (other encoder, other image list, missing...)."""


@dataclass
class ExtractionReport:
    num_images: int  # requested images
    num_extracted: int  # features computed in this run
    num_reused: int  # features already in the cache
    skipped: dict  # reason -> count, over all requested images (this run's and earlier failures)
    images_per_second: float  # images processed in this run / seconds
    seconds: float
    failures: list = field(default_factory=list)  # (name, reason) pairs, for SkipReport examples
    # Time the encoder sat waiting for decoded images: near 0 when decoding keeps up (the first
    # batch only); large on slow disks or when decoding is the bottleneck.
    input_wait_seconds: float = 0.0
    # What the cache's shard files take on disk: their total size / the images they hold.
    feature_shape: tuple = ()
    feature_dtype: str = "float32"
    bytes_per_image: float = 0.0

    def summary(self) -> str:
        lines = [f"images: {self.num_images}  extracted: {self.num_extracted}  "
                 f"reused: {self.num_reused}  skipped: {sum(self.skipped.values())}",
                 f"speed: {self.images_per_second:.1f} images/s over {self.seconds:.1f} s "
                 f"({self.input_wait_seconds:.1f} s waiting for decoded images)"]
        if self.bytes_per_image:
            shape = "x".join(map(str, self.feature_shape))
            lines.append(f"disk: {self.bytes_per_image:,.0f} bytes per image ({self.feature_dtype} "
                         f"[{shape}], measured on the shard files); Flickr30k's "
                         f"{FLICKR30K_IMAGES:,} images: "
                         f"{self.bytes_per_image * FLICKR30K_IMAGES / 1e9:.2f} GB")
        lines += [f"  skipped {count} x {reason}" for reason, count in sorted(self.skipped.items())]
        return "\n".join(lines)


@dataclass
class _Shard:
    file: str
    names: list[str]


# ---------------------------------------------------------------------------------------------
# Public API


def extract_features(items: Sequence[tuple[str, pathlib.Path]],
                     encoder: keras.Model | Callable[[], keras.Model], cache_dir, *,
                     encoder_id: str, batch_size: int = 32, shard_size: int = 256,
                     progress: bool = True, lock_wait_seconds: float = 0,
                     feature_shape: Sequence[int] | None = None,
                     feature_dtype: str = "float32") -> ExtractionReport:
    """Make sure cache_dir holds features of every (name, path) in items; returns what happened.

    `encoder` maps float32 [B,224,224,3] to [B, *feature_shape] ([B,D] or [B,7,7,D]); it may also
    be a zero-argument function building it, called only if some shard has to be computed (a
    complete cache then needs no weights at all). Features are stored as `feature_dtype`. With
    `feature_shape`, a cache holding another shape is refused before any encoder is built (else
    once it is). When another process is extracting into cache_dir, waits up to
    `lock_wait_seconds` for it to finish (then reuses its shards) before refusing.
    """
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}")
    _check_dtype(feature_dtype)
    requested = None if feature_shape is None else _shape(feature_shape)
    paths = _check_items(items)
    cache_dir = pathlib.Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(cache_dir, lock_wait_seconds):
        remove_partial_files(cache_dir)  # a killed run's; safe: we hold the lock
        old = _read_manifest(cache_dir)
        manifest = _plan(old, sorted(paths), cache_dir, encoder_id, shard_size, feature_dtype)
        _check_kind(cache_dir, manifest, requested, feature_dtype)
        wanted = [s for s in manifest["shards"] if not set(s.names).isdisjoint(paths)]
        done, pending = [], []
        for shard in wanted:
            current = (_shard_readable(cache_dir / shard.file)
                       and _files_unchanged(cache_dir / shard.file, shard, paths))
            (done if current else pending).append(shard)
        report = _count_reused(cache_dir, done, paths)
        for shard in pending:
            unknown = [n for n in shard.names if n not in paths]
            if unknown:
                raise FeatureCacheError(
                    f"{cache_dir}: unfinished {shard.file} holds images not in this request "
                    f"(e.g. {unknown[0]!r}); re-run the extraction with the full image list "
                    "that created this cache, or use another cache directory")
        if pending:
            model = encoder if _is_model(encoder) else encoder()
            shape = _shape(model.output_shape[1:])
            _check_kind(cache_dir, manifest, shape, feature_dtype, "this encoder's output")
            manifest["feature_shape"], manifest["feature_dim"] = list(shape), shape[-1]
            manifest["feature_dtype"] = feature_dtype
            _write_manifest(cache_dir, manifest)
            _compute(pending, paths, model, cache_dir, batch_size, progress, report,
                     feature_dtype)
        elif manifest != old:
            _write_manifest(cache_dir, manifest)
        shape, report.feature_dtype = _kind(manifest)
        report.feature_shape = shape or ()
        report.bytes_per_image = _bytes_per_image(cache_dir, manifest)
    report.num_images = len(paths)
    return report


def load_features(cache_dir, names: Sequence[str] | None = None, *,
                  encoder_id: str | None = None, feature_shape: Sequence[int] | None = None,
                  feature_dtype: str | None = None) -> tuple[list[str], np.ndarray]:
    """(names, features [n, *feature_shape] in the stored dtype) from the cache.

    Without `names`: every image with features, in shard order. With `names`: in that order;
    names without features are dropped and logged (at INFO when the cache records them as failed
    images, at WARNING when they were never extracted); the returned names say which were kept.
    With `encoder_id`, `feature_shape`, `feature_dtype`: refuse a cache made with other weights,
    holding another shape or stored in another dtype.

    The names are read first and the result is allocated once, then filled shard by shard: the
    peak memory is the result plus one shard (Flickr30k's spatial maps are 6.4 GB in float16).
    """
    cache_dir = pathlib.Path(cache_dir)
    manifest = _read_manifest(cache_dir)
    if manifest is None:
        raise FeatureCacheError(f"no feature cache at {cache_dir} ({MANIFEST} missing); run "
                                "`python -m model.features --cache-dir DIR` first")
    if encoder_id is not None and manifest["encoder_id"] != encoder_id:
        raise FeatureCacheError(_encoder_mismatch(cache_dir, manifest["encoder_id"], encoder_id))
    _check_kind(cache_dir, manifest, None if feature_shape is None else _shape(feature_shape),
                feature_dtype or _kind(manifest)[1])
    shape, dtype = _kind(manifest)
    files, where, failed = [], {}, set()  # where: name -> (index in files, row in that shard)
    for shard in manifest["shards"]:
        path = cache_dir / shard.file
        if path.exists():
            with np.load(path, allow_pickle=False) as data:
                for row, name in enumerate(data["names"].tolist()):
                    where[name] = (len(files), row)
                failed.update(data["failed_names"].tolist())
            files.append(path)
    if names is None:
        kept = list(where)
    else:
        kept = [name for name in names if name in where]
        if len(kept) < len(names):
            missing = [name for name in names if name not in where]
            absent = [name for name in missing if name not in failed]
            log.info("%d of %d requested images have no features in %s: %d failed to decode, "
                     "%d never extracted", len(missing), len(names), cache_dir,
                     len(missing) - len(absent), len(absent))
            if absent:
                log.warning("%d requested images were never extracted into %s, e.g. %s",
                            len(absent), cache_dir, absent[:5])
    features = np.empty((len(kept), *(shape or (0,))), dtype)
    targets = [[] for _ in files]  # per shard: (row in the result, row in the shard)
    for position, name in enumerate(kept):
        index, row = where[name]
        targets[index].append((position, row))
    for path, pairs in zip(files, targets):
        if not pairs:
            continue
        with np.load(path, allow_pickle=False) as data:
            block = data["features"]
        if block.shape[1:] != features.shape[1:] or block.dtype != features.dtype:
            raise FeatureCacheError(
                f"{path} holds {block.dtype} {list(block.shape[1:])} features but the manifest "
                f"says {dtype} {list(shape or ())}; delete the cache directory and extract again")
        positions, rows = np.array(pairs).T
        features[positions] = block[rows]
    return kept, features


def cache_info(cache_dir) -> dict:
    """What a cache holds: its settings, shard counts, features and failures by reason."""
    cache_dir = pathlib.Path(cache_dir)
    manifest = _read_manifest(cache_dir)
    if manifest is None:
        raise FeatureCacheError(f"no feature cache at {cache_dir} ({MANIFEST} missing)")
    num_done, num_features, failed = 0, 0, Counter()
    shape, dtype = _kind(manifest)
    for shard in manifest["shards"]:
        path = cache_dir / shard.file
        if path.exists():
            with np.load(path, allow_pickle=False) as data:
                num_done += 1
                num_features += len(data["names"])
                failed.update(data["failed_reasons"].tolist())
    shards = manifest["shards"]
    return {
        "cache_dir": str(cache_dir), "format_version": manifest["format_version"],
        "encoder_id": manifest["encoder_id"], "image_size": manifest["image_size"],
        "feature_dim": manifest.get("feature_dim"),
        "feature_shape": None if shape is None else list(shape), "feature_dtype": dtype,
        "bytes_per_image": round(_bytes_per_image(cache_dir, manifest), 1),
        "shard_size": manifest["shard_size"],
        "num_shards": len(shards), "num_shards_done": num_done,
        "num_images": sum(len(s.names) for s in shards), "num_features": num_features,
        "num_failed": sum(failed.values()), "failed": dict(failed),
        "complete": num_done == len(shards),
    }


# ---------------------------------------------------------------------------------------------
# Planning: which shards exist, which to compute


def _check_items(items) -> dict[str, str]:
    paths: dict[str, str] = {}
    for entry in items:
        name, path = entry
        if not isinstance(name, str) or not name:
            raise ValueError(f"image names must be non-empty strings, got {name!r}")
        if name in paths:
            raise ValueError(f"image name {name!r} appears twice; the cache is keyed by name")
        paths[name] = os.fspath(path)
    return paths


def _plan(old: dict | None, names: list[str], cache_dir: pathlib.Path, encoder_id: str,
          shard_size: int, feature_dtype: str) -> dict:
    """The manifest for this request: the old one, possibly extended by shards of new names."""
    if old is None:
        return {"format_version": FORMAT_VERSION, "encoder_id": encoder_id,
                "image_size": IMAGE_SIZE, "preprocessing": PREPROCESSING,
                "feature_shape": None, "feature_dtype": feature_dtype, "feature_dim": None,
                "shard_size": shard_size, "shards": _cut(names, shard_size, 0)}
    if old["encoder_id"] != encoder_id:
        raise FeatureCacheError(_encoder_mismatch(cache_dir, old["encoder_id"], encoder_id))
    if old["image_size"] != IMAGE_SIZE:
        raise FeatureCacheError(f"{cache_dir} holds features of {old['image_size']}px images, "
                                f"this code makes {IMAGE_SIZE}px; use another cache directory")
    if old.get("preprocessing") != PREPROCESSING:
        raise FeatureCacheError(f"{cache_dir} holds features of another image preprocessing "
                                f"({old.get('preprocessing')!r}, this code: {PREPROCESSING!r}); "
                                "use another cache directory or delete this one")
    cached = {name for shard in old["shards"] for name in shard.names}
    new = [name for name in names if name not in cached]
    if not new:
        return old
    requested = set(names)
    not_requested = [name for name in cached if name not in requested]
    if not_requested:
        raise FeatureCacheError(
            f"{cache_dir} was made for another image list: {len(new)} requested images are not "
            f"in it (e.g. {new[0]!r}) and {len(not_requested)} cached images were not requested "
            f"(e.g. {sorted(not_requested)[0]!r}). A cache is only reused for a subset of its "
            "images or extended by new ones; use another --cache-dir")
    extended = dict(old)
    extended["shards"] = old["shards"] + _cut(new, shard_size, len(old["shards"]))
    return extended


def _cut(names: list[str], shard_size: int, first_index: int) -> list[_Shard]:
    return [_Shard(f"shard-{first_index + i:05d}.npz", names[start:start + shard_size])
            for i, start in enumerate(range(0, len(names), shard_size))]


def _encoder_mismatch(cache_dir, cached_id: str, requested_id: str) -> str:
    return (f"feature cache {cache_dir} was made with encoder {cached_id!r}, not "
            f"{requested_id!r}; use another cache directory (or delete this one)")


def _shape(shape) -> tuple[int, ...]:
    """A feature shape as a tuple of positive ints ([2048], (7, 7, 2048), a Keras output shape)."""
    try:
        shape = tuple(int(size) for size in shape)
    except (TypeError, ValueError):
        shape = ()
    if not shape or min(shape) < 1:
        raise ValueError(f"a feature shape is a list of positive sizes such as [2048] or "
                         f"[7, 7, 2048]; got {shape!r}")
    return shape


def _check_dtype(feature_dtype: str) -> None:
    if feature_dtype not in FEATURE_DTYPES:
        raise ValueError(f"feature_dtype must be one of {FEATURE_DTYPES}, got {feature_dtype!r}")


def _kind(manifest: dict) -> tuple[tuple[int, ...] | None, str]:
    """(feature shape or None if nothing was computed yet, storage dtype) of a cache. Manifests
    written before these keys existed hold float32 [feature_dim]."""
    shape = manifest.get("feature_shape")
    if shape is None and manifest.get("feature_dim"):
        shape = [manifest["feature_dim"]]
    return (None if shape is None else tuple(shape)), manifest.get("feature_dtype", "float32")


def _check_kind(cache_dir, manifest: dict, shape: tuple | None, dtype: str,
                what: str = "requested") -> None:
    """FeatureCacheError when the cache holds another shape or dtype than `what` needs."""
    cached_shape, cached_dtype = _kind(manifest)
    other_shape = shape is not None and cached_shape is not None and shape != cached_shape
    if other_shape or dtype != cached_dtype:
        def describe(shape, dtype):
            return f"{dtype} {list(shape) if shape is not None else '[?]'}"
        raise FeatureCacheError(
            f"feature cache {cache_dir} holds {describe(cached_shape, cached_dtype)} features, "
            f"{what}: {describe(shape or cached_shape, dtype)}; pooled and spatial features "
            "need separate caches: use another --cache-dir (or delete this one)")


def _bytes_per_image(cache_dir: pathlib.Path, manifest: dict) -> float:
    """Size of the existing shard files / the features they hold: what each more image costs."""
    size, count = 0, 0
    for shard in manifest["shards"]:
        path = cache_dir / shard.file
        if path.exists():
            size += path.stat().st_size
            with np.load(path, allow_pickle=False) as data:
                count += len(data["names"])
    return size / count if count else 0.0


def _is_model(encoder) -> bool:
    return hasattr(encoder, "output_shape")


# ---------------------------------------------------------------------------------------------
# Computing shards


def _compute(shards: list[_Shard], paths: dict[str, str], encoder, cache_dir: pathlib.Path,
             batch_size: int, progress: bool, report: ExtractionReport, dtype: str) -> None:
    # Files that cannot be opened are counted here: inside tf.data a read error would be
    # indistinguishable from a decode error.
    results: dict[str, np.ndarray | str] = {}  # name -> features, or the reason it failed
    order: list[str] = []  # the names sent through the pipeline, in shard order
    ends: list[int] = []  # per shard: its items are all resolved once `cursor` reaches this
    for shard in shards:
        for name in shard.names:
            if _is_readable(paths[name]):
                order.append(name)
            else:
                results[name] = ERROR_UNREADABLE
        ends.append(len(order))
    shape = _shape(encoder.output_shape[1:])
    encode = _encode_function(encoder)
    bar = tqdm(total=len(results) + len(order), initial=len(results), unit="img",
               desc="image features", disable=not progress, smoothing=0.1)
    cursor, written = 0, 0  # `order` items resolved so far; shards written so far
    start = time.perf_counter()
    batches = iter(_decoded_batches(order, paths, batch_size))
    while True:
        waited = time.perf_counter()
        batch = next(batches, None)
        report.input_wait_seconds += time.perf_counter() - waited
        if batch is None:
            break
        names, images, errors = batch
        names = [n.decode("utf-8") for n in names.numpy()]
        errors = [e.decode("utf-8") for e in errors.numpy()]
        ok = [i for i, error in enumerate(errors) if not error]
        if ok and len(ok) < len(names):  # decode_one refused some: don't encode their zeros
            images = tf.gather(images, ok)
        features = iter(_stored(encode(images).numpy(), dtype, names) if ok else [])
        before = cursor
        for name, error in zip(names, errors):
            while order[cursor] != name:  # skipped by ignore_errors: its decoder raised
                results[order[cursor]] = ERROR_CORRUPT
                cursor += 1
            results[name] = error or next(features)
            cursor += 1
        bar.update(cursor - before)
        while written < len(shards) and ends[written] <= cursor:
            _write_shard(cache_dir, shards[written], results, shape, dtype, report, paths)
            written += 1
    for name in order[cursor:]:  # dropped at the very end
        results[name] = ERROR_CORRUPT
    bar.update(len(order) - cursor)
    bar.close()
    for shard in shards[written:]:
        _write_shard(cache_dir, shard, results, shape, dtype, report, paths)
    report.seconds = time.perf_counter() - start
    processed = sum(len(shard.names) for shard in shards)
    report.images_per_second = processed / report.seconds if report.seconds > 0 else 0.0


@tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.string)],
             autograph=False)
def _read_and_decode(name, path):
    # Traced once per process rather than by every dataset built on it: saves ~0.5 s per call.
    image, error = decode_one(tf.io.read_file(path))
    return name, image, error


def _decoded_batches(order: list[str], paths: dict[str, str], batch_size: int) -> tf.data.Dataset:
    """Batches of (names, float32 images [B,224,224,3], error strings), in `order` minus drops."""
    items = tf.data.Dataset.from_tensor_slices(
        (tf.constant(order, tf.string), tf.constant([paths[n] for n in order], tf.string)))
    # deterministic=True keeps `order`, which is how dropped items are found; prefetch lets the
    # next batch decode while the encoder runs.
    return (items.map(_read_and_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .ignore_errors()
            .batch(batch_size)
            .prefetch(2))


_encode_functions: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _encode_function(encoder):
    """The encoder as one traced graph with an unknown batch size: a single trace serves full,
    masked and last batches, and is kept per encoder so later calls skip tracing ResNet50 again.
    benchmarks/bench_data.py measured encoder.predict_on_batch at the same speed within noise
    (0.95-1.24x across runs on 2 CPU cores); this avoids Keras' per-call predict machinery."""
    if encoder not in _encode_functions:
        model = weakref.ref(encoder)  # a strong reference would keep the cache entry alive

        @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3],
                                                    tf.float32)], autograph=False)
        def encode(images):
            return model()(images, training=False)

        _encode_functions[encoder] = encode
    return _encode_functions[encoder]


def _stored(features: np.ndarray, dtype: str, names: list[str]) -> np.ndarray:
    """An encoder batch in the storage dtype, at once: a shard never holds float32 copies of
    float16 maps. Refuses values float16 cannot hold rather than storing inf."""
    stored = features.astype(dtype, copy=False)
    if stored is not features and not np.all(np.isfinite(stored)) and np.all(
            np.isfinite(features)):
        raise FeatureCacheError(
            f"the features of the batch {names[0]!r} .. {names[-1]!r} exceed the {dtype} range "
            f"(largest magnitude {np.abs(features).max():.4g}, {dtype} holds up to "
            f"{np.finfo(dtype).max:.4g}); store them as float32 (feature_dtype=\"float32\")")
    return stored


def _write_shard(cache_dir: pathlib.Path, shard: _Shard, results: dict, shape: tuple,
                 dtype: str, report: ExtractionReport, paths: dict[str, str]) -> None:
    good = [name for name in shard.names if not isinstance(results[name], str)]
    failed = [name for name in shard.names if isinstance(results[name], str)]
    reasons = [results[name] for name in failed]
    features = np.zeros((len(good), *shape), dtype)
    for row, name in enumerate(good):
        features[row] = results[name]
    stamps = np.array([_file_stamp(paths[name]) for name in shard.names], dtype=str)
    atomic_write(cache_dir / shard.file, lambda handle: np.savez(
        handle, names=np.array(good, dtype=str), features=features,
        failed_names=np.array(failed, dtype=str), failed_reasons=np.array(reasons, dtype=str),
        stamps=stamps))
    report.num_extracted += len(good)
    for name, reason in zip(failed, reasons):
        report.skipped[reason] = report.skipped.get(reason, 0) + 1
        report.failures.append((name, reason))
    for name in shard.names:  # free memory once written
        results.pop(name, None)


def _file_stamp(path: str) -> str:
    """Size and modification time: what tells a changed image file from the one cached."""
    try:
        stat = os.stat(path)
    except OSError:
        return ""
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _files_unchanged(shard_path: pathlib.Path, shard: _Shard, paths: dict[str, str]) -> bool:
    """True when every requested image of the shard is the same file as when it was cached."""
    with np.load(shard_path, allow_pickle=False) as data:
        stamps = dict(zip(shard.names, data["stamps"].tolist()))
    return all(stamps.get(name) == _file_stamp(paths[name]) for name in shard.names if name in paths)


def _is_readable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.R_OK)


def _count_reused(cache_dir: pathlib.Path, shards: list[_Shard], paths: dict) -> ExtractionReport:
    """A report that starts with what finished shards already hold for the requested names."""
    report = ExtractionReport(num_images=len(paths), num_extracted=0, num_reused=0, skipped={},
                              images_per_second=0.0, seconds=0.0)
    for shard in shards:
        with np.load(cache_dir / shard.file, allow_pickle=False) as data:
            report.num_reused += sum(1 for name in data["names"].tolist() if name in paths)
            for name, reason in zip(data["failed_names"].tolist(),
                                    data["failed_reasons"].tolist()):
                if name in paths:
                    report.skipped[reason] = report.skipped.get(reason, 0) + 1
                    report.failures.append((name, reason))
    return report


# ---------------------------------------------------------------------------------------------
# Files: manifest, shards, lock


def _read_manifest(cache_dir: pathlib.Path) -> dict | None:
    path = cache_dir / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["shards"] = [_Shard(s["file"], list(s["names"])) for s in manifest["shards"]]
    except (ValueError, KeyError, TypeError) as error:
        raise FeatureCacheError(f"{path} is not a feature-cache manifest ({error}); "
                                "delete the cache directory and extract again") from error
    if manifest.get("format_version") != FORMAT_VERSION:
        raise FeatureCacheError(f"{path} has format version {manifest.get('format_version')}, "
                                f"this code reads version {FORMAT_VERSION}; use another cache "
                                "directory")
    return manifest


def _write_manifest(cache_dir: pathlib.Path, manifest: dict) -> None:
    data = dict(manifest)
    data["shards"] = [{"file": s.file, "names": s.names} for s in manifest["shards"]]
    text = json.dumps(data, indent=1, ensure_ascii=False)
    atomic_write(cache_dir / MANIFEST, text)


def _shard_readable(path: pathlib.Path) -> bool:
    """A finished shard. os.replace makes a half-written one impossible, but a file damaged
    later (disk, manual editing) is recomputed rather than trusted."""
    if not path.exists():
        return False
    try:  # opening reads the zip directory at the end of the file: a truncated file fails here
        with np.load(path, allow_pickle=False) as data:
            return set(data.files) == set(SHARD_KEYS) and data["names"].ndim == 1
    except Exception as error:  # zipfile.BadZipFile, ValueError, KeyError, OSError...
        log.warning("recomputing unreadable shard %s (%s)", path, error)
        return False


@contextlib.contextmanager
def _exclusive_lock(cache_dir: pathlib.Path, wait_seconds: float = 0):
    with open(cache_dir / LOCK, "a") as handle:
        deadline = time.monotonic() + wait_seconds
        if not _try_lock(handle) and wait_seconds:
            log.info("waiting up to %.0f s for another extraction into %s to finish",
                     wait_seconds, cache_dir)
        while not _try_lock(handle):
            if time.monotonic() >= deadline:
                raise FeatureCacheError(f"another extraction is writing to {cache_dir}; wait for "
                                        "it or use another cache directory")
            time.sleep(min(LOCK_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _try_lock(handle) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
