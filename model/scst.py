"""Self-critical sequence training (Rennie et al. 2017): fine-tune a trained captioner on CIDEr-D.

Per batch of images: draw `samples` captions per image from the model's own distribution (the
decoder's sampling search, model/decoding.py), score each with CIDEr-D against that image's
references (model/cider.py, training-split document frequencies, <end> counted), and step along
the policy gradient of the samples' log-probabilities weighted by reward - baseline.

Baseline: the mean reward of the image's OTHER samples (as in ruotianluo/self-critical.pytorch's
"new SCST"), not the greedy caption's (the paper's). It needs no extra greedy decode per batch,
is unbiased (it does not depend on the sample it judges) and centres each image's rewards, so an
image whose captions all score alike teaches nothing either way.

The step runs inside `keras fit` (`enable` installs a SelfCritical step, which
CaptionerBase.train_step runs instead of cross-entropy's), so checkpoints, BackupAndRestore, the
progress bar and history.csv work as in cross-entropy training; `ValidationCider` adds the
validation CIDEr-D that checkpointing and early stopping watch.
"""
import keras
import numpy as np
import tensorflow as tf

from data.vocabulary import PAD_ID, START_ID
from model.cider import CiderD, CiderReferences
from model.decoding import CaptionDecoder, decode_features
from model.metrics import cider_d
from model.settings import DecodeConfig, ScstConfig


def policy_gradient_loss(log_probs, ids, advantage):
    """-(advantage x log-probability of each sampled token), averaged over the real tokens
    (up to and including <end>). log_probs [N, L, V], ids [N, L], advantage [N]."""
    chosen = tf.gather(log_probs, ids, batch_dims=2)
    real = tf.cast(tf.not_equal(ids, PAD_ID), log_probs.dtype)
    weighted = tf.cast(advantage, log_probs.dtype)[:, None] * chosen * real
    return -tf.reduce_sum(weighted) / tf.maximum(tf.reduce_sum(real), 1.0)


class SelfCritical:
    """The self-critical training step (a model.base.TrainStep): CaptionerBase.train_step runs
    it once `enable` has installed it."""

    def __init__(self, reward: CiderD, decode: DecodeConfig, samples: int):
        self.reward, self.decode, self.samples = reward, decode, samples
        self.mean_reward = keras.metrics.Mean(name="reward")  # an epoch's, logged as "reward"
        self.metrics = [self.mean_reward]

    def __call__(self, model, data) -> dict:
        """One optimiser step; returns the logs (loss, mean reward of the samples)."""
        features, references = data
        k = self.samples
        ids, _ = decode_features(model, features, self.decode, "sample", num_samples=k)
        ids = tf.stop_gradient(ids)
        rewards = tf.reshape(tf.cast(self.reward(ids, tf.repeat(references, k, axis=0)),
                                     tf.float32), [-1, k])
        baseline = (tf.reduce_sum(rewards, 1, keepdims=True) - rewards) / (k - 1)
        advantage = tf.reshape(rewards - baseline, [-1])
        inputs = tf.concat([tf.fill([tf.shape(ids)[0], 1], START_ID), ids[:, :-1]], axis=1)
        # An image-major batch: the image part (the encoder's top, the annotations) runs once
        # per image, not once per sample, as in cross-entropy training (data.pipeline).
        image_index = tf.repeat(tf.range(tf.shape(features)[0]), k)
        with tf.GradientTape() as tape:
            # No dropout: the gradient is of the policy that drew the samples.
            logits = model({"features": features, "tokens": inputs, "image_index": image_index},
                           training=False)
            loss = policy_gradient_loss(tf.nn.log_softmax(tf.cast(logits, tf.float32)), ids,
                                        advantage)
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = model.optimizer.scale_loss(loss / replicas)  # gradients summed over replicas
        gradients = tape.gradient(scaled, model.trainable_weights)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_weights))
        model._loss_tracker.update_state(loss)  # Keras' own "loss" mean, reset every epoch
        self.mean_reward.update_state(tf.reduce_mean(rewards))
        return {"loss": model._loss_tracker.result(), "reward": self.mean_reward.result()}


def enable(model, references: CiderReferences, decode: DecodeConfig, config: ScstConfig) -> None:
    """Makes model.fit train self-critically on batches of (features [B, ...], reference token
    ids [B, R, L]) (data.pipeline.image_batches)."""
    model.train_step_override = SelfCritical(CiderD(references), decode, config.samples)


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
            self.decoder = CaptionDecoder(model, self.tokens, self.decode,
                                          self.features.shape[1:])
        captions, _ = self.decoder(self.features, progress=False)
        return cider_d(self.references, captions)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["val_cider_d"] = self.score(self.model)
