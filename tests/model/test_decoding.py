"""The one decoder, driven by fake next-token functions whose right answers are known
(as keras-hub tests its samplers)."""
import numpy as np
import pytest
import tensorflow as tf

from data.vocabulary import END_ID, SPECIAL_TOKENS, START_ID
from model.decoding import beam_search, greedy_search, ids_to_captions, sample_search, words_table
from model.settings import DecodeConfig

# Tokens: 0 <pad>, 1 <start>, 2 <end>, 3 <unk>, 4 "a", 5 "b", 6 "c".
TOKENS = [*SPECIAL_TOKENS, "a", "b", "c"]


def markov_step(table):
    """step_fn whose next-token probabilities depend only on the previous token."""
    log_probs = tf.math.log(tf.constant(table, tf.float32) + 1e-9)

    def step(tokens, state):
        return tf.gather(log_probs, tokens), state
    return step


def probs(**p):
    row = np.zeros(len(TOKENS), np.float32)
    for word, value in p.items():
        row[TOKENS.index({"end": "<end>"}.get(word, word))] = value
    return row


def dummy_state(batch):
    return (tf.zeros([batch, 1]),)


# After <start>: "a" 0.6, "b" 0.4. After "a": nearly uniform, no clear end. After "b": <end> 0.99.
# Greedy takes "a" and wanders; the best sequence is "b <end>" (p = 0.396).
TRAP = np.stack([
    probs(a=1.0),                       # <pad> (unused)
    probs(a=0.6, b=0.4),                # <start>
    probs(end=1.0),                     # <end> (unused)
    probs(end=1.0),                     # <unk>
    probs(a=0.34, c=0.33, end=0.33),    # a
    probs(end=0.99, a=0.01),            # b
    probs(c=0.5, end=0.5),              # c
])


def test_greedy_stops_at_end_and_pads_after():
    ids, log_prob = greedy_search(markov_step(TRAP), dummy_state(2), 2, max_new_tokens=10)
    ids = ids.numpy()
    # greedy: a (0.6), a (0.34), a, ... never ends by itself: cut at max_new_tokens
    assert ids.shape == (2, 10) and set(ids[0]) == {4}
    np.testing.assert_allclose(log_prob.numpy()[0], np.log(0.6) + 9 * np.log(0.34), rtol=1e-4)


def test_greedy_ends_when_every_caption_has_ended():
    table = TRAP.copy()
    table[4] = probs(c=0.6, end=0.4)     # a -> c -> <end>/c tie broken to c? make it clear:
    table[6] = probs(end=0.9, c=0.1)
    ids, _ = greedy_search(markov_step(table), dummy_state(3), 3, max_new_tokens=10)
    assert ids.numpy().tolist() == [[4, 6, END_ID]] * 3  # loop stopped after 3 steps


def test_greedy_respects_max_new_tokens():
    ids, _ = greedy_search(markov_step(TRAP), dummy_state(1), 1, max_new_tokens=3)
    assert ids.shape == (1, 3)


def test_beam_finds_the_sequence_greedy_misses():
    ids, log_prob = beam_search(markov_step(TRAP), dummy_state(2), 2, max_new_tokens=10,
                                beam_width=2, length_penalty=0.7)
    assert ids.numpy()[:, :2].tolist() == [[5, END_ID]] * 2
    assert set(ids.numpy()[:, 2:].ravel()) <= {0}
    np.testing.assert_allclose(log_prob.numpy(), np.log(0.4 * 0.99), rtol=1e-4)


def test_beam_width_one_equals_greedy():
    rng = np.random.RandomState(0)
    table = rng.dirichlet(np.ones(len(TOKENS)), size=len(TOKENS)).astype(np.float32)
    g_ids, g_lp = greedy_search(markov_step(table), dummy_state(4), 4, max_new_tokens=6)
    b_ids, b_lp = beam_search(markov_step(table), dummy_state(4), 4, max_new_tokens=6, beam_width=1,
                              length_penalty=0.0)
    assert g_ids.numpy().tolist() == b_ids.numpy().tolist()
    np.testing.assert_allclose(g_lp.numpy(), b_lp.numpy(), rtol=1e-5)


def test_beam_stops_when_all_beams_ended():
    table = TRAP.copy()
    table[1] = probs(b=0.5, c=0.5)
    table[6] = probs(end=1.0)
    ids, _ = beam_search(markov_step(table), dummy_state(1), 1, max_new_tokens=20, beam_width=3)
    # two beams end at step 2; the third ("a" at p=1e-9) can no longer win, so the loop stops
    assert ids.shape[1] == 2


