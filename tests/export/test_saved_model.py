"""The exported SavedModel, run as TF Serving runs it: the C++ loader into a TF1 session,
signatures fed and fetched by tensor names. Contract tests, on untrained exports of both families
(tests/conftest.py: untrained_export): what is served equals what the run computes in process."""
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data.images import ERROR_CORRUPT, ERROR_EMPTY, ERROR_FORMAT, ERROR_PIXELS
from data.layouts import load_dataset
from data.splits import split_dataset
from export.artifact import WARMUP, SessionModel
from export.contract import ALTERNATIVE_SCORES, ALTERNATIVES
from model.decoding import caption_features
from model.run_dir import load_run
from tests.helpers import FAMILY_PARAMS, REPO
from tests.helpers.ops import SIGNATURES, graph_ops, unregistered_ops
from tests.helpers.reference import encoder_features, in_process_alternatives

# Both model families honour the whole contract; the attention export adds its `attention` output.
BEAM_WIDTH = 3  # the run's default decode setting, which the exports keep


@pytest.fixture(scope="module", params=FAMILY_PARAMS)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def untrained(untrained_export, family):
    return untrained_export(family)


@pytest.fixture(scope="module")
def exported(untrained) -> Path:
    return untrained.path


@pytest.fixture(scope="module")
def session_model(exported):
    model = SessionModel(exported)
    yield model
    model.close()


@pytest.fixture(scope="module")
def test_split(untrained):
    """The test images and their encoder features, computed in this process."""
    images = split_dataset(load_dataset(untrained.data))["test"]
    return images, encoder_features(load_run(untrained.run), [i.path for i in images])


def encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_signatures_match_the_contract(session_model, family):
    sigs = session_model.signatures
    assert SIGNATURES <= set(sigs)
    for name in SIGNATURES:
        sig = sigs[name]
        assert sig.method_name == "tensorflow/serving/predict"
        maps = family == "attention" and name != "caption_features"
        beams = {ALTERNATIVES, ALTERNATIVE_SCORES} if name == "beam_search" else set()
        assert set(sig.outputs) == {"caption", "log_prob", "error"} | ({"attention"} if maps else set()) | beams
        assert sig.outputs["caption"].dtype == tf.string.as_datatype_enum
        assert sig.outputs["log_prob"].dtype == tf.float32.as_datatype_enum
        for info in sig.outputs.values():
            assert info.tensor_shape.dim[0].size == -1  # batch-major, any batch size
        if maps:
            attention = sig.outputs["attention"]
            assert attention.dtype == tf.float32.as_datatype_enum
            assert [d.size for d in attention.tensor_shape.dim] == [-1, 30, 7, 7]
        if beams:  # batch-major too: [batch, beam_width]
            assert sig.outputs[ALTERNATIVES].dtype == tf.string.as_datatype_enum
            assert sig.outputs[ALTERNATIVE_SCORES].dtype == tf.float32.as_datatype_enum
            for output in beams:
                assert [d.size for d in sig.outputs[output].tensor_shape.dim] == [-1, BEAM_WIDTH]
    image_input = sigs["serving_default"].inputs["image_bytes"]
    assert image_input.dtype == tf.string.as_datatype_enum
    assert [d.size for d in image_input.tensor_shape.dim] == [-1]
    features = [d.size for d in sigs["caption_features"].inputs["features"].tensor_shape.dim]
    assert features == ([-1, 7, 7, 2048] if family == "attention" else [-1, 2048])


def test_served_captions_equal_in_process_greedy(session_model, untrained, test_split):
    images, features = test_split
    run = load_run(untrained.run)
    expected, expected_lp = caption_features(run.load_captioner(), run.vocabulary.tokens, features,
                                             run.decode_config, "greedy", progress=False)
    served = session_model.caption([i.path.read_bytes() for i in images])
    assert [r.error for r in served] == [""] * len(images)
    assert [r.caption for r in served] == expected
    # From the image bytes the export computes float32 features where the cache holds float16
    # ones: up to 0.3% apart in a caption's log-probability (measured on the attention family).
    np.testing.assert_allclose([r.log_prob for r in served], expected_lp, rtol=1e-2)
    from_features = session_model.run("caption_features", {"features": features})
    assert [c.decode() for c in from_features["caption"]] == expected
    np.testing.assert_allclose(from_features["log_prob"], expected_lp, atol=1e-3)
    assert all(c for c in expected)  # real, non-empty captions
    assert all(r.alternatives == [] for r in served)  # greedy: one caption per image


