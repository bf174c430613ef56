"""The one decoder: batched greedy search, beam search and sampling as explicit tf.while_loops,
and CaptionDecoder, which captions image features with them in process.

Evaluation calls these in a tf.function; export/ puts the very same functions into the SavedModel
(ExportArchive endpoints are traced with autograph off, hence explicit tf.while_loop, no Python
loops over tensors); self-critical training samples its captions with them. Every search takes a
`step_fn(tokens [N], state) -> (logits [N, V], state)` so tests can drive it with a fake
next-token function whose best answer is known.
"""
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from data.captions import clean_caption_tensor
from data.vocabulary import END_ID, PAD_ID, START_ID, UNK_ID
from model.settings import DecodeConfig

NEG_INF = -1e9  # finite, so that -inf + -inf or 0 * -inf never makes a NaN


def greedy_search(step_fn, state, batch_size, max_new_tokens, start_id=START_ID,
                  end_id=END_ID, return_state=False):
    """Returns (ids [B, L] int32 with <end> kept and <pad> after it, log_prob [B] float32), and
    with return_state the decoder state after the last step (what the attention model records).

    Stops when every caption has produced <end>, or after max_new_tokens tokens.
    """
    def most_likely(log_probs):
        return tf.argmax(log_probs, axis=-1, output_type=tf.int32)

    return _token_by_token(step_fn, state, batch_size, max_new_tokens, most_likely, start_id,
                           end_id, return_state)


def sample_search(step_fn, state, batch_size, max_new_tokens, num_samples, temperature=1.0,
                  start_id=START_ID, end_id=END_ID):
    """num_samples captions per image drawn from the model's own distribution (softmax of the
    logits / temperature): (ids [B * num_samples, L], log_prob [B * num_samples]), the samples of
    image i in rows i * num_samples .. i * num_samples + num_samples - 1. log_prob is the model's
    own (temperature 1) log-probability of each sample."""
    if num_samples < 1 or temperature <= 0:
        raise ValueError(f"num_samples must be >= 1 and temperature > 0, got {num_samples}, "
                         f"{temperature}")
    state = tf.nest.map_structure(lambda s: tf.repeat(s, num_samples, axis=0), state)

    def drawn(log_probs):
        return tf.random.categorical(log_probs / temperature, 1, dtype=tf.int32)[:, 0]

    return _token_by_token(step_fn, state, batch_size * num_samples, max_new_tokens, drawn,
                           start_id, end_id)


def _token_by_token(step_fn, state, batch_size, max_new_tokens, pick, start_id=START_ID,
                    end_id=END_ID, return_state=False):
    """The loop greedy search and sampling share: one token per caption and step, chosen by
    pick(log_probs [N, V]) -> [N], until every caption has produced <end>."""
    def not_done(i, tokens, state, finished, log_prob, ids):
        return tf.logical_and(i < max_new_tokens, tf.logical_not(tf.reduce_all(finished)))

    def body(i, tokens, state, finished, log_prob, ids):
        logits, state = step_fn(tokens, state)
        log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32))
        chosen = tf.where(finished, PAD_ID, pick(log_probs))
        gained = tf.gather(log_probs, chosen, batch_dims=1)
        log_prob += tf.where(finished, 0.0, gained)
        finished = tf.logical_or(finished, tf.equal(chosen, end_id))
        return i + 1, chosen, state, finished, log_prob, tf.concat([ids, chosen[:, None]], 1)

    loop_vars = (
        tf.constant(0),
        tf.fill([batch_size], tf.constant(start_id, tf.int32)),
        state,
        tf.zeros([batch_size], tf.bool),
        tf.zeros([batch_size], tf.float32),
        tf.zeros([batch_size, 0], tf.int32),  # ids so far; grows by one column a step
    )
    invariants = (
        tf.TensorShape([]), tf.TensorShape([None]),
        tf.nest.map_structure(lambda s: tf.TensorShape([None]).concatenate(s.shape[1:]), state),
        tf.TensorShape([None]), tf.TensorShape([None]), tf.TensorShape([None, None]),
    )
    _, _, state, _, log_prob, ids = tf.while_loop(not_done, body, loop_vars,
                                                  shape_invariants=invariants)
    return (ids, log_prob, state) if return_state else (ids, log_prob)


