"""data/feature_cache.py on real generated image files, real Keras encoders and real shards."""
import fcntl
import json
import os
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data.feature_cache import (ERROR_UNREADABLE, FeatureCacheError, extract_features,
                                load_features, projected_cache_bytes)
from data.files import TEMP_SUFFIX
from data.images import (ERROR_BYTES, ERROR_CORRUPT, ERROR_EMPTY, ERROR_FORMAT,
                         MAX_IMAGE_BYTES, decode_one)
from model.encoder import build_encoder, encoder_id
from model.settings import EncoderConfig
from tests.helpers import REPO



def _write_images(folder, count, start=0):
    """Small distinct JPEGs/PNGs; decode_one resizes them to 224x224 anyway."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    items = []
    for i in range(start, start + count):
        pixels = rng.integers(0, 256, size=[48, 64, 3], dtype=np.uint8)
        path = folder / (f"img{i:03d}.png" if i % 3 == 0 else f"img{i:03d}.jpg")
        Image.fromarray(pixels).save(path)
        items.append((path.name, path))
    return items


def _bad_items(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is text, not an image\n")
    junk = np.random.default_rng(7).integers(0, 256, 400, dtype=np.uint8).tobytes()
    (folder / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0" + junk)  # JPEG magic, then garbage
    (folder / "a_folder.jpg").mkdir()
    names = ["empty.jpg", "notes.jpg", "junk.jpg", "a_folder.jpg"]
    return [(name, folder / name) for name in names] + [("missing.jpg", folder / "missing.jpg")]


@pytest.fixture(scope="module")
def tiny_encoder():
    """A small real Keras encoder [B,224,224,3] -> [B,8]: the cache does not care which model."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((224, 224, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.AveragePooling2D(8)(inputs))
    return keras.Model(inputs, keras.layers.Dense(8)(pooled))


def _expected(encoder, path):
    image, error = decode_one(tf.io.read_file(str(path)))
    assert error.numpy() == b""
    return encoder(image[None], training=False).numpy()[0]


def _shard_stamps(cache):
    return {p.name: p.stat().st_mtime_ns for p in cache.glob("shard-*.npz")}


def _manifest(cache):
    return json.loads((cache / "manifest.json").read_text())


def _failed_in_shards(cache):
    """reason -> count over the failures the shard files record."""
    reasons = {}
    for path in cache.glob("shard-*.npz"):
        with np.load(path, allow_pickle=False) as shard:
            for reason in shard["failed_reasons"].tolist():
                reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


def _no_encoder():
    raise AssertionError("the encoder was needed although the cache is complete")


def test_bad_files_are_counted_by_reason_and_rows_match_their_images(tmp_path, tiny_encoder):
    good = _write_images(tmp_path / "images", 7)
    items = good[:3] + _bad_items(tmp_path / "bad") + good[3:]
    cache = tmp_path / "cache"
    report = extract_features(items, tiny_encoder, cache, encoder_id="tiny", batch_size=3,
                              shard_size=4, progress=False)
    assert (report.num_images, report.num_extracted, report.num_reused) == (12, 7, 0)
    assert report.skipped == {ERROR_EMPTY: 1, ERROR_FORMAT: 1, ERROR_CORRUPT: 1,
                              ERROR_UNREADABLE: 2}
    assert dict(report.failures)["junk.jpg"] == ERROR_CORRUPT
    assert dict(report.failures)["missing.jpg"] == ERROR_UNREADABLE
    assert report.seconds > 0 and report.images_per_second > 0

    names, features = load_features(cache, [name for name, _ in items])
    assert names == [name for name, _ in good]  # failed ones dropped, order kept
    assert features.dtype == np.float32 and features.shape == (7, 8)
    for (name, path), row in zip(good, features):
        np.testing.assert_allclose(row, _expected(tiny_encoder, path), rtol=1e-5, atol=1e-6)

    assert len(_shard_stamps(cache)) == 3 and _manifest(cache)["encoder_id"] == "tiny"
    assert _failed_in_shards(cache) == report.skipped  # failures recorded, not retried
    complete = extract_features(items, _no_encoder, cache, encoder_id="tiny", progress=False)
    assert (complete.num_extracted, complete.num_reused) == (0, 7)


