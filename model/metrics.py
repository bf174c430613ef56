"""Caption evaluation done right: corpus BLEU over all references, plus the table papers print
(pycocoevalcap's BLEU-1..4, METEOR, ROUGE-L and CIDEr-D).

What the original project got wrong, and what this module does instead:
- It averaged NLTK `sentence_bleu` over 100 random caption rows, each scored against ONE reference
  that still held `<start>`/`<end>`. Here BLEU is corpus-level (n-gram matches and lengths summed
  over all images before dividing, as in Papineni et al. 2002 and every captioning paper) and every
  image is scored against ALL its references (5 on Flickr30k).
- Both sides go through the project's one cleaning rule (data.captions.clean_captions), so "A dog,"
  and "a dog" are the same words; the model's special tokens are stripped from predictions first.

Two implementations are reported side by side:
- "bleu1".."bleu4": NLTK `corpus_bleu`, cumulative BLEU-n with uniform weights, no smoothing.
  With no smoothing, if some n-gram order up to n has zero matches in the whole corpus, BLEU-n is 0
  (NLTK's rule; it also emits a warning). We keep NLTK's number untouched: it is exactly 0.0 when
  no unigram matches, otherwise NLTK uses log(sys.float_info.min) for the empty order, which leaves
  a value below 1e-70 - zero for every practical purpose.
- "coco_bleu1".."coco_bleu4" and "cider_d": pycocoevalcap's Bleu(4) and Cider(), the scorers
  behind published COCO/Flickr numbers, fed our cleaned captions (their PTBTokenizer needs Java and
  we do not want a second tokenisation rule). pycocoevalcap's Cider class is CIDEr-D (clipped
  n-gram counts, Gaussian length penalty sigma=6, x10). Its idf comes from the references of the
  images being scored, so it is only meaningful over many images: over ONE image it is always 0.
- "meteor" and "rouge_l": pycocoevalcap's Meteor (METEOR 1.5, a Java program whose jar and
  paraphrase table ship in the wheel, so it runs offline; MeteorScorer starts it once per
  evaluation) and Rouge (ROUGE-L, beta 1.2), on the same cleaned captions. Without Java "meteor"
  is None and "meteor_skipped" says why. SPICE is not reported: it downloads Stanford CoreNLP at
  run time.
"""
import dataclasses
import datetime
import importlib.metadata
import json
import re
import shutil
import threading
import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

from nltk.translate.bleu_score import corpus_bleu
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from data.captions import caption_words, clean_captions
from data.files import atomic_write
from data.vocabulary import SPECIAL_TOKENS

_SPECIAL_TOKEN_RE = re.compile("|".join(re.escape(token) for token in SPECIAL_TOKENS))

# Cumulative BLEU-n: uniform weights over orders 1..n.
BLEU_WEIGHTS = [tuple([1.0 / n] * n) for n in range(1, 5)]
METEOR_TIMEOUT_SECONDS = 600  # a JVM that stops answering must not hang an evaluation


class MeteorScorer:
    """pycocoevalcap's METEOR 1.5, one Java process for all the scores of an evaluation (starting
    it and loading its paraphrase table takes ~10 s). `skipped` says why when it cannot run."""

    def __init__(self):
        self.skipped, self._meteor = "", None
        if shutil.which("java") is None:
            self.skipped = ("no Java runtime on PATH: METEOR 1.5 is a Java program "
                            "(apt-get install default-jre-headless)")
            return
        try:
            self._meteor = Meteor()
        except OSError as error:
            self.skipped = f"METEOR could not start java: {error}"

    def score(self, gts: dict, res: dict) -> float | None:
        if self._meteor is None:
            return None
        result = []
        worker = threading.Thread(target=lambda: result.append(self._compute(gts, res)),
                                  daemon=True)
        worker.start()
        worker.join(METEOR_TIMEOUT_SECONDS)
        if not result or isinstance(result[0], str):
            self.skipped = result[0] if result else (
                f"METEOR gave no answer within {METEOR_TIMEOUT_SECONDS} s")
            self.close()
            return None
        return result[0]

    def _compute(self, gts, res):
        try:
            return float(self._meteor.compute_score(gts, res)[0])
        except (OSError, ValueError) as error:  # the Java process died or answered garbage
            return f"METEOR failed: {type(error).__name__}: {error}"

    def close(self) -> None:
        """Stops the Java process. pycocoevalcap's own clean-up waits for a lock a failed call
        never released, so the process is stopped here and the lock replaced."""
        if self._meteor is not None:
            self._meteor.meteor_p.kill()
            self._meteor.meteor_p.wait()
            self._meteor.lock = threading.Lock()
            self._meteor = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_inputs(references: Sequence[Sequence[str]], predictions: Sequence[str]) -> None:
    if isinstance(predictions, str):
        raise ValueError(f"predictions must be a list of strings, one per image, got the string {predictions!r}")
    if len(references) != len(predictions):
        raise ValueError(
            f"expected one list of references per prediction, got {len(references)} reference lists "
            f"for {len(predictions)} predictions")
    if not predictions:
        raise ValueError("nothing to score: references and predictions are empty")
    for i, refs in enumerate(references):
        # A bare string here would be scored character by character: refuse it.
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{i}] must be a non-empty list of caption strings, got {refs!r}")
        for ref in refs:
            if _SPECIAL_TOKEN_RE.search(ref):
                # The original project scored against training targets that still held <start>/<end>.
                raise ValueError(
                    f"references[{i}] contains a special token ({ref!r}); pass the dataset's raw "
                    "captions, not the model's training targets")


