"""The soft-attention captioner (model/attention.py) and the decoder's attention record: the fused
LSTM's conditions, teacher forcing and step-by-step decoding agree, the location embedding tells
cells apart, maps are softmaxes aligned to the caption's words, beam search carries each beam's
maps, the regulariser is in the training loss."""
import numpy as np
import pytest
import tensorflow as tf

from data.vocabulary import END_ID, PAD_ID, START_ID, UNK_ID
from model.attention import AttentionCaptioner
from model.base import MaskedCaptionLoss
from model.captioner import Captioner
from model.decoding import aligned_attention, beam_search, decode_features
from model.families import build_captioner
from model.settings import PRESETS, DecodeConfig, ModelConfig
from model.standardizers import SpatialStandardizer

VOCAB = 20


def small_config(**overrides) -> ModelConfig:
    fields = dict(vocab_size=VOCAB, feature_dim=16, feature_grid=3, embed_dim=8, units=12,
                  attention_units=10, family="attention", normalize_features=True)
    return ModelConfig(**{**fields, **overrides})


def features(n, seed=0, config=None):
    config = config or small_config()
    rng = np.random.default_rng(seed)
    return rng.normal(size=[n, *config.feature_shape]).astype(np.float32)


def test_presets_and_dispatch():
    assert PRESETS["attention"]["model"]["family"] == "attention"
    assert PRESETS["pooled"]["model"]["family"] == PRESETS["seed"]["model"]["family"] == "pooled"
    assert isinstance(build_captioner(small_config()), AttentionCaptioner)
    assert isinstance(build_captioner(small_config(family="pooled")), Captioner)
    assert small_config().attention and not small_config(family="pooled").attention
    assert small_config().feature_shape == (3, 3, 16)
    assert small_config(family="pooled").feature_shape == (16,)
    with pytest.raises(ValueError, match="attention_regularizer"):
        small_config(attention_regularizer=-1.0)
    with pytest.raises(ValueError, match=r"ModelConfig.family must be one of \['pooled', "
                                         r"'attention'\], got 'spatial'"):
        small_config(family="spatial")


