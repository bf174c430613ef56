"""model/metrics.py against hand arithmetic, NLTK called directly and pycocoevalcap called directly."""
import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
from nltk.translate.bleu_score import corpus_bleu
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from data.captions import clean_captions
from data.vocabulary import SPECIAL_TOKENS
from model import metrics
from model.metrics import (MeteorScorer, caption_scores, cider_d, coco_results, coco_scores,
                           corpus_bleu_scores, evaluation_report, majority_baseline, score_line)

# Two images; raw captions (capitals, punctuation, special tokens) to exercise cleaning too.
HAND_REFS = [
    ["The cat sat on the mat.", "There is a cat on the mat!", "A cat."],  # 6, 7, 2 words
    ["A dog runs fast", "A brown dog runs on grass"],                     # 4, 6 words
]
HAND_PREDS = ["<start> the cat on the mat <end>", "a dog a dog"]        # 5, 4 words

# A realistic Flickr30k-like case: 4 images, 5 references each, plausible model output.
REAL_REFS = [
    ["Two young guys with shaggy hair look at their hands while hanging out in the yard.",
     "Two young, White males are outside near many bushes.",
     "Two men in green shirts are standing in a yard.",
     "A man in a blue shirt standing in a garden.",
     "Two friends enjoy time spent together."],
    ["A black dog is running through the grass.",
     "A dog runs across a grassy field.",
     "The black dog is running in the green grass.",
     "A dog with a red collar runs on the lawn.",
     "A black dog runs outside."],
    ["A man in a red shirt is riding a bike down the street.",
     "A cyclist rides along a city street.",
     "A man rides his bicycle on the road.",
     "A person on a bike in traffic.",
     "A man wearing a helmet rides a bicycle down a busy street."],
    ["Children playing in a fountain on a sunny day.",
     "Three kids splash in the water of a park fountain.",
     "Kids are playing in the water.",
     "A group of children run through a water fountain.",
     "Young children play in the spray of a fountain in a park."],
]
REAL_PREDS = ["<start> two men are standing in a yard <end>",
              "a black dog is running through the grass <end> <pad> <pad>",
              "a man in a red shirt is riding a bike",
              "a group of children playing in the water <unk>"]


def test_hand_worked_example():
    # After cleaning and stripping <start>/<end>:
    # image 1 hyp "the cat on the mat" (5 words); refs of 6, 7 and 2 words.
    #   1-grams: the x2 (max in one ref: 2, "the cat sat on the mat"), cat, on, mat -> 5/5
    #   2-grams: the cat (ref1), cat on (ref2), on the, the mat               -> 4/4
    #   3-grams: the cat on (none), cat on the (ref2), on the mat              -> 2/3
    #   4-grams: the cat on the (none), cat on the mat (ref2)                  -> 1/2
    #   closest ref length to 5: |6-5|=1 beats |7-5|=2 and |2-5|=3 -> r=6 (the shortest, 2, is NOT used)
    # image 2 hyp "a dog a dog" (4 words); refs of 4 and 6 words.
    #   1-grams: a x2 clipped to 1 (no ref has two "a"), dog x2 clipped to 1   -> 2/4
    #   2-grams: "a dog" x2 clipped to 1, "dog a" 0                            -> 1/3
    #   3-grams: "a dog a", "dog a dog"                                        -> 0/2
    #   4-grams: "a dog a dog"                                                 -> 0/1
    #   closest ref length to 4: r=4
    # Corpus (micro-averaged) precisions: p1 = 7/9, p2 = 5/7, p3 = 2/5, p4 = 1/3.
    # Lengths: c = 5 + 4 = 9, r = 6 + 4 = 10; c < r so BP = exp(1 - r/c) = exp(-1/9) = 0.894839.
    # BLEU-n = BP * geometric mean of p1..pn:
    #   BLEU-1 = BP * 7/9                          = 0.895 * 0.7778 = 0.69599
    #   BLEU-2 = BP * (7/9 * 5/7) ** (1/2) = BP * (5/9) ** (1/2)  = 0.895 * 0.7454 = 0.66697
    #   BLEU-3 = BP * (5/9 * 2/5) ** (1/3) = BP * (2/9) ** (1/3)  = 0.895 * 0.6057 = 0.54201
    #   BLEU-4 = BP * (2/9 * 1/3) ** (1/4) = BP * (2/27) ** (1/4) = 0.895 * 0.5217 = 0.46683
    bp = math.exp(1 - 10 / 9)
    expected = {"bleu1": bp * 7 / 9, "bleu2": bp * (5 / 9) ** (1 / 2),
                "bleu3": bp * (2 / 9) ** (1 / 3), "bleu4": bp * (2 / 27) ** (1 / 4)}
    scores = corpus_bleu_scores(HAND_REFS, HAND_PREDS)
    assert scores == pytest.approx(expected, abs=1e-12)
    assert scores["bleu4"] == pytest.approx(0.46683, abs=1e-5)