def test_oversized_file_is_skipped_by_its_size(tmp_path, tiny_encoder):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff\xe0" + bytes(MAX_IMAGE_BYTES))  # JPEG magic, 16 MB + 4 bytes
    items = [("big.jpg", big)] + _write_images(tmp_path / "images", 1)
    report = extract_features(items, tiny_encoder, tmp_path / "cache", encoder_id="tiny",
                              progress=False)
    assert report.skipped == {ERROR_BYTES: 1} and report.num_extracted == 1


def test_shards_are_plain_numpy_sorted_by_name(tmp_path, tiny_encoder):
    items = _write_images(tmp_path / "images", 5)[::-1] + _bad_items(tmp_path / "bad")[:1]
    extract_features(items, tiny_encoder, tmp_path / "cache", encoder_id="tiny", shard_size=4,
                     progress=False)
    with np.load(tmp_path / "cache/shard-00000.npz", allow_pickle=False) as shard:
        assert shard["names"].dtype.kind == "U" and shard["features"].dtype == np.float32
        assert shard["names"].tolist() == ["img000.png", "img001.jpg", "img002.jpg"]
        assert shard["failed_names"].tolist() == ["empty.jpg"]
        assert shard["failed_reasons"].tolist() == [ERROR_EMPTY]
    with np.load(tmp_path / "cache/shard-00001.npz", allow_pickle=False) as shard:
        assert shard["names"].tolist() == ["img003.png", "img004.jpg"]


def test_second_run_reuses_everything_without_building_the_encoder(tmp_path, tiny_encoder):
    items = _write_images(tmp_path / "images", 6) + _bad_items(tmp_path / "bad")
    cache = tmp_path / "cache"
    first = extract_features(items, tiny_encoder, cache, encoder_id="tiny", shard_size=4,
                             progress=False)
    stamps = _shard_stamps(cache)
    again = extract_features(items, _no_encoder, cache, encoder_id="tiny", shard_size=4,
                             progress=False)
    assert (again.num_extracted, again.num_reused) == (0, 6)
    assert again.skipped == first.skipped
    assert _shard_stamps(cache) == stamps


def test_other_encoder_id_is_refused(tmp_path, tiny_encoder):
    items = _write_images(tmp_path / "images", 2)
    cache = tmp_path / "cache"
    extract_features(items, tiny_encoder, cache, encoder_id="random-seed0", progress=False)
    with pytest.raises(FeatureCacheError, match="'random-seed0', not 'imagenet'"):
        extract_features(items, tiny_encoder, cache, encoder_id="imagenet", progress=False)
    with pytest.raises(FeatureCacheError, match="'random-seed0', not 'imagenet'"):
        load_features(cache, encoder_id="imagenet")


def test_cache_grows_for_new_images_serves_subsets_and_refuses_other_lists(tmp_path,
                                                                           tiny_encoder):
    items = _write_images(tmp_path / "images", 6)
    cache = tmp_path / "cache"
    extract_features(items[:4], tiny_encoder, cache, encoder_id="tiny", shard_size=4,
                     progress=False)
    stamps = _shard_stamps(cache)
    grown = extract_features(items, tiny_encoder, cache, encoder_id="tiny", shard_size=4,
                             progress=False)
    assert (grown.num_extracted, grown.num_reused) == (2, 4)
    assert _shard_stamps(cache)["shard-00000.npz"] == stamps["shard-00000.npz"]
    assert len(load_features(cache)[0]) == 6

    subset = extract_features(items[1:3], tiny_encoder, cache, encoder_id="tiny",
                              progress=False)
    assert (subset.num_images, subset.num_extracted, subset.num_reused) == (2, 0, 2)

    others = _write_images(tmp_path / "other", 2, start=50)
    with pytest.raises(FeatureCacheError, match="another image list"):
        extract_features(items[:2] + others, tiny_encoder, cache, encoder_id="tiny",
                         progress=False)


