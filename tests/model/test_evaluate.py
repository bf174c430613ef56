"""model/evaluate.py on a trained run: every score papers report for greedy, beam and the
baseline from one METEOR process, COCO results files, the built-in data's attribute accuracies
(and none for other data), METEOR skipped with its reason without Java, one trace per method."""
import json
import shutil

import numpy as np
import pytest

from data import builtin
from data.feature_cache import load_features
from data.sources import open_dataset
from data.splits import split_dataset
from model.decoding import CaptionDecoder, caption_features
from model.evaluate import evaluate_run, report_lines
from model.run_dir import load_run

SCORES = {"bleu1", "bleu2", "bleu3", "bleu4", "coco_bleu4", "meteor", "rouge_l", "cider_d"}
METHODS = ("greedy", "beam", "majority_baseline")


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """The trained run copied, so evaluating it again leaves the shared fixture's files alone."""
    shutil.copytree(trained_run.run, tmp_path / "run")
    return tmp_path / "run"


def test_report_has_every_score_results_files_and_attributes(trained_run):
    test = trained_run.summary["test"]
    report = json.loads((trained_run.run / "evaluation" / "report.json").read_text())
    for method in METHODS:
        assert SCORES <= set(report["scores"][method]), method
        assert 0 < report["scores"][method]["meteor"] < 1  # Java is there: METEOR scored
        attributes = report["scores"][method]["attributes"]
        assert attributes["images"] == test["images"] and 0 <= attributes["all"] <= 1
    assert "meteor_skipped" not in report["scores"]
    images = split_dataset(open_dataset(trained_run.data))["test"]
    for method in ("greedy", "beam"):
        rows = json.loads((trained_run.run / "evaluation" / f"captions_{method}.json").read_text())
        assert [row["image_id"] for row in rows] == [image.name for image in images]
        assert [row["caption"] for row in rows][:1] == [
            report["samples"][0]["prediction" if method == "greedy" else "beam"]]
    lines = report_lines(test)
    assert [line.split()[0] for line in lines] == [*METHODS, *METHODS]
    assert "METEOR -" not in "\n".join(lines) and "states right" in lines[-1]


def test_without_java_meteor_is_skipped_and_the_report_says_why(run_copy, trained_run,
                                                                tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = evaluate_run(run_copy, data=trained_run.data, methods=("greedy",))
    assert result["greedy"]["meteor"] is None and result["greedy"]["cider_d"] >= 0
    assert "no Java runtime" in result["meteor_skipped"]
    report = json.loads((run_copy / "evaluation" / "report.json").read_text())
    assert "no Java runtime" in report["scores"]["meteor_skipped"]
    assert any(line.startswith("METEOR skipped: no Java runtime") for line in report_lines(result))


def test_no_attributes_for_other_data(run_copy, trained_run, tmp_path):
    other = tmp_path / "flickr"
    shutil.copytree(trained_run.data, other)
    (other / builtin.MANIFEST).unlink()  # what tells the built-in data apart
    names = [image.name for image in split_dataset(open_dataset(other))["test"]]
    features = load_features(trained_run.cache, names)
    result = evaluate_run(run_copy, data=other, methods=("greedy",), features=features)
    assert "attributes" not in result["greedy"] and "attributes" not in result["majority_baseline"]
    assert all("states right" not in line for line in report_lines(result))


def test_decoder_traces_once_per_method(trained_run):
    run = load_run(trained_run.run)
    test = split_dataset(open_dataset(trained_run.data))["test"]
    _, features = load_features(trained_run.cache, [image.name for image in test])
    decoder = CaptionDecoder(run.load_captioner(), run.vocabulary.tokens, run.decode_config,
                             features.shape[1:])
    first, log_probs = decoder(features, "greedy", batch_size=3, progress=False)
    again, _ = decoder(features[:5], "greedy", batch_size=2, progress=False)
    decoder(features[:2], "beam", progress=False)
    assert decoder.tracing_counts() == {("greedy", False): 1, ("beam", False): 1}
    assert again == first[:5] and log_probs.shape == (len(test),)
    alone, _ = caption_features(run.load_captioner(), run.vocabulary.tokens, features,
                                run.decode_config, progress=False)
    assert alone == first and np.all(log_probs <= 0)