def _tokens(refs, preds):
    """The same tokens our module scores, built by hand: special tokens dropped, then cleaned."""
    refs = [[caption.split() for caption in clean_captions(list(rs))] for rs in refs]
    preds = [[w for w in p.split() if w not in SPECIAL_TOKENS] for p in preds]
    return refs, [caption.split() for caption in clean_captions([" ".join(p) for p in preds])]


@pytest.mark.parametrize("refs, preds", [(HAND_REFS, HAND_PREDS), (REAL_REFS, REAL_PREDS)],
                         ids=["hand", "flickr_like_5_refs"])
def test_agrees_with_nltk_and_pycocoevalcap(refs, preds):
    ref_tokens, pred_tokens = _tokens(refs, preds)
    ours = caption_scores(refs, preds)

    # NLTK called directly: the same function, so equal to rounding.
    for n in range(1, 5):
        direct = corpus_bleu(ref_tokens, pred_tokens, weights=tuple([1 / n] * n))
        assert ours[f"bleu{n}"] == pytest.approx(direct, abs=1e-12)

    # pycocoevalcap called directly on the same tokens. Both compute the same corpus BLEU (clipped
    # counts, closest reference length with ties to the shorter, BP = exp(1 - r/c) when c < r), but
    # pycocoevalcap divides (matches + 1e-15) by (guesses + 1e-9) and (c + 1e-15) by (r + 1e-9) to
    # avoid zero division. With matches at every order (true for both inputs here) that moves the
    # score by ~1e-9 relative, hence the 1e-6 tolerance. (With ZERO matches at some order they
    # diverge; see test_zero_matches_nltk_gives_zero_pycocoevalcap_does_not.)
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(ref_tokens)}
    res = {i: [" ".join(p)] for i, p in enumerate(pred_tokens)}
    coco_direct, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(1, 5):
        assert ours[f"coco_bleu{n}"] == pytest.approx(coco_direct[n - 1], abs=1e-12)
        assert ours[f"bleu{n}"] == pytest.approx(coco_direct[n - 1], abs=1e-6)

    assert ours["num_images"] == len(refs)
    assert ours["num_references"] == sum(len(r) for r in refs)
    assert 0 < ours["bleu4"] < ours["bleu3"] < ours["bleu2"] < ours["bleu1"] <= 1