def test_the_lstm_meets_cudnns_conditions_and_ignores_padding():
    """Attention comes after the LSTM, so training runs the fused keras LSTM (cuDNN's conditions)
    over the caption; padding after a caption changes none of its logits."""
    model = build_captioner(small_config())
    lstm = model.lstm
    assert lstm.cell.activation.__name__ == "tanh"
    assert lstm.cell.recurrent_activation.__name__ == "sigmoid"
    assert lstm.cell.recurrent_dropout == 0 and not lstm.unroll and lstm.cell.use_bias
    assert model.embedding.mask_zero  # right-padded masks: what cuDNN accepts
    feats = features(2)
    short = np.array([[START_ID, 5, 6], [START_ID, 9, 4]], np.int32)
    padded = np.concatenate([short, np.full([2, 3], PAD_ID, np.int32)], axis=1)
    np.testing.assert_allclose(model({"features": feats, "tokens": padded}).numpy()[:, :3],
                               model({"features": feats, "tokens": short}).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_teacher_forcing_equals_step_by_step_decoding():
    """call() (training) and step() (decoding) run the same weights: logits must agree."""
    model = build_captioner(small_config(dropout=0.2))
    feats = features(4)
    tokens = np.array([[START_ID, 5, 6, 7, 8], [START_ID, 9, 9, 4, 4]] * 2, np.int32)
    logits = model({"features": feats, "tokens": tokens}).numpy()
    state = model.initial_state(tf.constant(feats))
    for t in range(tokens.shape[1]):
        step_logits, state = model.step(tf.constant(tokens[:, t]), state)
        np.testing.assert_allclose(step_logits.numpy(), logits[:, t], rtol=1e-4, atol=1e-5)


def test_the_location_embedding_tells_where_the_model_looked():
    """A context is a weighted sum over locations, so the same content in other cells (here
    mirrored left to right) would give the same captions: the learnt location embedding is
    what lets them say left and right. (No standardiser here: its per-location statistics
    would tell the cells apart too.)"""
    model = build_captioner(small_config(normalize_features=False))
    feats = features(2)
    mirrored = feats[:, :, ::-1, :]
    tokens = np.array([[START_ID, 5, 6, 7]] * 2, np.int32)

    def logits(maps):
        return model({"features": maps, "tokens": tokens}).numpy()

    assert model.locations.trainable and model.locations.shape == (9, 12)
    model.locations.assign(np.zeros([9, 12], np.float32))
    np.testing.assert_allclose(logits(mirrored), logits(feats), rtol=1e-5, atol=1e-6)
    model.locations.assign(np.random.default_rng(0).normal(size=[9, 12]).astype(np.float32))
    assert np.abs(logits(mirrored) - logits(feats)).max() > 1e-2


def test_spatial_standardizer_adapts_in_chunks_like_numpy(monkeypatch):
    import model.standardizers as standardizers
    monkeypatch.setattr(standardizers, "ADAPT_ROWS_PER_CHUNK", 3)  # several chunks, one uneven
    maps = (features(11) * 5 + 2).astype(np.float16)
    rows = [0, 2, 3, 5, 6, 7, 10]
    norm = SpatialStandardizer(dtype="float32")
    norm.adapt(maps, rows=rows)
    cells = maps[rows].astype(np.float64).reshape(len(rows), -1, maps.shape[-1])
    # per location and channel, over images
    assert norm.mean.shape == (9, 16)
    np.testing.assert_allclose(norm.mean.numpy(), cells.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.std.numpy(), cells.std(0), rtol=1e-5)
    standardised = norm(tf.constant(cells, tf.float32)).numpy()
    np.testing.assert_allclose(standardised.mean(0), 0.0, atol=1e-4)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_decoding_records_one_softmax_per_word(method):
    config = small_config()
    model = build_captioner(config)
    decode = DecodeConfig(max_new_tokens=6, beam_width=3)
    feats = tf.constant(features(5, seed=1))
    ids, log_prob = decode_features(model, feats, decode, method)
    ids2, log_prob2, maps = decode_features(model, feats, decode, method, return_attention=True)
    np.testing.assert_array_equal(ids.numpy(), ids2.numpy())  # recording changes nothing
    np.testing.assert_allclose(log_prob.numpy(), log_prob2.numpy(), rtol=1e-6)
    maps = maps.numpy()
    assert maps.shape == (5, 6, 3, 3) and maps.dtype == np.float32
    for row_ids, row_maps in zip(ids.numpy(), maps):
        words = [t for t in row_ids if t > UNK_ID]
        ended = END_ID in row_ids
        n = len(words) + (1 if ended else 0)  # words' rows, then <end>'s
        if ended:
            words = [t for t in row_ids[:list(row_ids).index(END_ID)] if t > UNK_ID]
            n = len(words) + 1
        np.testing.assert_allclose(row_maps[:n].sum(axis=(1, 2)), 1.0, rtol=1e-5)
        assert np.all(row_maps[:n] >= 0)
        assert not row_maps[n:].any()  # zero after <end>


def test_aligned_attention_skips_unk_and_zeroes_after_end():
    steps = np.arange(1, 7, dtype=np.float32)[None, :, None] * np.ones([1, 6, 4], np.float32)
    ids = tf.constant([[5, UNK_ID, 6, END_ID, PAD_ID, PAD_ID]])
    maps = aligned_attention(ids, tf.constant(steps), (2, 2)).numpy()
    assert maps.shape == (1, 6, 2, 2)
    # words 5 and 6 were produced at steps 1 and 3, <end> at step 4; the <unk> step is left out
    assert [float(m[0, 0]) for m in maps[0]] == [1.0, 3.0, 4.0, 0.0, 0.0, 0.0]


def test_beam_search_returns_the_best_beams_state():
    """A state that records every token fed to the step must come back equal to the best beam's
    own sequence: beams reorder their state along with their tokens."""
    table = np.full([7, 7], 1e-3, np.float32)
    table[START_ID] = [0, 0, 0, 0, 0.5, 0.4, 0.1]  # after <start>: 4 (0.5) or 5 (0.4)
    table[4] = [0, 0, 0.3, 0, 0, 0, 0.7]            # 4 wanders to 6
    table[5] = [0, 0, 0.99, 0, 0, 0, 0.01]          # 5 ends: the best caption is "5 <end>"
    table[6] = [0, 0, 0.5, 0, 0, 0, 0.5]
    log_probs = tf.math.log(tf.constant(table) + 1e-9)

    def step(tokens, state):
        fed = state["fed"] + tf.one_hot(state["t"], 5, dtype=tf.int32) * tokens[:, None]
        return tf.gather(log_probs, tokens), {"fed": fed, "t": state["t"] + 1}

    state = {"fed": tf.zeros([2, 5], tf.int32), "t": tf.zeros([2], tf.int32)}
    ids, _, best = beam_search(step, state, 2, 5, beam_width=3, return_state=True)
    for row_ids, fed in zip(ids.numpy(), best["fed"].numpy()):
        assert row_ids[:2].tolist() == [5, END_ID]
        steps = len([t for t in row_ids if t != PAD_ID])
        # fed: <start>, then every token but the last
        assert fed[:steps].tolist() == [START_ID, *row_ids[:steps - 1].tolist()]


@pytest.mark.slow
def test_doubly_stochastic_regulariser_is_part_of_the_training_loss():
    feats = features(6, seed=2)
    tokens = np.array([[START_ID, 5, 6, 7, PAD_ID, PAD_ID]] * 6, np.int32)
    targets = np.array([[5, 6, 7, END_ID, PAD_ID, PAD_ID]] * 6, np.int32)
    inputs = {"features": feats, "tokens": tokens}
    trained, evaluated, penalties = {}, {}, {}
    for weight in (0.0, 2.0):
        tf.keras.utils.set_random_seed(0)  # the same initial weights for both
        model = build_captioner(small_config(dropout=0.0, attention_regularizer=weight))
        model.compile(optimizer="adam", loss=MaskedCaptionLoss())
        evaluated[weight] = model.evaluate(inputs, targets, verbose=0)
        model(inputs, training=True)
        penalties[weight] = sum(float(x) for x in model.losses)
        trained[weight] = float(model.train_on_batch(inputs, targets))
    assert penalties[0.0] == 0.0
    assert penalties[2.0] > 0.05  # 4 real steps over 9 locations: far from 1 each
    # fit's loss is cross-entropy + penalty; inference (evaluate) is cross-entropy alone
    assert trained[2.0] - trained[0.0] == pytest.approx(penalties[2.0], rel=1e-3)
    assert evaluated[0.0] == pytest.approx(evaluated[2.0], rel=1e-5)
