"""The in-graph CIDEr-D reward equals pycocoevalcap's CiderScorer on the same captions with the
same document frequencies (the training references')."""
import numpy as np
import pytest
import tensorflow as tf
from pycocoevalcap.cider.cider_scorer import CiderScorer

from data.vocabulary import END_ID, SPECIAL_TOKENS
from model.cider import CiderD, cider_references

WORDS = ["a", "red", "blue", "big", "small", "circle", "square", "on", "the", "left", "right",
         "two", "shapes", "there", "is"]
VOCABULARY = list(SPECIAL_TOKENS) + WORDS[:12]  # the last words are out of vocabulary


def random_captions(rng, count, shortest=1, longest=12):
    return [" ".join(rng.choice(WORDS, rng.integers(shortest, longest + 1))) for _ in range(count)]


def encode(caption: str, max_length: int) -> list[int]:
    """A caption as the model would produce it: vocabulary ids (<unk> for other words), <end>."""
    ids = [VOCABULARY.index(w) if w in VOCABULARY else VOCABULARY.index("<unk>")
           for w in caption.split()] + [END_ID]
    return ids + [0] * (max_length - len(ids))


def as_text(ids) -> str:
    return " ".join(VOCABULARY[i] for i in ids if i)


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    references = [random_captions(rng, int(rng.integers(1, 6))) for _ in range(40)]
    references[3] = ["a red circle", "a red circle", "the red circle on the left"]  # repeats
    candidates = random_captions(rng, 40, shortest=0)  # one caption of 0 words: just <end>
    candidates[3] = "a red circle"
    candidates[4] = "red red red red red red"  # clipping
    candidates[5] = references[5][0]
    return references, candidates


def pycocoevalcap_scores(references, candidates) -> np.ndarray:
    """candidates already end in "<end>"; the references get it as the reward's do."""
    scorer = CiderScorer(n=4, sigma=6.0)
    for refs, candidate in zip(references, candidates):
        scorer += (candidate, [ref + " <end>" for ref in refs])
    return scorer.compute_score()[1]


def test_equals_pycocoevalcap_cider_scorer(corpus):
    references, candidates = corpus
    refs = cider_references(references, VOCABULARY)
    ids = np.array([encode(c, 16) for c in candidates])
    expected = pycocoevalcap_scores(references, [as_text(row) for row in ids])
    got = CiderD(refs)(tf.constant(ids), tf.constant(refs.tokens)).numpy()
    assert got.dtype == np.float64 and got.shape == (40,)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert got[3] > got[4] and got[5] > 0  # a good caption beats a repetition


def test_several_samples_per_image_and_padding(corpus):
    """K samples of an image are scored against that image's references; extra <pad> columns and
    a batch in another order change nothing."""
    references, candidates = corpus
    refs = cider_references(references, VOCABULARY)
    reward = CiderD(refs)
    ids = np.array([encode(c, 16) for c in candidates])
    once = reward(tf.constant(ids), tf.constant(refs.tokens)).numpy()
    rows = np.array([7, 7, 2, 30, 7])
    padded = np.pad(ids[rows], [(0, 0), (0, 5)])
    again = reward(tf.constant(padded), tf.constant(refs.tokens[rows])).numpy()
    np.testing.assert_allclose(again, once[rows], atol=1e-12)


def test_runs_inside_a_tf_function(corpus):
    references, candidates = corpus
    refs = cider_references(references, VOCABULARY)
    reward = CiderD(refs)
    ids = np.array([encode(c, 16) for c in candidates])
    traced = tf.function(reward)(tf.constant(ids), tf.constant(refs.tokens)).numpy()
    np.testing.assert_allclose(traced, reward(tf.constant(ids), tf.constant(refs.tokens)).numpy())


def test_bad_references_are_refused():
    with pytest.raises(ValueError, match="at least one reference"):
        cider_references([["a red circle"], []], VOCABULARY)
