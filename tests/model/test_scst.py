"""Self-critical training through keras fit: the policy-gradient loss by hand, and a small
captioner that learns to say what each image's references say."""
import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

from data.pipeline import image_batches
from data.vocabulary import SPECIAL_TOKENS
from model import scst
from model.cider import CiderD, cider_references
from model.decoding import decode_features
from model.families import build_captioner
from model.settings import FAMILIES, DecodeConfig, ModelConfig, ScstConfig

WORDS = ["red", "blue", "green", "circle", "square", "a", "big", "small"]
TOKENS = list(SPECIAL_TOKENS) + WORDS
# Four "images" (one-hot features), each with references that name its own colour and shape.
CAPTIONS = [["a red circle", "a big red circle", "red circle"],
            ["a blue square", "a small blue square", "blue square"],
            ["a green circle", "a green circle", "small green circle"],
            ["a red square", "a big red square", "red square"]]


def test_policy_gradient_loss_by_hand():
    rng = np.random.default_rng(0)
    log_probs = np.log(rng.dirichlet(np.ones(5), size=(3, 4))).astype(np.float32)  # [N, L, V]
    ids = np.array([[4, 2, 0, 0], [3, 3, 4, 2], [2, 0, 0, 0]])
    advantage = np.array([0.5, -1.0, 2.0], np.float32)
    total, count = 0.0, 0
    for n in range(3):
        for t in range(4):
            if ids[n, t]:
                total += advantage[n] * log_probs[n, t, ids[n, t]]
                count += 1
    got = scst.policy_gradient_loss(tf.constant(log_probs), tf.constant(ids),
                                    tf.constant(advantage))
    assert float(got) == pytest.approx(-total / count, rel=1e-6)


def test_needs_two_samples():
    with pytest.raises(ValueError, match=">= 2 samples"):
        ScstConfig(samples=1)


def small_captioner(family="pooled"):
    keras.utils.set_random_seed(0)
    config = ModelConfig(vocab_size=len(TOKENS), feature_dim=4, embed_dim=16, units=32,
                         family=family, feature_grid=2, attention_units=16)
    return build_captioner(config)


def image_features(family) -> np.ndarray:
    """One-hot features per image: [4, 4] pooled, the same vector at each of 2x2 locations for
    the attention family."""
    features = np.eye(4, dtype=np.float32)
    return features if family == "pooled" else np.tile(features[:, None, None], (1, 2, 2, 1))


def greedy_cider(model, features, references) -> float:
    ids, _ = decode_features(model, tf.constant(features), DecodeConfig(max_new_tokens=6))
    return float(tf.reduce_mean(CiderD(references)(ids, references.tokens)))


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_fit_raises_the_reward_and_logs_like_cross_entropy_training(tmp_path, family):
    features = image_features(family)
    references = cider_references(CAPTIONS, TOKENS)
    model = small_captioner(family)
    before = greedy_cider(model, features, references)
    decode = DecodeConfig(max_new_tokens=6)
    scst.enable(model, references, decode, ScstConfig(samples=6))
    model.compile(optimizer=keras.optimizers.Adam(2e-2))
    history_file = tmp_path / "history.csv"
    weights = tmp_path / "best.weights.h5"
    validation = scst.ValidationCider(features, CAPTIONS, TOKENS, decode)
    data = image_batches(features, [0, 1, 2, 3], references.tokens, batch_size=4, seed=0)
    history = model.fit(data.repeat(20), epochs=8, verbose=0, callbacks=[
        validation,
        keras.callbacks.ModelCheckpoint(str(weights), monitor="val_cider_d", mode="max",
                                        save_best_only=True, save_weights_only=True),
        keras.callbacks.CSVLogger(str(history_file))]).history
    after = greedy_cider(model, features, references)
    assert history["reward"][-1] > history["reward"][0] + 2.0  # from random init: ~0.7 -> ~5
    assert after > before + 2.0 and max(history["val_cider_d"]) > 2.0
    with open(history_file) as f:
        assert set(next(csv.reader(f))) == {"epoch", "loss", "reward", "val_cider_d"}
    fresh = small_captioner(family)  # the checkpoint is a plain captioner's weights: the best epoch's
    fresh.load_weights(weights)
    # Validation decoded every epoch through one traced function, not one per epoch.
    assert validation.decoder.tracing_counts() == {("greedy", False): 1}
    assert validation.score(fresh) == pytest.approx(max(history["val_cider_d"]), abs=1e-9)


def test_image_batches_pair_features_with_their_references():
    references = cider_references(CAPTIONS, TOKENS)
    features = np.arange(12, dtype=np.float32).reshape(6, 2)
    rows = [5, 0, 3, 1]
    seen = {}
    for batch, refs in image_batches(features, rows, references.tokens, batch_size=3):
        for f, r in zip(batch.numpy(), refs.numpy()):
            seen[int(f[0])] = r
    assert sorted(seen) == [0, 2, 6, 10]
    for image, row in enumerate(rows):
        np.testing.assert_array_equal(seen[int(features[row, 0])], references.tokens[image])
    with pytest.raises(ValueError, match="beyond the feature matrix"):
        image_batches(features, [6], references.tokens[:1], batch_size=1)