def _prepare(references: Sequence[Sequence[str]], predictions: Sequence[str]
             ) -> tuple[list[list[str]], list[str]]:
    """Cleaned references (one list per image) and cleaned predictions, special tokens removed."""
    _check_inputs(references, predictions)
    # Strip special tokens BEFORE cleaning: cleaning would turn "<start>" into the word "start".
    stripped = [_SPECIAL_TOKEN_RE.sub(" ", p) for p in predictions]
    flat_refs = [ref for refs in references for ref in refs]
    cleaned = clean_captions(flat_refs + stripped)  # one vectorised call for everything
    clean_refs, position = [], 0
    for refs in references:
        clean_refs.append(cleaned[position:position + len(refs)])
        position += len(refs)
    return clean_refs, cleaned[len(flat_refs):]


def _nltk_bleu(clean_refs: list[list[str]], clean_preds: list[str]) -> dict:
    list_of_references = [[caption_words(r) for r in refs] for refs in clean_refs]
    hypotheses = [caption_words(p) for p in clean_preds]
    with warnings.catch_warnings():  # "0 counts of 4-gram overlaps": a score of 0 says it
        warnings.simplefilter("ignore", UserWarning)
        scores = corpus_bleu(list_of_references, hypotheses, weights=BLEU_WEIGHTS)
    return {f"bleu{n}": float(s) for n, s in enumerate(scores, start=1)}


def _coco_inputs(clean_refs: list[list[str]], clean_preds: list[str]) -> tuple[dict, dict]:
    """pycocoevalcap's (gts, res) dicts by image index. It splits on whitespace, which is exactly
    caption_words on a cleaned caption."""
    return ({i: refs for i, refs in enumerate(clean_refs)},
            {i: [pred] for i, pred in enumerate(clean_preds)})


def _coco(clean_refs: list[list[str]], clean_preds: list[str],
          meteor: MeteorScorer | None = None) -> dict:
    gts, res = _coco_inputs(clean_refs, clean_preds)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    scores = {f"coco_bleu{n}": float(s) for n, s in enumerate(bleu, start=1)}
    scores["cider_d"] = float(cider)
    scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    scores["meteor"] = meteor.score(gts, res) if meteor else None
    if scores["meteor"] is None:
        scores["meteor_skipped"] = meteor.skipped if meteor else "not requested"
    return scores