def beam_search(step_fn, state, batch_size, max_new_tokens, beam_width=3, length_penalty=0.7,
                start_id=START_ID, end_id=END_ID, return_state=False, return_beams=False):
    """Batched beam search with length normalisation. Returns (ids [B, L], log_prob [B]) of the
    best beam by log_prob / length ** length_penalty, then with return_state that beam's state,
    then with return_beams every beam best first: (ids [B, K, L], normalised scores [B, K]).

    A beam that produced <end> stays in the beam with a fixed score (it may only continue with
    <pad> at no cost); the loop stops at max_new_tokens or when, for every image, every beam has
    ended or no live beam can still beat its best ended one.
    """
    k = beam_width
    # Every state tensor [B, ...] -> [B * K, ...], beams of an image next to each other.
    state = tf.nest.map_structure(lambda s: tf.repeat(s, k, axis=0), state)
    # All K beams start identical: only beam 0 may expand at the first step, else the top-K
    # would be K copies of the same hypothesis.
    first_scores = tf.concat([tf.zeros([batch_size, 1]), tf.fill([batch_size, k - 1], NEG_INF)], 1)

    def normalised(scores, lengths):
        return scores / tf.pow(tf.cast(tf.maximum(lengths, 1), tf.float32), length_penalty)

    def not_done(i, tokens, state, scores, finished, lengths, seqs):
        # An unfinished beam's log-prob only falls, so the best normalised score it can still
        # reach is scores / max_new_tokens ** penalty. An image is done when all its beams ended or
        # none of the live ones can beat its best finished beam.
        best_finished = tf.reduce_max(tf.where(finished, normalised(scores, lengths), NEG_INF), 1)
        reachable = tf.where(finished, NEG_INF,
                             scores / tf.pow(tf.cast(max_new_tokens, tf.float32), length_penalty))
        done = tf.logical_or(tf.reduce_all(finished, 1),
                             tf.reduce_max(reachable, 1) < best_finished)
        return tf.logical_and(i < max_new_tokens, tf.logical_not(tf.reduce_all(done)))

    def body(i, tokens, state, scores, finished, lengths, seqs):
        logits, state = step_fn(tokens, state)
        log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32))
        vocab_size = tf.shape(log_probs)[-1]
        log_probs = tf.reshape(log_probs, [batch_size, k, vocab_size])
        pad_only = tf.one_hot(PAD_ID, vocab_size, on_value=0.0, off_value=NEG_INF)
        log_probs = tf.where(finished[:, :, None], pad_only, log_probs)

        candidates = tf.reshape(scores[:, :, None] + log_probs, [batch_size, k * vocab_size])
        scores, flat_index = tf.math.top_k(candidates, k)        # [B, K] each
        parent = flat_index // vocab_size
        token = flat_index % vocab_size

        was_finished = tf.gather(finished, parent, batch_dims=1)
        lengths = tf.gather(lengths, parent, batch_dims=1) + tf.cast(~was_finished, tf.int32)
        finished = tf.logical_or(was_finished, tf.equal(token, end_id))
        seqs = tf.concat([tf.gather(seqs, parent, batch_dims=1), token[:, :, None]], axis=2)
        rows = tf.reshape(parent + tf.range(batch_size)[:, None] * k, [-1])
        state = tf.nest.map_structure(lambda s: tf.gather(s, rows), state)
        return i + 1, tf.reshape(token, [-1]), state, scores, finished, lengths, seqs

    loop_vars = (
        tf.constant(0),
        tf.fill([batch_size * k], tf.constant(start_id, tf.int32)),
        state,
        first_scores,
        tf.zeros([batch_size, k], tf.bool),
        tf.zeros([batch_size, k], tf.int32),
        tf.zeros([batch_size, k, 0], tf.int32),
    )
    invariants = (
        tf.TensorShape([]), tf.TensorShape([None]),
        tf.nest.map_structure(lambda s: tf.TensorShape([None]).concatenate(s.shape[1:]), state),
        tf.TensorShape([None, k]), tf.TensorShape([None, k]), tf.TensorShape([None, k]),
        tf.TensorShape([None, k, None]),
    )
    _, _, state, scores, _, lengths, seqs = tf.while_loop(not_done, body, loop_vars,
                                                          shape_invariants=invariants)
    ranked = normalised(scores, lengths)
    best = tf.argmax(ranked, axis=1, output_type=tf.int32)
    found = [tf.gather(seqs, best, batch_dims=1), tf.gather(scores, best, batch_dims=1)]
    if return_state:
        # Row j of the state belongs to beam j of seqs (body gathers it by parent with the tokens).
        def of_best_beam(s):
            beams = tf.reshape(s, tf.concat([[batch_size, k], tf.shape(s)[1:]], 0))
            return tf.ensure_shape(tf.gather(beams, best, batch_dims=1), [None, *s.shape[1:]])
        found.append(tf.nest.map_structure(of_best_beam, state))
    if return_beams:
        ranked, order = tf.math.top_k(ranked, k)  # sorted, best first (ties: the lower beam)
        found += [tf.gather(seqs, order, batch_dims=1), ranked]
    return tuple(found)


