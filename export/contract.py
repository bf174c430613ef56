"""The serving contract, in one place and without TensorFlow (the REST client imports it):

  serving_default   image_bytes: string [-1]      -> caption, log_prob, error   (greedy)
  beam_search       image_bytes: string [-1]      -> caption, log_prob, error,  (beam search)
                                                     alternatives: string [-1, beam_width],
                                                     alternative_scores: float32 [-1, beam_width]
  caption_features  features: float32 [-1, 2048]  -> caption, log_prob, error   (greedy)

alternatives: every beam's caption, best first (the first is `caption`); alternative_scores: their
log-probabilities / length ** length_penalty (the ranking beam search uses); "" and 0 for a bad
image. Attention models take features [-1, 7, 7, 2048] and their image signatures add `attention`
[-1, max_new_tokens, 7, 7]. Also here: the per-image result (`CaptionResult`) and the one function
turning a signature's output columns into results (`caption_results`). This is what a client
needs, and all it imports: what the loaders share is export/loaded_model.py.
"""
import dataclasses

import numpy as np

SERVING_DEFAULT, BEAM_SEARCH, CAPTION_FEATURES = "serving_default", "beam_search", "caption_features"
SIGNATURES = (SERVING_DEFAULT, BEAM_SEARCH, CAPTION_FEATURES)
IMAGE_SIGNATURES = (SERVING_DEFAULT, BEAM_SEARCH)
IMAGE_INPUT, FEATURES_INPUT = "image_bytes", "features"
OUTPUTS = ("caption", "log_prob", "error")  # of every signature
ATTENTION = "attention"  # the extra output of an attention model's image signatures
ALTERNATIVES, ALTERNATIVE_SCORES = "alternatives", "alternative_scores"  # beam_search's extras


@dataclasses.dataclass(frozen=True)
class CaptionResult:
    caption: str
    log_prob: float
    error: str = ""  # "" when the image was captioned, else the model's (or client's) reason
    # float32 [max_new_tokens, 7, 7] when the model serves attention maps, else None (pooled models).
    # Left out of ==, which cannot compare arrays.
    attention: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    # beam_search's beams, best first: [(caption, length-normalised log_prob)], the first being
    # `caption`; [] for greedy signatures and for an image that was not captioned. Compared by ==,
    # left out of hash() (a list), so results stay hashable.
    alternatives: list[tuple[str, float]] = dataclasses.field(default_factory=list, hash=False)

    @property
    def ok(self) -> bool:
        return not self.error

    def as_json(self) -> dict:
        """caption, log_prob, error and alternatives ([{caption, score}]) as JSON values (what the
        command lines print; attention maps, when wanted, are the caller's to add)."""
        return {"caption": self.caption, "log_prob": self.log_prob, "error": self.error,
                "alternatives": [{"caption": c, "score": s} for c, s in self.alternatives]}

    def word_maps(self) -> list[tuple[str, np.ndarray]]:
        """[(word, map [7, 7])] per caption word (+ "<end>"): model.attention_maps.word_maps.
        Raises ValueError when the model served no attention maps."""
        if self.attention is None:
            raise ValueError("this model serves no attention maps (a pooled-feature captioner)")
        from model.attention_maps import word_maps  # matplotlib and PIL only when maps are used
        return word_maps(self.caption, self.attention)


def caption_results(outputs: dict, count: int) -> list[CaptionResult]:
    """A signature's output columns (numpy arrays from a session, JSON lists from REST) as one
    CaptionResult per image. ValueError naming what is missing or malformed."""
    columns = [outputs.get(name) for name in OUTPUTS] if isinstance(outputs, dict) else [None]
    if any(column is None or len(column) != count for column in columns):
        raise ValueError(f"expected outputs {', '.join(OUTPUTS)} for {count} images, "
                         f"got {str(outputs)[:200]}")
    captions, errors = _texts(columns[0]), _texts(columns[2])
    maps = _attention(outputs.get(ATTENTION), count)
    beams = _alternatives(outputs.get(ALTERNATIVES), outputs.get(ALTERNATIVE_SCORES), count)
    return [CaptionResult(c, float(p), e, a, [] if e else b)
            for c, p, e, a, b in zip(captions, columns[1], errors, maps, beams)]


def _texts(column) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in column]


def _alternatives(captions, scores, count: int) -> list[list[tuple[str, float]]]:
    """beam_search's [count, beam_width] columns as one [(caption, score)] list per image."""
    if captions is None and scores is None:
        return [[]] * count
    try:
        captions, scores = np.asarray(captions, dtype=object), np.asarray(scores, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the {ALTERNATIVE_SCORES} output is not a numeric array: {e}") from None
    if captions.ndim != 2 or len(captions) != count or captions.shape != scores.shape:
        raise ValueError(f"expected {ALTERNATIVES} and {ALTERNATIVE_SCORES} [{count}, beam_width], "
                         f"got shapes {list(captions.shape)} and {list(scores.shape)}")
    return [list(zip(_texts(row), map(float, row_scores))) for row, row_scores in zip(captions, scores)]


def _attention(column, count: int) -> list:
    """The attention column as one float32 [max_new_tokens, h, w] array per image, or Nones."""
    if column is None:
        return [None] * count
    try:
        maps = np.asarray(column, dtype=np.float32)
    except (TypeError, ValueError) as e:  # ragged or non-numeric lists
        raise ValueError(f"the attention output is not a numeric array: {e}") from None
    if maps.ndim != 4 or len(maps) != count:
        raise ValueError(f"expected attention [{count}, max_new_tokens, 7, 7], got shape {list(maps.shape)}")
    return list(maps)