def test_temp_files_are_never_read_and_are_cleaned(tmp_path, tiny_encoder):
    items = _write_images(tmp_path / "images", 6)
    cache = tmp_path / "cache"
    extract_features(items, tiny_encoder, cache, encoder_id="tiny", shard_size=2, progress=False)
    # What a run killed while writing shard 1 leaves: no shard-00001.npz, a partial temp file.
    (cache / "shard-00001.npz").unlink()
    (cache / f".shard-00001.npz.4242{TEMP_SUFFIX}").write_bytes(b"PK\x03\x04 half a zip")
    names, _ = load_features(cache)
    assert names == ["img000.png", "img001.jpg", "img004.jpg", "img005.jpg"]
    assert len(_shard_stamps(cache)) == 2  # the temp file is not taken for a shard

    stamps = _shard_stamps(cache)
    report = extract_features(items, tiny_encoder, cache, encoder_id="tiny", shard_size=2,
                              progress=False)
    assert (report.num_extracted, report.num_reused) == (2, 4)
    assert not list(cache.glob(f"*{TEMP_SUFFIX}"))
    after = _shard_stamps(cache)
    assert after["shard-00000.npz"] == stamps["shard-00000.npz"]
    assert after["shard-00002.npz"] == stamps["shard-00002.npz"]
    assert len(load_features(cache)[0]) == 6


def test_damaged_shard_is_refused_and_recomputed_once_deleted(tmp_path, tiny_encoder):
    items = _write_images(tmp_path / "images", 4)
    cache = tmp_path / "cache"
    extract_features(items, tiny_encoder, cache, encoder_id="tiny", shard_size=2, progress=False)
    (cache / "shard-00001.npz").write_bytes(b"not a zip file")
    damaged = "shard-00001.npz is damaged.*delete it and run the extraction again"
    with pytest.raises(FeatureCacheError, match=damaged):
        load_features(cache)
    with pytest.raises(FeatureCacheError, match=damaged):
        extract_features(items, tiny_encoder, cache, encoder_id="tiny", progress=False)
    (cache / "shard-00001.npz").unlink()
    report = extract_features(items, tiny_encoder, cache, encoder_id="tiny", shard_size=2,
                              progress=False)
    assert (report.num_extracted, report.num_reused) == (2, 2)
    assert len(load_features(cache)[0]) == 4


def test_changed_image_requested_with_a_subset_is_recomputed_and_the_rest_later(tmp_path,
                                                                                tiny_encoder):
    """A shard with a changed image is dropped: its requested images are computed now, the
    others when they are requested again."""
    items = _write_images(tmp_path / "images", 4)
    cache = tmp_path / "cache"
    extract_features(items, tiny_encoder, cache, encoder_id="tiny", progress=False)
    Image.new("RGB", (64, 48), (0, 255, 0)).save(items[0][1])
    os.utime(items[0][1], ns=(1, 1))
    subset = extract_features(items[:2], tiny_encoder, cache, encoder_id="tiny", progress=False)
    assert (subset.num_extracted, subset.num_reused) == (2, 0)
    names, features = load_features(cache)
    assert names == ["img000.png", "img001.jpg"]
    np.testing.assert_allclose(features[0], _expected(tiny_encoder, items[0][1]), rtol=1e-5,
                               atol=1e-6)
    report = extract_features(items, tiny_encoder, cache, encoder_id="tiny", progress=False)
    assert (report.num_extracted, report.num_reused) == (2, 2)