def test_beam_signature_equals_in_process_beam(session_model, untrained, test_split):
    images, features = test_split
    run = load_run(untrained.run)
    expected, _ = caption_features(run.load_captioner(), run.vocabulary.tokens, features[:8],
                                   run.decode_config, "beam", progress=False)
    served = session_model.caption([i.path.read_bytes() for i in images[:8]], "beam_search")
    assert [r.caption for r in served] == expected
    # Every beam, best first, with its length-normalised log-prob: the in-process decoder's.
    alternatives = in_process_alternatives(run, features[:8])
    assert [[c for c, _ in r.alternatives] for r in served] == [[c for c, _ in a] for a in alternatives]
    np.testing.assert_allclose([[s for _, s in r.alternatives] for r in served],
                               [[s for _, s in a] for a in alternatives], atol=1e-4)
    for result in served:
        assert len(result.alternatives) == BEAM_WIDTH and result.alternatives[0][0] == result.caption
        scores = [s for _, s in result.alternatives]
        assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)


@pytest.mark.slow
@pytest.mark.parametrize("signature, method", [("serving_default", "greedy"),
                                               ("beam_search", "beam")])
def test_served_attention_is_the_decoders_per_word_maps(untrained_export, signature, method):
    attention = untrained_export("attention")
    images = split_dataset(load_dataset(attention.data))["test"][:8]
    run = load_run(attention.run)
    features = encoder_features(run, [i.path for i in images])
    captions, _, maps = caption_features(run.load_captioner(), run.vocabulary.tokens, features,
                                         run.decode_config, method, progress=False,
                                         return_attention=True)
    session = SessionModel(attention.path)
    try:
        served = session.run(signature, {
            "image_bytes": np.array([i.path.read_bytes() for i in images], dtype=object)})
    finally:
        session.close()
    assert served["attention"].dtype == np.float32 and served["attention"].shape == (8, 30, 7, 7)
    assert [c.decode() for c in served["caption"]] == captions
    # In process the features are computed in another graph (ResNet50's kernels may round
    # differently for another batch layout), hence a tolerance.
    np.testing.assert_allclose(served["attention"], maps, atol=5e-3)
    for caption, rows in zip(served["caption"], served["attention"]):
        words = len(caption.split())
        sums = rows.sum(axis=(1, 2))
        # one softmax per word and one for <end> (unless the caption hit the length limit)
        np.testing.assert_allclose(sums[:words], 1.0, rtol=1e-4)
        assert np.all(sums[words + 1:] == 0.0)
        assert words == 30 or sums[words] == pytest.approx(1.0, rel=1e-4)  # (row 30: none)


