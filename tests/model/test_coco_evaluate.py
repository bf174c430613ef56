"""A run trained (one epoch) on the generator's COCO 2014 layout, with Karpathy's dataset_coco.json
and the official annotation files beside it: its results files carry COCO image ids, and scored
the way coco-caption's COCOEvalCap scores them (pycocotools' COCO + loadRes, the PTB tokenizer,
the Bleu and Cider scorers) against the official captions_val2014.json they give the report's
figures."""
import json

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from pycocotools.coco import COCO

from data import builtin
from data.layouts import load_dataset
from data.splits import split_dataset
from model.metrics import caption_scores, coco_results
from tests.conftest import train_preset

NUM_IMAGES = 48


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("coco-run")
    data = builtin.generate_builtin(base / "coco", NUM_IMAGES, seed=0, layout="coco2014")
    return train_preset("pooled", data, base, base / "cache", epochs=1, patience=1)


def coco_eval_scores(annotation_file, results_file) -> dict:
    """COCOEvalCap.evaluate()'s BLEU and CIDEr-D without its SPICE (which downloads CoreNLP)."""
    coco = COCO(str(annotation_file))
    results = coco.loadRes(str(results_file))
    image_ids = results.getImgIds()
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: coco.imgToAnns[i] for i in image_ids})
    res = tokenizer.tokenize({i: results.imgToAnns[i] for i in image_ids})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {**{f"coco_bleu{n}": b for n, b in enumerate(bleu, start=1)}, "cider_d": cider}


def test_coco_caption_scores_a_results_file_as_model_metrics_does(tmp_path):
    """Without training: each test image captioned with another image's reference (overlaps at
    every n-gram order), written by coco_results, scored both ways."""
    data = builtin.generate_builtin(tmp_path / "coco", 30, seed=1, layout="coco2014")
    test = split_dataset(load_dataset(data / "annotations" / "captions_val2014.json"))["test"]
    references = [list(image.captions) for image in test]
    predictions = [image.captions[-1] for image in test[1:] + test[:1]]
    coco_results([image.name for image in test], predictions, tmp_path / "results.json",
                 [image.image_id for image in test])
    ours = caption_scores(references, predictions)
    theirs = coco_eval_scores(data / "annotations" / "captions_val2014.json",
                              tmp_path / "results.json")
    assert 0 < theirs["coco_bleu4"] < theirs["coco_bleu1"] < 1 and theirs["cider_d"] > 0
    for name, value in theirs.items():
        assert value == pytest.approx(ours[name], abs=1e-9), name


@pytest.mark.slow
def test_results_file_scores_like_the_report_with_coco_caption(coco_run):
    settings = coco_run.summary["settings"]["data"]
    assert settings["layout"] == "karpathy_json"
    # The generator's quirks: the listed image missing on disk and the corrupt JPEG are counted.
    quirks = json.loads((coco_run.data / "builtin.json").read_text())["quirks"]
    assert settings["skipped"]["counts"]["missing image"] == sum(
        len(e["sentences"]) for e in json.loads((coco_run.data / "dataset_coco.json").read_text())
        ["images"] if e["cocoid"] in quirks["missing_on_disk"])
    corrupt = builtin.coco_file_name(quirks["corrupt_jpeg"][0], "train2014")
    assert any(corrupt in examples for examples in settings["skipped"]["examples"].values())
    assert coco_run.summary["train_captions"] > 5 * settings["split_images"]["train"] - 5

    test = split_dataset(load_dataset(coco_run.data))["test"]
    report = json.loads((coco_run.run / "evaluation" / "report.json").read_text())["scores"]
    for method in ("greedy", "beam"):
        results_file = coco_run.run / "evaluation" / f"captions_{method}.json"
        rows = json.loads(results_file.read_text())
        assert [row["image_id"] for row in rows] == [image.image_id for image in test]
        assert all(isinstance(row["image_id"], int) for row in rows)
        scores = coco_eval_scores(coco_run.data / "annotations" / "captions_val2014.json",
                                  results_file)
        for name, value in scores.items():
            assert value == pytest.approx(report[method][name], abs=1e-9), (method, name)