def corpus_bleu_scores(references: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict:
    """NLTK corpus BLEU-1..4 of raw predictions against ALL raw references of each image.

    references[i] is the list of reference captions of image i; predictions[i] its caption.
    Returns {"bleu1", "bleu2", "bleu3", "bleu4"} in [0, 1].
    """
    return _nltk_bleu(*_prepare(references, predictions))


def coco_scores(references: Sequence[Sequence[str]], predictions: Sequence[str],
                meteor: MeteorScorer | None = None) -> dict:
    """pycocoevalcap BLEU-1..4 ("coco_bleu1".."coco_bleu4"), ROUGE-L ("rouge_l"), CIDEr-D
    ("cider_d") and, with a MeteorScorer, METEOR ("meteor"; else None and "meteor_skipped")."""
    return _coco(*_prepare(references, predictions), meteor)


def cider_d(references: Sequence[Sequence[str]], predictions: Sequence[str]) -> float:
    """pycocoevalcap's CIDEr-D alone (what validation during self-critical training watches)."""
    gts, res = _coco_inputs(*_prepare(references, predictions))
    return float(Cider().compute_score(gts, res)[0])


def caption_scores(references: Sequence[Sequence[str]], predictions: Sequence[str],
                   meteor: MeteorScorer | None = None) -> dict:
    """All scores (NLTK BLEU and coco_scores) plus the number of images and references."""
    clean_refs, clean_preds = _prepare(references, predictions)
    scores = _nltk_bleu(clean_refs, clean_preds) | _coco(clean_refs, clean_preds, meteor)
    scores["num_images"] = len(clean_refs)
    scores["num_references"] = sum(len(refs) for refs in clean_refs)
    return scores


def score_line(label: str, scores: dict, label_width: int = 17) -> str:
    """One method's scores as every command prints them (METEOR "-" when it was skipped):
    `   greedy  BLEU-1..4 0.892 0.800 0.694 0.584  METEOR 0.412  ROUGE-L 0.731  CIDEr-D 2.196`."""
    bleu = " ".join(f"{scores[f'bleu{n}']:.3f}" for n in range(1, 5))
    meteor = "-" if scores.get("meteor") is None else f"{scores['meteor']:.3f}"
    return (f"{label:>{label_width}}  BLEU-1..4 {bleu}  METEOR {meteor}  "
            f"ROUGE-L {scores['rouge_l']:.3f}  CIDEr-D {scores['cider_d']:.3f}")


def majority_baseline(train_captions: Sequence[str], references: Sequence[Sequence[str]],
                      meteor: MeteorScorer | None = None) -> dict:
    """Scores of predicting the most frequent (cleaned) training caption for every image.

    A trained model has to beat this; the chosen caption is returned as "majority_caption".
    Ties go to the caption seen first in train_captions.
    """
    if isinstance(train_captions, str) or not train_captions:
        raise ValueError(f"train_captions must be a non-empty list of strings, got {train_captions!r}")
    caption, count = Counter(clean_captions(list(train_captions))).most_common(1)[0]
    scores = caption_scores(references, [caption] * len(references), meteor)
    return scores | {"majority_caption": caption, "majority_count": count}


def _json_default(value):
    """JSON for the few non-JSON types an evaluation produces (numpy scalars/arrays, paths)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"evaluation_report cannot write a {type(value).__name__} to JSON: {value!r}")


def coco_results(image_names: Sequence[str], captions: Sequence[str], path,
                 image_ids: Sequence[int | None] | None = None) -> None:
    """Writes COCO's results format, [{"image_id": ..., "caption": ...}], so coco-caption scripts
    can score a run. image_id is the image's COCO id where the dataset gives one (`image_ids`,
    data.layouts.ImageCaptions.image_id: COCOEvalCap with COCO's captions_val2014.json scores the
    file unchanged), else a Flickr-style file name's number (1000092795.jpg -> 1000092795), else
    the file name."""
    if len(image_names) != len(captions):
        raise ValueError(f"got {len(image_names)} image names for {len(captions)} captions")
    image_ids = [None] * len(image_names) if image_ids is None else list(image_ids)
    if len(image_ids) != len(captions):
        raise ValueError(f"got {len(image_ids)} image ids for {len(captions)} captions")
    rows = [{"image_id": image_id if image_id is not None else
             int(Path(name).stem) if Path(name).stem.isdigit() else name, "caption": caption}
            for name, image_id, caption in zip(image_names, image_ids, captions)]
    atomic_write(path, json.dumps(rows, indent=1, ensure_ascii=False) + "\n")


def evaluation_report(scores: dict, samples: list[dict], settings: dict, path) -> None:
    """Writes scores, settings and sample captions to a JSON file at `path`.

    The write is atomic (data.files.atomic_write), so a crash never leaves a half-written report
    behind. `settings` may be a dict or a settings dataclass.
    """
    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        settings = dataclasses.asdict(settings)
    report = {
        "scores": scores,
        "settings": settings,
        "samples": samples,
        "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "libraries": {name: importlib.metadata.version(name) for name in ("nltk", "pycocoevalcap")},
    }
    atomic_write(path, json.dumps(report, indent=2, ensure_ascii=False, default=_json_default)
                 + "\n")