def test_searches_run_inside_a_graph_without_autograph():
    step = markov_step(TRAP)

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, 1], tf.float32)])
    def both(state):
        batch = tf.shape(state)[0]
        return greedy_search(step, (state,), batch, 5)[0], beam_search(step, (state,), batch, 5)[0]

    greedy_ids, beam_ids = both(tf.zeros([3, 1]))
    assert greedy_ids.shape[0] == beam_ids.shape[0] == 3
    empty = both(tf.zeros([0, 1]))
    assert empty[0].shape[0] == 0 and empty[1].shape[0] == 0


def test_ids_to_captions_drops_special_tokens():
    table = words_table(tokens=TOKENS)
    ids = tf.constant([[START_ID, 4, 3, 5, END_ID, 0], [4, END_ID, 0, 0, 0, 0]])
    assert [c.decode() for c in ids_to_captions(ids, table).numpy()] == ["a b", "a"]


def test_decode_config_validation():
    with pytest.raises(ValueError, match="beam_width"):
        DecodeConfig(beam_width=0)


def test_sampling_follows_the_model_distribution():
    """After <start>: "a" 0.6 / "b" 0.4; after "b" <end> 0.99. 4 images x 500 samples: the first
    token's frequencies match, every sample is padded after its <end>, its log_prob is the
    model's own, and the samples of an image sit in consecutive rows."""
    tf.random.set_seed(0)
    ids, log_prob = sample_search(markov_step(TRAP), dummy_state(4), 4, max_new_tokens=6,
                                  num_samples=500)
    ids, log_prob = ids.numpy(), log_prob.numpy()
    assert ids.shape[0] == 2000 and log_prob.shape == (2000,)
    first = ids[:, 0]
    assert abs(np.mean(first == 4) - 0.6) < 0.05 and set(first) <= {4, 5}
    for row, lp in zip(ids, log_prob):
        ended = np.flatnonzero(row == END_ID)
        if len(ended):
            assert (row[ended[0] + 1:] == 0).all()
        steps = row[:ended[0] + 1] if len(ended) else row
        expected = sum(np.log(TRAP[prev][tok] + 1e-9)
                       for prev, tok in zip([START_ID, *steps[:-1]], steps))
        assert lp == pytest.approx(expected, rel=1e-4, abs=1e-4)
    b_then_end = (ids[:, 0] == 5) & (ids[:, 1] == END_ID)
    assert abs(b_then_end.mean() - 0.4 * 0.99) < 0.05


def test_sampling_temperature_sharpens_and_refuses_bad_settings():
    tf.random.set_seed(1)
    ids, _ = sample_search(markov_step(TRAP), dummy_state(1), 1, 3, num_samples=400,
                           temperature=0.25)
    assert np.mean(ids.numpy()[:, 0] == 4) > 0.75  # 0.6 / 0.4 at temperature 1
    for bad in ({"num_samples": 0}, {"num_samples": 2, "temperature": 0.0}):
        with pytest.raises(ValueError, match="num_samples"):
            sample_search(markov_step(TRAP), dummy_state(1), 1, 3, **bad)


def test_beam_alternatives_are_every_beam_best_first():
    ids, log_prob, beams, scores = beam_search(markov_step(TRAP), dummy_state(2), 2,
                                               max_new_tokens=8, beam_width=3,
                                               length_penalty=0.7, return_beams=True)
    beams, scores = beams.numpy(), scores.numpy()
    assert beams.shape[:2] == (2, 3) and scores.shape == (2, 3)
    np.testing.assert_array_equal(beams[:, 0], ids.numpy())      # the first is the caption
    assert (np.diff(scores, axis=1) <= 0).all()                    # best first
    assert len({tuple(b) for b in beams[0]}) == 3                 # three different captions
    for beam, score in zip(beams[0], scores[0]):                   # length-normalised log-prob
        ended = np.flatnonzero(beam == END_ID)
        steps = beam[:ended[0] + 1] if len(ended) else beam
        total = sum(np.log(TRAP[prev][tok] + 1e-9)
                    for prev, tok in zip([START_ID, *steps[:-1]], steps))
        assert score == pytest.approx(total / len(steps) ** 0.7, rel=1e-4)