def test_one_bad_image_never_fails_the_batch(session_model, test_split):
    images, _ = test_split
    good = images[0].path.read_bytes()
    png = encode(Image.open(images[0].path), "PNG")
    hostile = [good, b"", b"plain text, not an image", png[: len(png) // 2],
               encode(Image.new("RGB", (8, 8)), "TIFF"), encode(Image.new("L", (9000, 9000)), "PNG"),
               good]
    for signature in ("serving_default", "beam_search"):
        out = session_model.run(signature, {"image_bytes": np.array(hostile, dtype=object)})
        errors = [e.decode() for e in out["error"]]
        assert errors == ["", ERROR_EMPTY, ERROR_FORMAT, ERROR_CORRUPT, ERROR_FORMAT, ERROR_PIXELS, ""]
        captions = [c.decode() for c in out["caption"]]
        assert captions[0] and captions[0] == captions[6]
        assert captions[1:6] == [""] * 5 and list(out["log_prob"][1:6]) == [0.0] * 5
        if "attention" in out:  # no maps for what was not captioned
            assert not out["attention"][1:6].any() and out["attention"][0].any()
            np.testing.assert_allclose(out["attention"][0], out["attention"][6], atol=1e-6)
        if signature == "beam_search":  # the alternatives too: "" and 0 for what was not captioned
            assert out[ALTERNATIVES].shape == out[ALTERNATIVE_SCORES].shape == (7, BEAM_WIDTH)
            assert (out[ALTERNATIVES][1:6] == b"").all() and not out[ALTERNATIVE_SCORES][1:6].any()
            assert out[ALTERNATIVES][0, 0].decode() == captions[0]
            assert list(out[ALTERNATIVES][0]) == list(out[ALTERNATIVES][6])
            results = session_model.caption(hostile, signature)
            assert [len(r.alternatives) for r in results] == [BEAM_WIDTH, 0, 0, 0, 0, 0, BEAM_WIDTH]
            assert [r.error for r in results] == errors


def test_every_image_variant_is_captioned(session_model, test_split):
    images, _ = test_split
    picture = Image.open(images[0].path).convert("RGB")
    variants = [encode(picture.convert("L"), "PNG"), encode(picture.convert("RGBA"), "PNG"),
                encode(picture.convert("P"), "PNG"),
                encode(Image.fromarray((np.asarray(picture.convert("L"), np.uint16) * 257)), "PNG"),
                encode(picture.convert("CMYK"), "JPEG"),
                encode(picture, "GIF", save_all=True, append_images=[picture.rotate(90)]),
                encode(picture, "BMP"), encode(picture, "JPEG", progressive=True)]
    out = session_model.run("serving_default", {"image_bytes": np.array(variants, dtype=object)})
    assert [e.decode() for e in out["error"]] == [""] * len(variants)
    assert all(c.decode() for c in out["caption"])


def test_empty_request(session_model):
    out = session_model.run("serving_default", {"image_bytes": np.array([], dtype=object)})
    assert out["caption"].shape == (0,) and out["error"].shape == (0,)
    out = session_model.run("beam_search", {"image_bytes": np.array([], dtype=object)})
    assert out["caption"].shape == (0,) and out[ALTERNATIVES].shape == (0, BEAM_WIDTH)
    assert out[ALTERNATIVE_SCORES].shape == (0, BEAM_WIDTH)


def test_every_op_is_a_stock_tensorflow_op(session_model):
    """The server links TF's own kernels only: check each op against the registry of a process
    that imported nothing but tensorflow. And never PyFunc or XLA-compiled functions."""
    ops = graph_ops(session_model.meta_graph)
    assert not ops & {"PyFunc", "EagerPyFunc", "PyFuncStateless", "XlaLaunch"}
    for function in session_model.meta_graph.graph_def.library.function:
        assert "_XlaMustCompile" not in function.attr
    assert unregistered_ops(ops) == []
    assert {"While", "StatelessWhile"} & ops and "DecodeImage" in ops  # the loop and decode are in


def test_assets_and_warmup(exported, session_model, family):
    assets = exported / "assets"
    assert (assets / "vocab.txt").is_file() and (assets / "vocab.json").is_file()
    settings = json.loads((assets / "export_settings.json").read_text())
    assert settings["decode"]["beam_width"] == 3 and settings["tensorflow"] == tf.__version__
    assert settings["model"]["family"] == family
    assert ("attention" in settings["outputs"]) == (family == "attention")
    from tensorflow_serving.apis import prediction_log_pb2
    warmup = exported / WARMUP
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
               for r in tf.data.TFRecordDataset(str(warmup))]
    assert {r.predict_log.request.model_spec.signature_name for r in records} == SIGNATURES
    for record in records:  # replaying them works (what the server does at load time)
        request = record.predict_log.request
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        out = session_model.run(request.model_spec.signature_name, inputs)
        assert all(e == b"" for e in out["error"])


@pytest.mark.slow
def test_version_auto_and_killed_export_leaves_no_version(untrained_run, tmp_path):
    base = tmp_path / "captioner"
    base.mkdir()
    (base / "7").mkdir()  # an existing version: auto must take 8
    process = subprocess.Popen([sys.executable, "-m", "export.saved_model", "--run-dir",
                                str(untrained_run), "--model-base", str(base)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list(base.glob(".tmp-*/saved_model.pb")):
        time.sleep(0.05)  # the archive is being written
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert sorted(p.name for p in base.iterdir() if p.name.isdigit()) == ["7"]
    from export.saved_model import main  # the same command again, in this process
    assert main(["--run-dir", str(untrained_run), "--model-base", str(base)]) == 0
    assert (base / "8" / "saved_model.pb").is_file()
    assert not list(base.glob(".tmp-*"))  # the killed export's leftovers were tidied


def test_export_errors_are_clear(tmp_path, capsys):
    from export.saved_model import main
    assert main(["--run-dir", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--run-dir", str(tmp_path), "--precision", "int8"])
    assert exit_info.value.code == 2 and "invalid choice: 'int8'" in capsys.readouterr().err


@pytest.mark.slow
def test_inspect_command(exported, test_split):
    images, _ = test_split
    result = subprocess.run([sys.executable, "-m", "export.inspect", str(exported.parent),
                             "--image", str(images[0].path), "--signature", "beam_search"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "signature_def['serving_default']" in result.stdout
    assert "input image_bytes: string [-1]" in result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(str(images[0].path)) and "ERROR" not in last
