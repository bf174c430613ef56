"""Every kind of export, loaded by TensorFlow's C++ SavedModel loader (the one TF Serving calls)
through the C API in a process without TensorFlow's Python package (export/cc_loader.py), gives
the same per-image captions, alternatives and errors as the in-process TF1 session; both loaders
refuse the same mistakes with the same errors; and the export stores each weight once. Contract
tests: untrained exports (tests/conftest.py: untrained_export) of every kind."""
import io
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data.images import ERROR_CORRUPT, ERROR_EMPTY, ERROR_FORMAT, ERROR_PIXELS
from data.layouts import load_dataset
from data.splits import split_dataset
from export.artifact import SessionModel, export_settings
from model.encoder import build_encoder
from model.run_dir import load_run
from model.settings import DecodeConfig
from tests.helpers import DEFAULT_FAMILY, REPO
from tests.helpers.images import huge_png_header
from tests.helpers.reference import encoder_features, in_process_alternatives

IMAGE_SIGNATURES = ("serving_default", "beam_search")

# Export kinds the C++ loader must run: name -> untrained_export's arguments. A new kind (another
# precision, family or decode setting) is one more entry here, and every test taking `export_dir`
# covers it.
EXPORT_KINDS = {
    "default": {},
    "attention": {"family": "attention"},
    "beam2_max12": {"beam_width": 2, "max_new_tokens": 12, "warmup_images": 0},
    "float16": {"precision": "float16"},
    "bfloat16": {"precision": "bfloat16"},
}


@pytest.fixture(scope="module", params=[
    pytest.param(kind, marks=[pytest.mark.slow]) for kind in sorted(EXPORT_KINDS)])
def export_kind(request, untrained_export):
    return untrained_export(**EXPORT_KINDS[request.param])


@pytest.fixture(scope="module")
def export_dir(export_kind) -> Path:
    return export_kind.path


@pytest.fixture(scope="module")
def default_export(untrained_export) -> Path:
    return untrained_export().path


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


# The hostile batch: good images of the small built-in dataset mixed with broken inputs.
HOSTILE_ERRORS = ["", ERROR_EMPTY, ERROR_FORMAT, ERROR_CORRUPT, "", ERROR_FORMAT, ERROR_PIXELS, ""]