def decode_features(model, features, config: DecodeConfig, method="greedy",
                    return_attention=False, num_samples=1, return_beams=False):
    """Captioner + image features ([B, F] pooled, [B, H, W, F] for the attention model) ->
    (ids [B, L], log_prob [B]) by greedy or beam search; method "sample" draws num_samples
    captions per image instead (ids [B * num_samples, L], see sample_search).

    return_attention (attention models only) adds the maps aligned to the caption's words,
    float32 [B, max_new_tokens, H, W] (see aligned_attention): the model's step records each
    step's weights in the decoder state, so beam search carries them along with its beams.
    return_beams (beam search only) then adds every beam, best first: ids [B, beam_width, L]
    and their length-normalised scores [B, beam_width] (beam 0 is the returned caption).
    """
    if method not in ("greedy", "beam", "sample"):
        raise ValueError(f"decoding method must be 'greedy', 'beam' or 'sample', got {method!r}")
    if return_beams and method != "beam":
        raise ValueError(f"return_beams needs method 'beam' (only beam search keeps several "
                         f"captions), got {method!r}")
    batch_size = tf.shape(features)[0]
    state = model.initial_state(features)
    if method == "sample":
        return sample_search(model.step, state, batch_size, config.max_new_tokens, num_samples)
    if return_attention:
        state = model.recording_state(state, config.max_new_tokens)
    if method == "greedy":
        found = greedy_search(model.step, state, batch_size, config.max_new_tokens,
                              return_state=return_attention)
    else:
        found = beam_search(model.step, state, batch_size, config.max_new_tokens,
                            config.beam_width, config.length_penalty,
                            return_state=return_attention, return_beams=return_beams)
    if not return_attention:
        return found
    ids, log_prob, state, *beams = found
    grid = (model.config.feature_grid,) * 2  # the attended map's, not the input's (conv4: 14x14)
    return (ids, log_prob, aligned_attention(ids, state["attention"], grid), *beams)


def aligned_attention(ids, attention, grid):
    """Per-step maps [B, M, H*W] -> per-word maps [B, M, H, W], the served `attention` output.

    Row i < n (n = words of the caption) is the map of the step that produced the caption's
    word i, row n that of <end>; later rows are zero. Steps whose token the caption drops
    (<unk>, or <pad> produced before <end>) are left out, so rows and words stay aligned.
    """
    ids = tf.cast(ids, tf.int32)
    ended_before = tf.cumsum(tf.cast(tf.equal(ids, END_ID), tf.int32), axis=1, exclusive=True) > 0
    keep = tf.logical_and(tf.logical_not(ended_before),
                          tf.logical_or(ids > UNK_ID, tf.equal(ids, END_ID)))
    steps = tf.shape(ids)[1]
    rows = tf.ragged.boolean_mask(attention[:, :steps], keep)
    max_rows, cells = attention.shape[1], attention.shape[2]
    dense = rows.to_tensor(0.0, shape=[None, max_rows, cells])
    return tf.reshape(tf.cast(dense, tf.float32), [-1, max_rows, grid[0], grid[1]])


