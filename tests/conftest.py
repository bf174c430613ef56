"""Shared test set-up: quiet TensorFlow, keep tests on the CPU, one small trained run per model
family that the training, evaluation, export and serving tests share (trained once per session),
and untrained runs (written in seconds) for tests of a run's contract rather than its quality."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import dataclasses  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SMALL_BUILTIN_IMAGES = 300  # 240 / 30 / 30 images: enough for the trained runs to caption them well
FAST_TIER_IMAGES = 80       # the fast tier's data: its exports and servers need no trained model
TRAINED_EPOCHS = 25
# The attention preset's validation loss on 240 training images falls to ~0.6 of its first
# epoch's within 4 epochs and little further after them: its tests need a run that learns, not
# its best.
ATTENTION_EPOCHS = 4
# The trained pooled run's LSTM: the small data's ~40 words need no more, and a step costs a
# quarter of the preset's (512 units).
SMALL_LSTM = {"units": 128, "embed_dim": 64}
# The fast tier (-m "not slow") trains no run: a test that needs a trained one is slow. The export
# and serving contract tests (signatures, served == in-process, hostile batches, servers, clients,
# the page) run on untrained exports (`untrained_export`) instead.
TRAINED_FIXTURES = ("trained_run", "trained_attention_run", "head_top_run")


def fast_tier(config) -> bool:
    return "not slow" in (config.getoption("markexpr") or "")


# pytest.ini runs the tests in parallel processes (pytest-xdist, --dist loadgroup): each process
# makes the session fixtures its tests use. The tests that share one of these costly fixtures run in
# one process, so it is made once; every other test runs with the rest of its module, so module
# fixtures are made once too.
SHARED_IN_ONE_PROCESS = (*TRAINED_FIXTURES, "server", "attention_server", "untrained_export")


def pytest_xdist_auto_num_workers(config) -> int:
    """`--numprocesses=auto` (pytest.ini): one process more than cores. The tests wait part of
    their time on servers, subprocesses and timeouts, which the extra process uses (how busy the
    cores were: docs/testing.md#time)."""
    return (os.cpu_count() or 1) + 1


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(name in item.fixturenames for name in TRAINED_FIXTURES):
            item.add_marker(pytest.mark.slow)
        group = next((name for name in SHARED_IN_ONE_PROCESS if name in item.fixturenames),
                     item.module.__name__)
        item.add_marker(pytest.mark.xdist_group(group))


@dataclasses.dataclass
class TrainedFixture:
    data: Path        # a small built-in dataset (Flickr30k layouts)
    cache: Path       # its feature cache (random-init ResNet50, seed 0)
    run: Path         # the trained run folder
    summary: dict


# How long a process waits for another to finish writing the shared data or a feature cache.
SHARED_WAIT_SECONDS = 900


@pytest.fixture(scope="session")
def shared_tmp(tmp_path_factory, worker_id) -> Path:
    """A folder every pytest-xdist worker of this session shares (without xdist: this process's),
    so the small dataset and its feature caches are made once, not once per worker."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if worker_id != "master" else base


@pytest.fixture(scope="session")
def small_builtin(request, shared_tmp) -> Path:
    from filelock import FileLock

    from data.builtin import ensure_builtin
    images = FAST_TIER_IMAGES if fast_tier(request.config) else SMALL_BUILTIN_IMAGES
    with FileLock(shared_tmp / f"builtin-{images}.lock", timeout=SHARED_WAIT_SECONDS):
        return ensure_builtin(shared_tmp / f"builtin-{images}" / "data", num_images=images, seed=0)


@pytest.fixture(scope="session")
def feature_caches(small_builtin, shared_tmp):
    """feature_caches(kind) -> the small built-in data's feature cache folder of that kind
    (random-init ResNet50, seed 0; model.encoder.FEATURE_KINDS), holding every image's features:
    the first worker that asks extracts them, the others wait for it (the cache's own lock) and
    reuse them, as training does."""
    from tests.helpers import random_weights_features
    return lambda kind="pooled": random_weights_features(
        small_builtin, shared_tmp / f"feature-caches-{small_builtin.parent.name}" / kind, kind,
        lock_wait_seconds=SHARED_WAIT_SECONDS)


def train_preset(name: str, data: Path, base: Path, cache: Path, epochs: int, patience: int,
                 **overrides) -> TrainedFixture:
    """The named preset trained on `data` (random-init ResNet50, batch 64) into base/run."""
    from model.train import train
    summary = train(base / "run", name, data=data, cache_dir=cache, verbose=0,
                    epochs=epochs, patience=patience, batch_size=64, min_count=2,
                    encoder_weights="random", **overrides)
    return TrainedFixture(data, cache, base / "run", summary)


def write_untrained_run(run_dir: Path, data: Path, family: str) -> Path:
    """A run folder as training writes it (settings.json, vocab.txt/json from `data`'s training
    captions, best.weights.h5), holding a freshly built captioner of `family`: no features, no
    fit, so its standardiser keeps mean 0 / std 1. Its settings name a feature cache that does
    not exist."""
    import keras
    from model.families import build_captioner
    from model.run_dir import RunPaths, write_json
    from model.train import run_config, run_settings, start_run

    config = run_config(family, data=data, min_count=2, encoder_weights="random",
                        encoder_top="")  # the frozen maps; tests/*/test_encoder_top.py: the top
    paths = RunPaths(run_dir)
    paths.root.mkdir(parents=True)
    dataset, splits, vocabulary, model_config = start_run(paths.root, config, data)
    write_json(paths.settings, run_settings(config, model_config, vocabulary, data=data,
                                            dataset=dataset, splits=splits,
                                            cache_dir=run_dir.parent / "no-features"))
    keras.utils.set_random_seed(config.train.seed)
    build_captioner(model_config).save_weights(paths.weights)
    return paths.root


@pytest.fixture(scope="session")
def untrained_run_factory(small_builtin, tmp_path_factory):
    """untrained_run_factory("pooled" | "attention") -> the run folder of an untrained captioner
    of that family on the small built-in data, written once per session."""
    made = {}

    def make(family: str = "pooled") -> Path:
        if family not in made:
            base = tmp_path_factory.mktemp(f"untrained-{family}")
            made[family] = write_untrained_run(base / "run", small_builtin, family)
        return made[family]
    return make


@pytest.fixture(scope="session")
def untrained_run(untrained_run_factory) -> Path:
    return untrained_run_factory("pooled")


@dataclasses.dataclass
class UntrainedExport:
    run: Path         # the untrained run folder (tests/conftest.py: write_untrained_run)
    data: Path        # its dataset: the small built-in data
    path: Path        # the version folder <base>/1 (the base TF Serving would be given: .parent)
    family: str       # "pooled" | "attention"
    precision: str    # the export's compute precision


@pytest.fixture(scope="session")
def untrained_export(untrained_run_factory, small_builtin, tmp_path_factory):
    """untrained_export(family="pooled", precision="float32", **ExportConfig fields) -> an
    UntrainedExport: the untrained run of that family exported (warmup records included), made
    once per session and argument set. For tests of the serving contract, not of captions' quality:
    an untrained model captions every image, only not well."""
    from export.saved_model import ExportConfig, export_run
    made = {}

    def export(family: str = "pooled", precision: str = "float32", **settings) -> UntrainedExport:
        key = (family, precision, *sorted(settings.items()))
        if key not in made:
            name = "-".join(["models-untrained", family, precision,
                             *(f"{k}{v}" for k, v in sorted(settings.items()))])
            base = tmp_path_factory.mktemp(name) / "captioner"
            run = untrained_run_factory(family)
            path = export_run(run, base, "auto", ExportConfig(precision=precision, **settings))
            made[key] = UntrainedExport(run, small_builtin, path, family, precision)
        return made[key]
    return export


@pytest.fixture(scope="session")
def trained_run(small_builtin, feature_caches, tmp_path_factory) -> TrainedFixture:
    """The pooled preset trained on the small built-in data: enough to caption it well."""
    return train_preset("pooled", small_builtin, tmp_path_factory.mktemp("trained"),
                        feature_caches("pooled"), TRAINED_EPOCHS, TRAINED_EPOCHS, **SMALL_LSTM)


@pytest.fixture(scope="session")
def trained_attention_run(small_builtin, feature_caches,
                          tmp_path_factory) -> TrainedFixture:
    """The attention preset on the same small data (over the spatial maps), for the tests
    of what attention training learns (the attention export's contract tests use an untrained
    run: untrained_export("attention"))."""
    # Over the frozen 7x7 maps, as with ImageNet weights (the preset's conv head for random
    # weights has the tests of model/top.py: tests/*/test_encoder_top.py).
    return train_preset("attention", small_builtin, tmp_path_factory.mktemp("trained-attention"),
                        feature_caches("spatial"), ATTENTION_EPOCHS, ATTENTION_EPOCHS,
                        encoder_top="", attention_units=512)


@pytest.fixture(scope="session")
def head_top_run(small_builtin, feature_caches, tmp_path_factory) -> TrainedFixture:
    """The attention preset with random weights, whose trainable encoder top is the conv head,
    trained 2 small epochs on the conv4 maps of the small built-in data, not evaluated: the one run
    that the tests of training (tests/model/test_encoder_top.py) and of exporting
    (tests/export/test_encoder_top.py) a run with a top share."""
    return train_preset("attention", small_builtin, tmp_path_factory.mktemp("head-top-run"),
                        feature_caches("conv4"), 2, 2, units=64, embed_dim=32, evaluate=False)


@pytest.fixture(scope="session")
def exported_model(trained_run, tmp_path_factory) -> Path:
    """The trained run exported as <base>/1 (the folder TF Serving would be pointed at: .parent):
    for tests that judge the served captions' quality (contract tests: untrained_export)."""
    from export.saved_model import export_run
    base = tmp_path_factory.mktemp("models") / "captioner"
    return export_run(trained_run.run, base, "auto")
