"""Self-critical sequence training (Rennie et al. 2017): fine-tune a trained captioner on CIDEr-D.

Per batch of images: draw `samples` captions per image from the model's own distribution (the
decoder's sampling search, model/decoding.py), score each with CIDEr-D against that image's
references (model/cider.py, training-split document frequencies, <end> counted), and step along
the policy gradient of the samples' log-probabilities weighted by reward - baseline.

Baseline: the mean reward of the image's OTHER samples (as in ruotianluo/self-critical.pytorch's
"new SCST"), not the greedy caption's (the paper's). It needs no extra greedy decode per batch,
is unbiased (it does not depend on the sample it judges) and centres each image's rewards, so an
image whose captions all score alike teaches nothing either way.

The step runs inside `keras fit` (CaptionerBase.train_step calls `self_critical_step` once
`enable` has been called), so checkpoints, BackupAndRestore, the progress bar and history.csv
work as in cross-entropy training; `ValidationCider` adds the validation CIDEr-D that
checkpointing and early stopping watch.
"""
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from data.flags import setting
from data.vocabulary import PAD_ID, START_ID
from model.cider import CiderD, CiderReferences
from model.decoding import DecodeConfig, decode_features
from model.metrics import cider_d


@dataclasses.dataclass
class ScstConfig:
    samples: int = setting(5, "self-critical stage: captions sampled per image; each one's "
                           "baseline is the mean reward of the others")

    def __post_init__(self):
        if self.samples < 2:
            raise ValueError(f"self-critical training needs >= 2 samples per image (the "
                             f"baseline is the other samples' mean), got {self.samples}")


# What a self-critical stage changes in the recipe of the run it starts from (TrainConfig fields;
# flags still override them). batch_size counts images, each with ScstConfig.samples captions.
# Adam at 5e-5, constant, as self-critical fine-tuning is usually run on COCO and Flickr30k; on the
# built-in data validation CIDEr-D was still rising after 4 epochs at it (docs/training.md).
RECIPE = {"learning_rate": 5e-5, "lr_schedule": "constant", "batch_size": 50, "epochs": 10,
          "patience": 3, "label_smoothing": 0.0, "clipnorm": 5.0}
# A short stage, the demo's: 3 epochs at 4x the recipe's rate gain more validation CIDEr-D in
# their time than the recipe's rate does (docs/attention.md#measured).
SHORT_STAGE = {"epochs": 3, "learning_rate": 2e-4}


@dataclasses.dataclass
class SelfCritical:
    """What CaptionerBase.train_step needs to train self-critically (see `enable`)."""
    reward: CiderD
    decode: DecodeConfig
    samples: int
    mean_reward: keras.metrics.Mean  # an epoch's mean sample reward, in the logs as "reward"


def enable(model, references: CiderReferences, decode: DecodeConfig, config: ScstConfig) -> None:
    """Makes model.fit train self-critically on batches of (features [B, ...], reference token
    ids [B, R, L]) (data.pipeline.image_batches)."""
    model.self_critical = SelfCritical(CiderD(references), decode, config.samples,
                                       keras.metrics.Mean(name="reward"))


def policy_gradient_loss(log_probs, ids, advantage):
    """-(advantage x log-probability of each sampled token), averaged over the real tokens
    (up to and including <end>). log_probs [N, L, V], ids [N, L], advantage [N]."""
    chosen = tf.gather(log_probs, ids, batch_dims=2)
    real = tf.cast(tf.not_equal(ids, PAD_ID), log_probs.dtype)
    weighted = tf.cast(advantage, log_probs.dtype)[:, None] * chosen * real
    return -tf.reduce_sum(weighted) / tf.maximum(tf.reduce_sum(real), 1.0)


def self_critical_step(model, data):
    """One optimiser step; returns the logs (loss, mean reward of the samples)."""
    settings = model.self_critical
    features, references = data
    k = settings.samples
    ids, _ = decode_features(model, features, settings.decode, "sample", num_samples=k)
    ids = tf.stop_gradient(ids)
    rewards = tf.reshape(tf.cast(settings.reward(ids, tf.repeat(references, k, axis=0)),
                                 tf.float32), [-1, k])
    baseline = (tf.reduce_sum(rewards, 1, keepdims=True) - rewards) / (k - 1)
    advantage = tf.reshape(rewards - baseline, [-1])
    inputs = tf.concat([tf.fill([tf.shape(ids)[0], 1], START_ID), ids[:, :-1]], axis=1)
    repeated = tf.repeat(features, k, axis=0)
    with tf.GradientTape() as tape:
        # No dropout: the gradient is of the policy that drew the samples.
        logits = model({"features": repeated, "tokens": inputs}, training=False)
        loss = policy_gradient_loss(tf.nn.log_softmax(tf.cast(logits, tf.float32)), ids,
                                    advantage)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        scaled = model.optimizer.scale_loss(loss / replicas)  # gradients are summed over replicas
    gradients = tape.gradient(scaled, model.trainable_weights)
    model.optimizer.apply_gradients(zip(gradients, model.trainable_weights))
    model._loss_tracker.update_state(loss)  # Keras' own "loss" mean, reset every epoch
    settings.mean_reward.update_state(tf.reduce_mean(rewards))
    return {"loss": model._loss_tracker.result(), "reward": settings.mean_reward.result()}


class ValidationCider(keras.callbacks.Callback):
    """Adds `val_cider_d` (pycocoevalcap's CIDEr-D of the greedy captions of the validation
    images) to each epoch's logs, decoding through one traced decoder for the whole run. Put it
    before the callbacks that read it (checkpoint, early stopping, CSV log)."""

    def __init__(self, features: np.ndarray, references: list[list[str]], tokens: list[str],
                 decode: DecodeConfig):
        super().__init__()
        self.features, self.references = features, references
        self.tokens, self.decode = tokens, decode
        self.decoder = None

    def score(self, model) -> float:
        if self.decoder is None or self.decoder.captioner is not model:
            # Imported here: model.evaluate imports the model families, which import this module.
            from model.evaluate import CaptionDecoder
            self.decoder = CaptionDecoder(model, self.tokens, self.decode,
                                          self.features.shape[1:])
        captions, _ = self.decoder(self.features, progress=False)
        return cider_d(self.references, captions)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["val_cider_d"] = self.score(self.model)