@pytest.mark.filterwarnings("ignore::UserWarning")  # besides the ones checked
def test_zero_matches_nltk_gives_zero_pycocoevalcap_does_not():
    # No bigram overlap anywhere: without smoothing NLTK says BLEU-2..4 are 0 (its warning is
    # silenced: the score says it; it stands in log(sys.float_info.min) for the empty order, leaving < 1e-70). pycocoevalcap's
    # epsilons give (1e-15 / guesses) inside the geometric mean instead: tiny, but not 0.
    refs, preds = [["a dog runs on grass"]], ["dog a cat"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NLTK's "0 counts of n-gram overlaps" stays quiet
        scores = caption_scores(refs, preds)
    # BLEU-1: "dog" and "a" match -> p1 = 2/3; c = 3 < r = 5 -> BP = exp(1 - 5/3).
    assert scores["bleu1"] == pytest.approx(2 / 3 * math.exp(1 - 5 / 3))
    assert all(scores[f"bleu{n}"] < 1e-70 for n in (2, 3, 4))
    assert 0 < scores["coco_bleu4"] < 1e-6

    # Hypotheses shorter than 4 words have no 4-grams at all (0 matches out of 0). NLTK: BLEU-4 = 0.
    # pycocoevalcap: (0 + 1e-15) / (0 + 1e-9) = 1e-6 for p4, so BLEU-4 = 1e-6 ** (1/4) = 0.0316 for a
    # perfect 3-word caption. Over a real test set the 4-gram counts are summed over all images,
    # so this only shows when nearly every caption is that short.
    short = caption_scores([["A dog runs."]], ["a dog runs"])
    assert short["bleu3"] == 1.0 and short["coco_bleu3"] == pytest.approx(1.0, abs=1e-6)
    assert short["bleu4"] < 1e-70
    assert short["coco_bleu4"] == pytest.approx(1e-6 ** 0.25, rel=1e-6)

    # No unigram matches at all: NLTK returns exactly 0.
    assert corpus_bleu_scores([["a dog"]], ["<start> <end>"]) == {f"bleu{n}": 0.0 for n in range(1, 5)}


def test_cleaning_and_special_tokens():
    refs = [["A dog is running.", "A brown dog runs on the grass."],
            ["A man rides a red bike down the street."]]
    messy = caption_scores(refs, ["<start> A dog , running! <end>", "a man rides a red bike"])
    clean = caption_scores(refs, ["a dog running", "a man rides a red bike"])
    assert messy == clean
    assert clean["bleu4"] > 0


def test_bad_inputs_are_refused_clearly():
    with pytest.raises(ValueError, match="one list of references per prediction"):
        corpus_bleu_scores([["a dog"]], ["a dog", "a cat"])
    with pytest.raises(ValueError, match="non-empty list of caption strings"):
        corpus_bleu_scores(["a dog runs"], ["a dog"])  # references given as bare strings
    with pytest.raises(ValueError, match="special token"):
        corpus_bleu_scores([["<start> a dog runs <end>"]], ["a dog runs"])
    with pytest.raises(ValueError, match="empty"):
        coco_scores([], [])


def test_cider_d_prefers_the_right_image():
    perfect = [refs[0] for refs in REAL_REFS]
    shuffled = perfect[1:] + perfect[:1]  # each image gets another image's caption
    good = coco_scores(REAL_REFS, perfect)["cider_d"]
    bad = coco_scores(REAL_REFS, shuffled)["cider_d"]
    assert good > 1.0 > bad >= 0.0
    # Its idf comes from the scored images' references: over a single image every weight is 0.
    assert coco_scores(REAL_REFS[:1], perfect[:1])["cider_d"] == 0.0
    # Alone (what self-critical validation watches): the same number.
    assert cider_d(REAL_REFS, REAL_PREDS) == coco_scores(REAL_REFS, REAL_PREDS)["cider_d"] > 0


# The 3-word majority caption has no 4-grams: NLTK warns that BLEU-4 is 0, as a baseline's should be.
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_majority_baseline():
    train = ["A dog runs.", "a dog runs", "A cat sleeps on a sofa", "Two men talk"]
    refs = [REAL_REFS[1], REAL_REFS[2]]
    baseline = majority_baseline(train, refs)
    assert baseline["majority_caption"] == "a dog runs"  # "A dog runs." and "a dog runs" are one caption
    assert baseline["majority_count"] == 2
    expected = caption_scores(refs, ["a dog runs", "a dog runs"])
    assert {k: baseline[k] for k in expected} == expected
    # The real model output beats it.
    assert caption_scores(refs, [REAL_PREDS[1], REAL_PREDS[2]])["bleu4"] > baseline["bleu4"]


@dataclasses.dataclass
class _Settings:
    beam_width: int = 3
    split: str = "test"


def test_evaluation_report_writes_json_atomically(tmp_path):
    path = tmp_path / "eval" / "report.json"
    scores = caption_scores(REAL_REFS, REAL_PREDS) | {"extra": np.float32(0.5)}
    samples = [{"image_path": "a.jpg", "references": REAL_REFS[0], "prediction": REAL_PREDS[0]}]
    path.parent.mkdir()
    path.write_text("old report")
    evaluation_report(scores, samples, _Settings(), path)
    report = json.loads(path.read_text())
    assert report["scores"]["bleu4"] == scores["bleu4"]
    assert report["scores"]["extra"] == 0.5
    assert report["settings"] == {"beam_width": 3, "split": "test"}
    assert report["samples"] == samples
    assert set(report["libraries"]) == {"nltk", "pycocoevalcap"}
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temp file left

    with pytest.raises(TypeError, match="cannot write a object"):
        evaluation_report({"bad": object()}, [], {}, path)
    assert json.loads(path.read_text())["scores"]["bleu4"] == scores["bleu4"]  # old report intact


def test_score_line_is_the_one_printed_format():
    scores = {"bleu1": 0.8923, "bleu2": 0.8, "bleu3": 0.6944, "bleu4": 0.5836, "cider_d": 2.1962,
              "meteor": 0.41234, "rouge_l": 0.7309}
    assert score_line("greedy", scores) == (
        "           greedy  BLEU-1..4 0.892 0.800 0.694 0.584  METEOR 0.412  ROUGE-L 0.731  "
        "CIDEr-D 2.196")
    assert "METEOR -  ROUGE-L" in score_line("beam", scores | {"meteor": None})


@pytest.mark.slow
def test_meteor_and_rouge_l_equal_pycocoevalcap_on_the_same_tokens():
    ref_tokens, pred_tokens = _tokens(REAL_REFS, REAL_PREDS)
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(ref_tokens)}
    res = {i: [" ".join(p)] for i, p in enumerate(pred_tokens)}
    with MeteorScorer() as meteor:
        assert meteor.skipped == ""
        ours = caption_scores(REAL_REFS, REAL_PREDS, meteor)
        again = caption_scores(REAL_REFS, REAL_PREDS, meteor)  # one Java process, many calls
        # pycocoevalcap's own Meteor.compute_score on our tokens, in the Java process it started
        # (a second one would cost ~10-15 s more and compute the same)
        assert isinstance(meteor._meteor, Meteor)
        direct = meteor._meteor.compute_score(gts, res)[0]
    assert ours["meteor"] == pytest.approx(direct, abs=1e-12)
    assert ours["rouge_l"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12)
    assert again["meteor"] == ours["meteor"] and 0 < ours["meteor"] < 1
    assert "meteor_skipped" not in ours
    assert caption_scores(REAL_REFS, REAL_PREDS)["meteor_skipped"] == "not requested"


