import numpy as np
import pytest
import tensorflow as tf

from model.base import MaskedCaptionLoss
from model.decoding import greedy_search
from model.families import build_captioner
from model.settings import PRESETS, ModelConfig


def test_seed_preset_has_the_original_shapes():
    config = ModelConfig(vocab_size=20013, **PRESETS["seed"]["model"])
    model = build_captioner(config)
    shapes = {w.path: tuple(w.shape) for w in model.weights}
    assert shapes["captioner/image_to_h/kernel"] == (2048, 512)
    assert shapes["captioner/embedding/embeddings"] == (20013, 256)
    assert shapes["captioner/lstm/lstm_cell/kernel"] == (256, 4 * 512)
    assert shapes["captioner/lstm/lstm_cell/recurrent_kernel"] == (512, 4 * 512)
    assert shapes["captioner/to_logits/kernel"] == (512, 20013)
    assert model.image_to_c is None  # c0 = 0
    assert model.image_to_h.activation.__name__ == "relu"
    lstm = model.lstm
    # cuDNN's conditions
    assert lstm.cell.activation.__name__ == "tanh"
    assert lstm.cell.recurrent_activation.__name__ == "sigmoid"
    assert lstm.cell.recurrent_dropout == 0 and not lstm.unroll and lstm.cell.use_bias
    assert PRESETS["seed"]["train"]["learning_rate"] == 1e-3 and PRESETS["seed"]["train"]["batch_size"] == 128


def test_seed_initial_state_has_zero_cell():
    model = build_captioner(ModelConfig(vocab_size=30))
    h, c = model.initial_state(tf.random.normal([2, 2048]))
    assert np.all(c.numpy() == 0) and np.all(h.numpy() >= 0)


def test_step_reproduces_teacher_forced_logits():
    model = build_captioner(ModelConfig(vocab_size=40, image_init_cell=True, dropout=0.3))
    features = tf.random.normal([3, 2048])
    tokens = tf.constant([[1, 5, 6, 7], [1, 8, 0, 0], [1, 9, 10, 0]])
    logits = model({"features": features, "tokens": tokens})
    state = model.initial_state(features)
    for t in range(4):
        step_logits, state = model.step(tokens[:, t], state)
        lengths = (tokens.numpy() != 0).sum(1)
        live = lengths > t  # padded positions are masked in the sequence model
        np.testing.assert_allclose(step_logits.numpy()[live], logits.numpy()[live, t], atol=1e-4)


def test_masked_loss_ignores_pad_and_averages_over_real_tokens():
    logits = tf.random.normal([2, 3, 5])
    targets = tf.constant([[1, 2, 0], [3, 0, 0]])
    loss = MaskedCaptionLoss()(targets, logits)
    log_probs = tf.nn.log_softmax(logits).numpy()
    expected = -(log_probs[0, 0, 1] + log_probs[0, 1, 2] + log_probs[1, 0, 3]) / 3
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_label_smoothing_mixes_in_the_uniform_loss():
    logits = tf.random.normal([1, 1, 4])
    targets = tf.constant([[2]])
    log_probs = tf.nn.log_softmax(logits).numpy()[0, 0]
    expected = 0.9 * -log_probs[2] + 0.1 * -log_probs.mean()
    np.testing.assert_allclose(float(MaskedCaptionLoss(0.1)(targets, logits)), expected, rtol=1e-5)


def test_greedy_through_the_model_picks_the_teacher_forced_argmax():
    """Greedy search through the model's step (test_decoding.py drives it with fake steps) picks at
    every position the word the whole model ranks first after the words it chose, and its log_prob
    is theirs summed: decoding and training run one model."""
    import keras
    keras.utils.set_random_seed(3)
    model = build_captioner(ModelConfig(vocab_size=12))
    features = tf.random.normal([3, 2048], seed=3)
    ids, log_prob = greedy_search(model.step, model.initial_state(features), 3, 7)
    assert ids.shape[0] == 3 and 1 <= ids.shape[1] <= 7 and log_prob.shape == (3,)
    for row, (caption, total) in enumerate(zip(ids.numpy(), log_prob.numpy())):
        ended = np.flatnonzero(caption == 2)  # <end> kept, <pad> (0) after it
        words = caption[:ended[0] + 1] if len(ended) else caption
        assert not caption[len(words):].any()
        tokens = np.concatenate([[1], words[:-1]])[None].astype(np.int32)  # <start> + the prefix
        log_probs = tf.nn.log_softmax(model({"features": features[row:row + 1],
                                             "tokens": tokens})[0]).numpy()
        assert log_probs.argmax(-1).tolist() == words.tolist(), row
        np.testing.assert_allclose(total, log_probs[np.arange(len(words)), words].sum(), rtol=1e-4)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="vocab_size"):
        ModelConfig(vocab_size=0)
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(vocab_size=10, dropout=1.5)


def test_loss_inside_keras_fit_matches_the_masked_mean():
    """With the model's padding mask attached (as in fit), the value must stay the same."""
    model = build_captioner(ModelConfig(vocab_size=9))
    model.compile(optimizer="sgd", loss=MaskedCaptionLoss())
    x = {"features": tf.random.normal([2, 2048]), "tokens": tf.constant([[1, 4, 5], [1, 6, 0]])}
    y = tf.constant([[4, 5, 2], [6, 2, 0]])
    logits = model(x)
    log_probs = tf.nn.log_softmax(logits).numpy()
    expected = -np.mean([log_probs[0, 0, 4], log_probs[0, 1, 5], log_probs[0, 2, 2],
                         log_probs[1, 0, 6], log_probs[1, 1, 2]])
    np.testing.assert_allclose(model.evaluate(x, y, verbose=0), expected, rtol=1e-4)
