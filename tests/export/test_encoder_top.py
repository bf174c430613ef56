"""A run that trained the encoder's top (--fine-tune-encoder) exports the frozen trunk up to conv4
with the captioner holding the top: the served captions, through the TF1 session loader and
through TensorFlow's C++ loader in a process without TensorFlow's Python package, are the
in-process captions of the same images. The run is the attention preset with random weights,
whose top is the conv head."""
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from data.images import decode_batch
from data.layouts import load_dataset
from data.splits import split_dataset
from export.artifact import SessionModel, export_settings
from export.saved_model import ExportConfig, export_run
from model.encoder import CONV4_SHAPE, build_encoder
from model.decoding import caption_features
from model.run_dir import load_run
from tests.helpers import REPO

@pytest.fixture(scope="module")
def top_export(head_top_run, tmp_path_factory):
    """(run folder, its export) of the attention preset's head-top run (tests/conftest.py), the
    one the training tests of the top use."""
    models = tmp_path_factory.mktemp("top-attention") / "models"
    return head_top_run.run, export_run(head_top_run.run, models, "auto", warmup_images=[])


@pytest.fixture(scope="module")
def test_files(small_builtin):
    return [image.path for image in split_dataset(load_dataset(small_builtin))["test"][:6]]


def in_process(run_dir, files, method):
    """Captions of the files by the run's own captioner on the trunk's conv4 maps."""
    run = load_run(run_dir)
    images, errors = decode_batch(tf.constant([f.read_bytes() for f in files]))
    assert not any(errors.numpy())
    maps = build_encoder(run.encoder_config, kind="conv4")(images, training=False).numpy()
    return caption_features(run.load_captioner(), run.vocabulary.tokens, maps,
                            run.decode_config, method, progress=False)


def test_export_serves_the_trunk_to_conv4_and_records_it(top_export):
    run_dir, export_dir = top_export
    settings = export_settings(export_dir)
    assert settings["feature_kind"] == "conv4" and settings["features_input"] == [-1, 14, 14, 1024]
    assert settings["model"]["encoder_top"] == "head"
    with SessionModel(export_dir) as model:
        features = model.signature("caption_features").inputs["features"]
        assert [d.size for d in features.tensor_shape.dim] == [-1, *CONV4_SHAPE]
        out = model.run("caption_features", {"features": np.zeros([2, *CONV4_SHAPE], np.float32)})
        assert len(out["caption"]) == 2
    stored = {name: shape for name, shape in tf.train.list_variables(
        str(export_dir / "variables" / "variables")) if name.endswith("VARIABLE_VALUE")}
    run = load_run(run_dir)
    captioner = run.load_captioner()
    unused = captioner.word_head.count_params() if captioner.word_head else 0  # training only
    expected = (build_encoder(run.encoder_config, kind="conv4").count_params()
                + captioner.count_params() - unused)
    assert sum(int(np.prod(shape)) for shape in stored.values()) == expected  # each weight once


@pytest.mark.parametrize("signature, method", [("serving_default", "greedy"),
                                               ("beam_search", "beam")])
def test_served_captions_are_the_in_process_ones(top_export, test_files, signature, method):
    run_dir, export_dir = top_export
    expected, log_probs = in_process(run_dir, test_files, method)
    with SessionModel(export_dir) as model:
        served = model.caption([f.read_bytes() for f in test_files], signature)
    assert [r.caption for r in served] == expected
    np.testing.assert_allclose([r.log_prob for r in served], log_probs, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_cc_loader_serves_the_same_captions(top_export, test_files):
    _, export_dir = top_export
    result = subprocess.run([sys.executable, "-m", "export.cc_loader", str(export_dir), "--image",
                             *map(str, test_files), "--signature", "serving_default",
                             "beam_search", "--json"], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    cc = json.loads(result.stdout)
    with SessionModel(export_dir) as model:
        for signature in ("serving_default", "beam_search"):
            session = model.caption([f.read_bytes() for f in test_files], signature)
            assert [r["caption"] for r in cc[signature]] == [r.caption for r in session]
            assert all(r["caption"] and not r["error"] for r in cc[signature])


@pytest.mark.slow
def test_float16_export_of_a_top_run_captions_images(top_export, test_files, tmp_path):
    run_dir, _ = top_export
    export_dir = export_run(run_dir, tmp_path / "models", "auto", ExportConfig(precision="float16"),
                            warmup_images=[])
    expected, _ = in_process(run_dir, test_files, "greedy")
    with SessionModel(export_dir) as model:
        served = model.caption([f.read_bytes() for f in test_files])
    assert all(r.ok and r.caption for r in served)
    same = np.mean([r.caption == e for r, e in zip(served, expected)])
    assert same >= 0.5, (same, [r.caption for r in served], expected)