def test_concurrent_extraction_into_one_cache_is_refused(tmp_path, tiny_encoder):
    items = _write_images(tmp_path / "images", 1)
    cache = tmp_path / "cache"
    cache.mkdir()
    with open(cache / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(FeatureCacheError, match="another extraction"):
            extract_features(items, tiny_encoder, cache, encoder_id="tiny", progress=False)


def test_a_waiting_extraction_runs_once_the_other_finishes(tmp_path, tiny_encoder):
    """What workers of a multi-worker run sharing one cache do: one extracts, the others wait."""
    items = _write_images(tmp_path / "images", 2)
    cache = tmp_path / "cache"
    cache.mkdir()
    reports = []
    with open(cache / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        waiting = threading.Thread(target=lambda: reports.append(extract_features(
            items, tiny_encoder, cache, encoder_id="tiny", progress=False, lock_wait_seconds=60)))
        waiting.start()
        time.sleep(1.5)
        assert waiting.is_alive() and not reports  # still waiting for the lock
    waiting.join(timeout=60)
    assert reports and reports[0].num_extracted == 2


def test_bad_arguments(tmp_path, tiny_encoder):
    items = _write_images(tmp_path / "images", 1)
    with pytest.raises(ValueError, match="appears twice"):
        extract_features(items + items, tiny_encoder, tmp_path / "c", encoder_id="t")
    with pytest.raises(FeatureCacheError, match="no feature cache"):
        load_features(tmp_path / "nothing-here")


CHILD = """
import pathlib, sys
from data.feature_cache import extract_features
from model.encoder import build_encoder, encoder_id
from model.settings import EncoderConfig
items = [(p.name, p) for p in sorted(pathlib.Path(sys.argv[1]).iterdir())]
config = EncoderConfig("random", seed=0)
spatial = sys.argv[3] == "spatial"
extract_features(items, build_encoder(config, sys.argv[3]), sys.argv[2],
                 encoder_id=encoder_id(config), batch_size=1, shard_size=1, progress=False,
                 feature_dtype="float16" if spatial else "float32")
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pooled", "spatial"])
def test_killed_extraction_resumes_and_equals_a_clean_run(tmp_path, kind):
    """SIGKILL a real ResNet50 extraction after its first shard; resume; compare to a clean run."""
    spatial, dtype = kind == "spatial", "float16" if kind == "spatial" else "float32"
    items = _write_images(tmp_path / "images", 14)
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "images"), str(cache),
                              kind], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (cache / "shard-00000.npz").exists():
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no shard within 300 s"
        time.sleep(0.01)
    child.kill()
    child.wait()
    survivors = _shard_stamps(cache)
    assert 1 <= len(survivors) < len(items), "the child finished before it could be killed"

    config = EncoderConfig("random", seed=0)
    encoder = build_encoder(config, kind)
    resumed = extract_features(items, encoder, cache, encoder_id=encoder_id(config),
                               batch_size=1, shard_size=1, progress=False, feature_dtype=dtype)
    assert resumed.num_reused == len(survivors)
    assert resumed.num_extracted == len(items) - len(survivors)
    after = _shard_stamps(cache)
    assert all(after[name] == stamp for name, stamp in survivors.items())
    assert not list(cache.glob(f"*{TEMP_SUFFIX}"))

    clean = tmp_path / "clean"
    extract_features(items, encoder, clean, encoder_id=encoder_id(config), batch_size=1,
                     shard_size=1, progress=False, feature_dtype=dtype)
    names, features = load_features(cache)
    clean_names, clean_features = load_features(clean)
    assert names == clean_names and features.dtype == dtype
    assert features.shape == ((14, 7, 7, 2048) if spatial else (14, 2048))
    tolerance = 1e-2 if spatial else 1e-4  # float16 keeps ~3 significant digits
    np.testing.assert_allclose(features, clean_features, rtol=tolerance, atol=tolerance)


# model/features.py: the command and ensure_features, on a tiny dataset in the Kaggle layout.


def _tiny_dataset(root):
    good = _write_images(root / "Images", 3)
    (root / "Images" / "broken.jpg").write_text("not an image")
    lines = ["image,caption"] + [f"{name},A picture number {i}." for i, (name, _) in
                                 enumerate(good)] + ["broken.jpg,A broken file."]
    (root / "captions.txt").write_text("\n".join(lines) + "\n")
    return [name for name, _ in good]


def test_features_command_extracts_then_reuses(tmp_path, capsys):
    from model.features import main
    good = _tiny_dataset(tmp_path / "data")
    argv = ["--data", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache"),
            "--encoder-weights", "random", "--batch-size", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "images: 4  extracted: 3  reused: 0  skipped: 1" in out
    assert f"1 x {ERROR_FORMAT}" in out and "e.g. broken.jpg" in out
    assert main(argv) == 0
    assert "extracted: 0  reused: 3" in capsys.readouterr().out
    names, features = load_features(tmp_path / "cache", encoder_id="random-seed0")
    assert sorted(names) == sorted(good) and features.shape == (3, 2048)


def test_ensure_features_returns_rows_in_image_order_and_skips(tmp_path):
    from data.layouts import load_dataset
    from model.features import ensure_features
    _tiny_dataset(tmp_path / "data")
    dataset = load_dataset(tmp_path / "data")
    result = ensure_features(dataset.images, tmp_path / "cache", EncoderConfig("random"),
                             progress=False)
    report, names, features, skipped = result  # a plain tuple as well
    assert names == [image.name for image in dataset.images if image.name != "broken.jpg"]
    assert features.shape == (3, 2048) and report.num_extracted == 3
    assert skipped.as_dict()["counts"] == {ERROR_FORMAT: 1}


@pytest.mark.parametrize("argv, expected", [
    (["--batch-size", "0"], "expected a positive integer"),
    (["--data", "/no/such/folder"], "does not exist"),
    (["--data", "{data}", "--encoder-weights", "/no/weights.h5"], "does not exist"),
])
def test_features_command_rejects_bad_input_with_exit_2(tmp_path, capsys, argv, expected):
    from model.features import main
    _tiny_dataset(tmp_path / "data")
    argv = [arg.format(data=tmp_path / "data") for arg in argv] + ["--cache-dir", str(tmp_path / "c")]
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_changed_image_file_is_recomputed_not_served_stale(tmp_path, tiny_encoder):
    """An image replaced under the same name (a regenerated dataset) must not reuse old features."""
    import os
    from PIL import Image as PILImage
    from data.feature_cache import extract_features, load_features
    folder = tmp_path / "images"
    folder.mkdir()
    items = []
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        path = folder / f"im{i}.png"
        PILImage.new("RGB", (40, 40), colour).save(path)
        items.append((path.name, path))
    encoder = tiny_encoder
    extract_features(items, encoder, tmp_path / "cache", encoder_id="tiny", progress=False)
    _, before = load_features(tmp_path / "cache")
    PILImage.new("RGB", (40, 40), (0, 255, 0)).save(folder / "im0.png")  # same name, new content
    os.utime(folder / "im0.png", ns=(1, 1))  # a different mtime even on coarse clocks
    report = extract_features(items, encoder, tmp_path / "cache", encoder_id="tiny",
                              progress=False)
    _, after = load_features(tmp_path / "cache")
    assert report.num_extracted == 2 and report.num_reused == 0  # the shard was recomputed
    assert not np.allclose(before[0], after[0])
    np.testing.assert_allclose(before[1], after[1], rtol=1e-5)
    again = extract_features(items, encoder, tmp_path / "cache", encoder_id="tiny", progress=False)
    assert again.num_reused == 2 and again.num_extracted == 0


def test_cache_of_another_preprocessing_is_refused(tmp_path, tiny_encoder, monkeypatch):
    import data.feature_cache as feature_cache
    from data.feature_cache import FeatureCacheError, extract_features
    from PIL import Image as PILImage
    path = tmp_path / "a.png"
    PILImage.new("RGB", (30, 30), (9, 9, 9)).save(path)
    extract_features([("a.png", path)], tiny_encoder, tmp_path / "cache", encoder_id="tiny",
                     progress=False)
    monkeypatch.setattr(feature_cache, "PREPROCESSING", "something-else")
    with pytest.raises(FeatureCacheError, match="preprocessing"):
        extract_features([("a.png", path)], tiny_encoder, tmp_path / "cache", encoder_id="tiny",
                         progress=False)


# Spatial maps: any per-image shape, stored as float16.


@pytest.fixture(scope="module")
def tiny_spatial_encoder():
    """A small real Keras encoder [B,224,224,3] -> [B,7,7,4], like ResNet50's map but cheap."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((224, 224, 3))
    grid = keras.layers.AveragePooling2D(32)(inputs)
    return keras.Model(inputs, keras.layers.Dense(4, activation="relu")(grid))


def _spatial(items, encoder, cache, **options):
    options = {"feature_dtype": "float16", **options}
    return extract_features(items, encoder, cache, encoder_id="tiny", progress=False, **options)


def test_spatial_maps_round_trip_as_float16(tmp_path, tiny_spatial_encoder):
    items = _write_images(tmp_path / "images", 5) + _bad_items(tmp_path / "bad")[:2]
    cache = tmp_path / "cache"
    report = _spatial(items, tiny_spatial_encoder, cache, batch_size=2, shard_size=3)
    assert (report.num_extracted, sum(report.skipped.values())) == (5, 2)
    assert report.feature_shape == (7, 7, 4) and report.feature_dtype == "float16"
    with np.load(cache / "shard-00000.npz", allow_pickle=False) as shard:
        assert shard["features"].dtype == np.float16
    names, features = load_features(cache, [name for name, _ in items][::-1])
    assert names == [name for name, _ in items[:5]][::-1]  # requested order, failures dropped
    assert features.dtype == np.float16 and features.shape == (5, 7, 7, 4)
    for name, row in zip(names, features):
        exact = _expected(tiny_spatial_encoder, dict(items)[name])
        np.testing.assert_array_equal(row, exact.astype(np.float16))  # the one rounding only
    manifest = _manifest(cache)
    assert manifest["feature_shape"] == [7, 7, 4] and manifest["feature_dtype"] == "float16"
    assert len(load_features(cache)[0]) == 5
    on_disk = sum(p.stat().st_size for p in cache.glob("shard-*.npz")) / 5
    assert report.bytes_per_image == pytest.approx(on_disk)
    assert report.bytes_per_image > 7 * 7 * 4 * 2  # at least the map itself
    assert "bytes per image (float16 [7x7x4]" in report.summary()


@pytest.mark.parametrize("pool, channels", [(32, 4), (16, 6)], ids=["7x7x4", "14x14x6"])
def test_any_feature_map_shape_needs_no_cache_changes(tmp_path, pool, channels):
    """A new kind (e.g. ResNet50's conv4 map, [14, 14, 1024] float16) is just another shape."""
    inputs = keras.Input((224, 224, 3))
    encoder = keras.Model(inputs, keras.layers.Dense(channels)(
        keras.layers.AveragePooling2D(pool)(inputs)))
    shape = (224 // pool, 224 // pool, channels)
    items = _write_images(tmp_path / "images", 3)
    report = _spatial(items, encoder, tmp_path / "cache", feature_shape=shape, shard_size=2)
    assert report.feature_shape == shape and report.num_extracted == 3
    names, features = load_features(tmp_path / "cache", feature_shape=shape,
                                    feature_dtype="float16")
    assert features.shape == (3, *shape) and features.dtype == np.float16
    for (name, path), row in zip(items, features):
        np.testing.assert_array_equal(row, _expected(encoder, path).astype(np.float16))


def test_spatial_cache_resumes_after_an_interrupted_run(tmp_path, tiny_spatial_encoder):
    """What a run killed in its second shard leaves: shard 0, a temp file, no shard 1 or 2."""
    items = _write_images(tmp_path / "images", 6)
    cache = tmp_path / "cache"
    _spatial(items, tiny_spatial_encoder, cache, shard_size=2)
    _, complete = load_features(cache)
    for name in ("shard-00001.npz", "shard-00002.npz"):
        (cache / name).unlink()
    (cache / f".shard-00001.npz.4242{TEMP_SUFFIX}").write_bytes(b"PK\x03\x04 half a zip")
    assert load_features(cache)[1].shape == (2, 7, 7, 4)
    stamps = _shard_stamps(cache)
    resumed = _spatial(items, tiny_spatial_encoder, cache, shard_size=2)
    assert (resumed.num_extracted, resumed.num_reused) == (4, 2)
    assert _shard_stamps(cache)["shard-00000.npz"] == stamps["shard-00000.npz"]
    assert not list(cache.glob(f"*{TEMP_SUFFIX}"))
    _, features = load_features(cache)
    np.testing.assert_array_equal(features, complete)


def test_spatial_shard_of_a_changed_image_is_recomputed(tmp_path, tiny_spatial_encoder):
    items = _write_images(tmp_path / "images", 4)
    cache = tmp_path / "cache"
    _spatial(items, tiny_spatial_encoder, cache, shard_size=2)
    _, before = load_features(cache)
    Image.new("RGB", (64, 48), (0, 255, 0)).save(items[3][1])  # img003.png, in shard 1
    os.utime(items[3][1], ns=(1, 1))
    report = _spatial(items, tiny_spatial_encoder, cache, shard_size=2)
    assert (report.num_extracted, report.num_reused) == (2, 2)
    _, after = load_features(cache)
    np.testing.assert_array_equal(after[:3], before[:3])
    assert not np.array_equal(after[3], before[3])
    np.testing.assert_array_equal(
        after[3], _expected(tiny_spatial_encoder, items[3][1]).astype(np.float16))


def test_pooled_and_spatial_requests_never_share_a_cache(tmp_path, tiny_encoder,
                                                         tiny_spatial_encoder):
    items = _write_images(tmp_path / "images", 2)
    pooled, spatial = tmp_path / "pooled", tmp_path / "spatial"
    extract_features(items, tiny_encoder, pooled, encoder_id="tiny", progress=False)
    _spatial(items, tiny_spatial_encoder, spatial)
    both = r"holds float32 \[8\] features, requested: float16 \[7, 7, 4\].*another --cache-dir"
    with pytest.raises(FeatureCacheError, match=both):
        _spatial(items, tiny_spatial_encoder, pooled, feature_shape=(7, 7, 4))
    with pytest.raises(FeatureCacheError, match=both):
        load_features(pooled, feature_shape=[7, 7, 4], feature_dtype="float16")
    with pytest.raises(FeatureCacheError, match=r"holds float16 \[7, 7, 4\] features, "
                                                r"requested: float32"):
        extract_features(items, tiny_encoder, spatial, encoder_id="tiny", progress=False)
    # Same dtype, other shape: found once the encoder is built (its output shape).
    with pytest.raises(FeatureCacheError, match=r"holds float16 \[7, 7, 4\] features, this "
                                                r"encoder's output: float16 \[8\]"):
        (spatial / "shard-00000.npz").unlink()
        _spatial(items, tiny_encoder, spatial)
    with pytest.raises(ValueError, match="feature_dtype must be one of"):
        _spatial(items, tiny_spatial_encoder, tmp_path / "c", feature_dtype="bfloat16")


def test_maps_float16_cannot_hold_are_refused_not_stored_as_inf(tmp_path):
    items = _write_images(tmp_path / "images", 2)
    inputs = keras.Input((224, 224, 3))
    huge = keras.layers.Rescaling(1e6)(keras.layers.AveragePooling2D(32)(inputs))
    with pytest.raises(FeatureCacheError, match=r"'img000.png' .. 'img001.jpg' exceed the "
                                                r"float16 range.*float32"):
        _spatial(items, keras.Model(inputs, huge), tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("shard-*"))


@pytest.mark.parametrize("edit, expected", [
    (lambda m: m.pop("feature_shape"), r"not a feature-cache manifest \(bad or missing "
                                       r"'feature_shape'\); delete the cache directory"),
    (lambda m: m.update(feature_dtype="bfloat16"), "not a feature-cache manifest"),
    (lambda m: m.update(format_version=1), "format version 1, this code reads version 2"),
])
def test_manifest_of_another_version_or_without_its_kind_is_refused(tmp_path, tiny_encoder,
                                                                    edit, expected):
    """Old manifests are not migrated (a cache without feature_shape predates spatial maps)."""
    items = _write_images(tmp_path / "images", 3)
    cache = tmp_path / "cache"
    extract_features(items, tiny_encoder, cache, encoder_id="tiny", progress=False)
    manifest = _manifest(cache)
    edit(manifest)
    (cache / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FeatureCacheError, match=expected):
        load_features(cache)
    with pytest.raises(FeatureCacheError, match=expected):
        extract_features(items, tiny_encoder, cache, encoder_id="tiny", progress=False)


def test_load_features_fills_one_preallocated_array(tmp_path, tiny_spatial_encoder):
    """Rows come back in any requested order across shards, repeated names included."""
    items = _write_images(tmp_path / "images", 7)
    cache = tmp_path / "cache"
    _spatial(items, tiny_spatial_encoder, cache, shard_size=2)
    names, everything = load_features(cache)  # whole shards, in order: read straight in
    shards = sorted(cache.glob("shard-*.npz"))
    assert len(shards) == 4
    np.testing.assert_array_equal(everything, np.concatenate(
        [np.load(shard, allow_pickle=False)["features"] for shard in shards]))
    order = [names[6], names[0], names[3], names[0], "nope.jpg"]
    kept, features = load_features(cache, order)
    assert kept == order[:4]
    np.testing.assert_array_equal(features, everything[[6, 0, 3, 0]])
    assert features.flags["C_CONTIGUOUS"] and features.base is None


@pytest.mark.slow
def test_resnet50_spatial_cache_costs_200704_bytes_per_image_and_matches_pooled(tmp_path):
    """The real encoder through ensure_features: float16 [n,7,7,2048] whose grid mean is the
    pooled cache's vector; the reported disk cost is measured on the shard files."""
    from data.layouts import load_dataset
    from model.features import ensure_features
    _tiny_dataset(tmp_path / "data")
    dataset = load_dataset(tmp_path / "data")
    config = EncoderConfig("random")
    spatial = ensure_features(dataset.images, tmp_path / "spatial", config, kind="spatial",
                              progress=False)
    pooled = ensure_features(dataset.images, tmp_path / "pooled", config, progress=False)
    assert spatial.names == pooled.names
    assert spatial.features.shape == (3, 7, 7, 2048) and spatial.features.dtype == np.float16
    assert pooled.features.shape == (3, 2048) and pooled.features.dtype == np.float32
    grid_mean = spatial.features.astype(np.float32).mean(axis=(1, 2))
    np.testing.assert_allclose(grid_mean, pooled.features, rtol=1e-2, atol=1e-2)
    # 7 * 7 * 2048 * 2 bytes a map + its name, stamp and a share of the zip headers
    assert 200_704 < spatial.report.bytes_per_image < 200_704 + 1_000
    assert spatial.report.feature_shape == (7, 7, 2048)
    assert "Flickr30k's 31,783 images" in spatial.report.summary()
    with pytest.raises(FeatureCacheError, match="another --cache-dir"):
        ensure_features(dataset.images, tmp_path / "pooled", config, kind="spatial",
                        progress=False)


@pytest.mark.slow
def test_features_command_spatial_prints_the_measured_disk_cost(tmp_path, capsys,
                                                               monkeypatch):
    from model.features import default_cache_dir, main
    _tiny_dataset(tmp_path / "data")
    config = EncoderConfig("random")
    assert str(default_cache_dir(tmp_path / "data", config, "spatial")) == \
        "cache/data-random-seed0-spatial"
    assert str(default_cache_dir(None, config)) == "cache/builtin-random-seed0"
    monkeypatch.chdir(tmp_path)  # the default cache folder is relative
    argv = ["--data", str(tmp_path / "data"), "--encoder-weights", "random", "--kind", "spatial"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "images: 4  extracted: 3  reused: 0  skipped: 1" in out
    assert "bytes per image (float16 [7x7x2048]" in out and "Flickr30k's 31,783 images" in out
    names, features = load_features(tmp_path / "cache/data-random-seed0-spatial")
    assert features.shape == (3, 7, 7, 2048) and features.dtype == np.float16


def test_projected_size_is_the_size_extraction_writes(tmp_path, tiny_encoder):
    """data.inspect's projection, before any extraction, equals the bytes of the shard files and
    manifest the extraction then writes (several shards, the last one partial)."""
    items = _write_images(tmp_path / "images", 7)
    projected = projected_cache_bytes(items, [8], "float16", encoder_id="tiny", shard_size=3)
    extract_features(items, tiny_encoder, tmp_path / "cache", encoder_id="tiny", shard_size=3,
                     feature_dtype="float16", progress=False)
    written = sorted((tmp_path / "cache").iterdir())
    assert [p.name for p in written] == [".lock", "manifest.json",
                                         *(f"shard-0000{i}.npz" for i in range(3))]
    assert projected == sum(p.stat().st_size for p in written)  # the lock file is empty