def _fake_java(folder, script: str):
    """A `java` on PATH that is not Java: it exits at once, or never answers."""
    java = folder / "java"
    java.write_text("#!/bin/sh\n" + script + "\n")
    java.chmod(0o755)


@pytest.mark.parametrize("script, reason", [("exit 1", "METEOR failed"),
                                            ("exec /bin/sleep 600", "no answer within 2 s")])
def test_meteor_that_cannot_run_is_skipped_with_the_reason(tmp_path, monkeypatch, script, reason):
    _fake_java(tmp_path, script)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(metrics, "METEOR_TIMEOUT_SECONDS", 2)
    with MeteorScorer() as meteor:
        scores = caption_scores(REAL_REFS, REAL_PREDS, meteor)
    assert scores["meteor"] is None and reason in scores["meteor_skipped"]
    assert scores["cider_d"] > 0 and scores["rouge_l"] > 0  # the other scores are still there


def test_without_java_meteor_is_skipped_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java
    with MeteorScorer() as meteor:
        scores = majority_baseline(["a dog runs"], REAL_REFS[:2], meteor)
    assert scores["meteor"] is None and "no Java runtime" in scores["meteor_skipped"]
    assert "default-jre-headless" in scores["meteor_skipped"]


def test_coco_results_file(tmp_path):
    path = tmp_path / "captions_greedy.json"
    coco_results(["1000092795.jpg", "scene_00004.jpg"], ["two men", "a red circle"], path)
    assert json.loads(path.read_text()) == [{"image_id": 1000092795, "caption": "two men"},
                                            {"image_id": "scene_00004.jpg",
                                             "caption": "a red circle"}]
    with pytest.raises(ValueError, match="2 image names for 1 captions"):
        coco_results(["a.jpg", "b.jpg"], ["x"], path)


def test_coco_results_file_takes_coco_ids(tmp_path):
    path = tmp_path / "coco.json"
    coco_results(["COCO_val2014_000000391895.jpg", "1000092795.jpg", "scene_00004.jpg"],
                 ["a man on a bike", "two men", "a red circle"], path, [391895, None, None])
    assert json.loads(path.read_text()) == [
        {"image_id": 391895, "caption": "a man on a bike"},
        {"image_id": 1000092795, "caption": "two men"},
        {"image_id": "scene_00004.jpg", "caption": "a red circle"}]
    with pytest.raises(ValueError, match="got 2 image ids for 1 captions"):
        coco_results(["a.jpg"], ["x"], path, [1, 2])