@pytest.fixture(scope="module")
def hostile_files(small_builtin, tmp_path_factory) -> list[Path]:
    good = [i.path for i in split_dataset(load_dataset(small_builtin))["test"][:3]]
    png = encode(Image.open(good[0]).convert("RGB"), "PNG")
    contents = [good[0].read_bytes(), b"", b"plain text, not an image\n", png[: len(png) // 2],
                png, encode(Image.new("RGB", (8, 8)), "TIFF"), huge_png_header(20000, 20000),
                good[1].read_bytes()]
    folder = tmp_path_factory.mktemp("hostile")
    names = ["good.jpg", "empty.jpg", "text.txt", "truncated.png", "good.png", "header.tiff",
             "huge.png", "good2.jpg"]
    for name, data in zip(names, contents):
        (folder / name).write_bytes(data)
    return [folder / name for name in names]


def cc_loader_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export.cc_loader", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_cc_loader_equals_session_on_a_hostile_batch(export_dir, export_kind, hostile_files):
    result = cc_loader_cli(str(export_dir), "--image", *map(str, hostile_files),
                           "--signature", *IMAGE_SIGNATURES, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    cc = json.loads(result.stdout)
    with SessionModel(export_dir) as session:
        for signature in IMAGE_SIGNATURES:
            expected = session.caption([f.read_bytes() for f in hostile_files], signature)
            rows = cc[signature]
            assert [r["image"] for r in rows] == list(map(str, hostile_files))
            assert [r["error"] for r in rows] == [e.error for e in expected]
            assert [r["error"] for r in rows] == HOSTILE_ERRORS
            assert [r["caption"] for r in rows] == [e.caption for e in expected]
            np.testing.assert_allclose([r["log_prob"] for r in rows], [e.log_prob for e in expected],
                                       rtol=1e-5, atol=1e-5)
            # beam_search's alternatives, every beam best first; none for a bad image or greedy
            assert [[a["caption"] for a in r["alternatives"]] for r in rows] == \
                [[c for c, _ in e.alternatives] for e in expected]
            np.testing.assert_allclose([a["score"] for r in rows for a in r["alternatives"]],
                                       [s for e in expected for _, s in e.alternatives],
                                       rtol=1e-5, atol=1e-5)
            width = export_settings(export_dir)["decode"]["beam_width"] if signature == "beam_search" else 0
            assert [len(r["alternatives"]) for r in rows] == [0 if e else width for e in HOSTILE_ERRORS]
            assert all(r["alternatives"][0]["caption"] == r["caption"] for r in rows if r["alternatives"])
            if signature == "beam_search" and export_kind.precision == "float32":
                # and they are what the decoder computes in process with the export's decode
                # settings, from the same images (for the run's own settings, test_saved_model.py
                # compares the session's alternatives with the decoder's)
                run, good = load_run(export_kind.run), [i for i, e in enumerate(HOSTILE_ERRORS) if not e]
                decode = DecodeConfig(**export_settings(export_dir)["decode"])
                if decode != run.decode_config:
                    features = encoder_features(run, [hostile_files[i] for i in good])
                    assert [[a["caption"] for a in rows[i]["alternatives"]] for i in good] == \
                        [[c for c, _ in a] for a in in_process_alternatives(run, features, decode)]
            if expected[0].attention is not None:  # the attention export's per-word maps
                np.testing.assert_allclose([r["attention"] for r in rows],
                                           [e.attention for e in expected], atol=1e-5)
                assert not np.asarray([r["attention"] for r in rows if r["error"]]).any()
            else:
                assert all("attention" not in r for r in rows)
            assert all(r["caption"] for r in rows if not r["error"])  # real captions


# The same mistakes made to a loader: run in this process with SessionModel and, from the same file,
# in a fresh process with CcSavedModel (its C API cannot share a process with TensorFlow's Python),
# which also runs the command line on a missing export and tells whether TensorFlow's Python
# package was ever imported.
MISTAKES_SCRIPT = """
import json, sys
import numpy as np

MISTAKES = {  # case: (signature, {input name: (kind, values)}), each wrong in one way only
    "unknown signature": ("nope", {"image_bytes": ("bytes", ["x"])}),
    "unknown input": ("serving_default", {"images": ("bytes", ["x"])}),
    "missing input": ("serving_default", {}),
    "number for string": ("serving_default", {"image_bytes": ("float", [1.0, 2.0])}),
    "string for number": ("caption_features", {"features": ("bytes", ["x"])}),
}


def array(kind, values):
    return np.array([v.encode() for v in values], dtype=object) if kind == "bytes" else np.array(values, np.float32)


def attempt(loader, export_dir):  # {case: [exception type, message]}; for the load: [type, phrase?]
    outcome = {}
    try:
        loader(export_dir + "-missing")
    except Exception as error:
        outcome["load"] = [f"{type(error).__module__}.{type(error).__qualname__}",
                           "loading the SavedModel failed" in str(error)]
    with loader(export_dir) as model:
        for case, (signature, inputs) in MISTAKES.items():
            try:
                model.run(signature, {name: array(*value) for name, value in inputs.items()})
                outcome[case] = None
            except Exception as error:
                outcome[case] = [type(error).__qualname__, str(error)]
        out = model.run("caption_features", {"features": np.zeros([2, 2048], np.float32)})
        outcome["captions of features"] = len(out["caption"])
    return outcome


if __name__ == "__main__":
    import contextlib, io
    from export.cc_loader import CcSavedModel, main
    outcome = attempt(CcSavedModel, sys.argv[1])
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):  # `python -m export.cc_loader MISSING`
        code = main([sys.argv[1] + "-no-such-export"])
    print(json.dumps({"loader": outcome, "cli": [code, stderr.getvalue()],
                      "tensorflow imported": "tensorflow" in sys.modules}))
"""


@pytest.mark.slow
def test_both_loaders_refuse_the_same_mistakes_alike_and_cc_needs_no_tensorflow_python(
        default_export, tmp_path):
    script = tmp_path / "mistakes.py"
    script.write_text(MISTAKES_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(default_export)], cwd=REPO,
                            capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout)
    assert answer["tensorflow imported"] is False  # the C API alone
    code, stderr = answer["cli"]
    assert code == 2 and "no-such-export" in stderr and "loading the SavedModel failed" in stderr
    cc = answer["loader"]
    session = json.loads(json.dumps(runpy.run_path(str(script))["attempt"](SessionModel, str(default_export))))
    assert cc == session
    assert cc["captions of features"] == 2
    assert cc["load"] == ["export.loaded_model.ModelLoadError", True]
    assert {case: outcome[0] for case, outcome in cc.items()
            if case not in ("load", "captions of features")} == {
        "unknown signature": "ValueError", "unknown input": "ValueError", "missing input": "ValueError",
        "number for string": "ValueError", "string for number": "ValueError"}
    assert cc["unknown signature"][1] == 'Serving signature name: "nope" not found in signature def'
    assert cc["unknown input"][1].startswith("input tensor alias not found in signature: images.")
    assert cc["missing input"][1].startswith("input tensor alias missing: image_bytes.")
    assert "Expects input 'image_bytes' to be string but float32 is provided" == cc["number for string"][1]


def stored_arrays(export_dir: Path) -> dict[str, list[int]]:
    """The checkpoint's arrays (variable values only, not its bookkeeping) by key."""
    return {name: shape for name, shape in tf.train.list_variables(
        str(export_dir / "variables" / "variables")) if name.endswith("VARIABLE_VALUE")}


def test_every_weight_is_stored_once(untrained_export):
    export = untrained_export(DEFAULT_FAMILY)
    run = load_run(export.run)
    encoder, captioner = build_encoder(run.encoder_config), run.load_captioner()
    expected = encoder.count_params() + captioner.count_params()
    arrays = stored_arrays(export.path)
    assert sum(int(np.prod(shape)) for shape in arrays.values()) == expected