def words_table(tokens=None, vocab_file=None) -> tf.lookup.StaticHashTable:
    """id -> word lookup, from a token list (evaluation) or the vocab.txt file (export: the file
    then travels into the SavedModel's assets/)."""
    if vocab_file is not None:
        initializer = tf.lookup.TextFileInitializer(
            vocab_file, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
            tf.string, tf.lookup.TextFileIndex.WHOLE_LINE)
    else:
        initializer = tf.lookup.KeyValueTensorInitializer(
            tf.range(len(tokens), dtype=tf.int64), tf.constant(list(tokens), tf.string))
    return tf.lookup.StaticHashTable(initializer, default_value="")


def ids_to_captions(ids, table):
    """ids [B, L] -> captions [B] (or beams [B, K, L] -> [B, K]): special tokens (<pad>, <start>,
    <end>, <unk>) dropped, words looked up, joined, and passed through the one cleaning rule."""
    ids = tf.cast(ids, tf.int64)
    shape = tf.shape(ids)
    flat = tf.reshape(ids, [tf.reduce_prod(shape[:-1]), shape[-1]])  # one row per caption
    words = tf.ragged.boolean_mask(table.lookup(flat), flat > UNK_ID)
    captions = clean_caption_tensor(tf.strings.reduce_join(words, axis=-1, separator=" "))
    return tf.reshape(captions, shape[:-1])


class CaptionDecoder:
    """In-process captions of image features through the one in-graph decoder, traced once per
    method for a captioner: evaluation and each epoch's validation reuse it (a tf.function made
    per call would trace the decoding loops again every time)."""

    def __init__(self, captioner, tokens, decode: DecodeConfig, feature_shape):
        self.captioner, self.decode = captioner, decode
        self.table = words_table(tokens=tokens)
        self.spec = tf.TensorSpec([None, *feature_shape], tf.float32)
        self._traced = {}

    def _function(self, method: str, return_attention: bool):
        key = (method, return_attention)
        if key not in self._traced:
            @tf.function(input_signature=[self.spec])
            def run(batch):
                ids, log_prob, *maps = decode_features(self.captioner, batch, self.decode,
                                                       method, return_attention)
                return (ids_to_captions(ids, self.table), log_prob, *maps)
            self._traced[key] = run
        return self._traced[key]

    def tracing_counts(self) -> dict:
        """{(method, return_attention): times traced}: once each, however often it is called."""
        return {key: run.experimental_get_tracing_count() for key, run in self._traced.items()}

    def __call__(self, features: np.ndarray, method="greedy", batch_size=64, progress=True,
                 return_attention=False):
        """(captions list[str], log_probs np.ndarray [n]) for features [n, ...], plus with
        return_attention the per-word maps [n, max_new_tokens, 7, 7] (attention models)."""
        run = self._function(method, return_attention)
        captions, log_probs, attention = [], [], []
        starts = range(0, len(features), batch_size)
        for start in tqdm(starts, desc=f"{method} decoding", unit="batch", disable=not progress):
            batch = np.asarray(features[start:start + batch_size], np.float32)  # float16 caches
            text, log_prob, *maps = run(tf.constant(batch))
            captions += [t.decode("utf-8") for t in text.numpy()]
            log_probs.append(log_prob.numpy())
            attention += [m.numpy() for m in maps]
        log_probs = np.concatenate(log_probs) if log_probs else np.zeros([0], np.float32)
        if not return_attention:
            return captions, log_probs
        grid = tuple(self.spec.shape[1:3])
        empty = np.zeros([0, self.decode.max_new_tokens, *grid], np.float32)
        return captions, log_probs, (np.concatenate(attention) if attention else empty)


def caption_features(captioner, tokens, features: np.ndarray, decode: DecodeConfig,
                     method="greedy", batch_size=64, progress=True, return_attention=False):
    """One call of a CaptionDecoder made for it: captions of features [n, F] (or [n, 7, 7, F]
    for the attention model). Returns (captions, log_probs [n]), plus with return_attention the
    per-word maps [n, max_new_tokens, 7, 7]."""
    decoder = CaptionDecoder(captioner, tokens, decode, features.shape[1:])
    return decoder(features, method, batch_size, progress, return_attention)
