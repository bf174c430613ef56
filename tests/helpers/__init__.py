"""Helpers the tests share (fixtures live in the conftest.py files), one module per kind of help:
images.py (test images, hostile inputs), servers.py (real model servers and Gradio apps in
subprocesses on free 127.0.0.1 ports), browser.py (a headless Chromium page of the app), ops.py
(an exported graph's ops against TensorFlow's own registry) and reference.py (a run's captions
computed in process: what an export of it must serve)."""
from pathlib import Path

import pytest

from model.settings import FAMILIES, PRESETS, TrainConfig

REPO = Path(__file__).resolve().parents[2]  # the checkout: cwd and PYTHONPATH of subprocesses

# Tests parametrized by model family: the default preset's family runs in the fast tier, the
# others in the full suite.
DEFAULT_FAMILY = PRESETS[TrainConfig.preset]["model"]["family"]
FAMILY_PARAMS = [pytest.param(family, marks=[] if family == DEFAULT_FAMILY else [pytest.mark.slow])
                 for family in FAMILIES]


def random_weights_features(data: Path, cache: Path, kind: str = "pooled",
                            lock_wait_seconds: float = 0) -> Path:
    """Every image of `data` through ResNet50 as `--encoder-weights random` (seed 0) extracts it,
    into the feature cache `cache` of that kind (training then reuses it); returns `cache`."""
    from data.sources import open_dataset
    from model.features import ensure_features
    from model.settings import EncoderConfig
    ensure_features(open_dataset(data).images, cache, EncoderConfig("random", seed=0), kind=kind,
                    progress=False, lock_wait_seconds=lock_wait_seconds)
    return cache
