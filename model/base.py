"""What every captioner shares: the training losses, the logits' dtype under mixed precision, and
CaptionerBase (image-major batches, the encoder's trainable top and the word loss as layers its
family passes in, a training step fit may run instead of cross-entropy's, Keras workarounds,
build_for). Both model families (model/captioner.py, model/attention.py) build on this module;
model/families.py picks the family; their settings are model/settings.py's ModelConfig.
"""
from typing import Protocol

import keras
import numpy as np
import tensorflow as tf

from data.vocabulary import UNK_ID
from model.settings import ModelConfig


class TrainStep(Protocol):
    """A training step keras fit runs instead of the cross-entropy one (model.scst.SelfCritical,
    set by model.scst.enable)."""
    metrics: list  # logged, and reset every epoch, with the model's own

    def __call__(self, model: keras.Model, data) -> dict:
        """One optimiser step on a batch; returns the logs."""


def logits_dtype() -> str | None:
    """None (follow the global policy) under mixed_bfloat16, else float32."""
    return None if keras.mixed_precision.global_policy().name == "mixed_bfloat16" else "float32"


class CaptionerBase(keras.Model):
    """What both model families share: image-major batches, the encoder's trainable top and its
    word head (layers of model/top.py the family passes to set_config), a training step that
    replaces cross-entropy's (train_step_override), Keras 3.15 workarounds for multi-worker fit,
    and build_for. Subclasses call set_config and define initial_state, call and step."""

    train_step_override: TrainStep | None = None  # model.scst.enable sets one
    image_trunk = None  # set by train_from_images: the frozen trunk run inside the step

    def set_config(self, config: ModelConfig, top=None, word_head=None) -> None:
        """top: the encoder's trainable top (None: the model reads frozen features); word_head:
        the word loss's head on its pooled map (None: no word loss). model.top.top_layers makes
        both from the config."""
        self.config = config
        self.top = top
        self.word_head = word_head

    def input_features(self, inputs):
        """inputs["features"], or the frozen trunk's conv4 maps of inputs["images"] (decoded
        images: model.features.TrainingFeed with train_from_images)."""
        if "images" not in inputs:
            return inputs["features"]
        if self.image_trunk is None:
            raise ValueError("this captioner reads features; images need the frozen trunk "
                             "(model.features.TrainingFeed.prepare with train_from_images)")
        return tf.stop_gradient(keras.ops.cast(self.image_trunk(inputs["images"]), "float32"))

    def top_output(self, features, training=False, words=None):
        """What the decoder reads of an image: its features, or for a run with a top that
        top's map of its conv4 features (averaged over the grid, in float32, for the pooled
        family). words: (tokens [N, T], image_index [N] or None) of a training batch, for the
        word loss (ModelConfig.word_loss)."""
        if self.top is None:
            return features
        maps = self.top(features, training=training)
        pooled = keras.ops.mean(keras.ops.cast(maps, "float32"), axis=(1, 2))
        if training and words is not None and self.word_head is not None:
            loss = word_presence_loss(self.word_head(pooled), *words)
            self.add_loss(self.config.word_loss_weight * loss)
        return maps if self.config.attention else pooled

    def lstm_step(self, tokens, h, c):
        """One word through the training LSTM's cell (both families' `lstm`, inference only):
        tokens [N] int, (h, c) -> (output, (h, c))."""
        # Gather the embedding rows directly: calling the layer would attach a mask the cell ignores.
        embedded = tf.gather(self.embedding.embeddings, tokens)
        return self.lstm.cell(embedded, [h, c], training=False)

    @staticmethod
    def per_caption(state, image_index):
        """The decoder state of each caption of an image-major batch (data.pipeline), where
        the image part ran once per image; unchanged for a batch of one row per caption."""
        if image_index is None:
            return state
        return tf.nest.map_structure(lambda value: tf.gather(value, image_index), state)

    def adapt(self, features, rows) -> None:
        """Sets what is learnt from the training images' features[rows] before training: the
        top's statistics, then the decoder's standardiser, on what it reads."""
        if self.top is not None:
            self.top.adapt(features, rows)
        if self.feature_norm is None:
            return
        if self.top is not None:
            features, rows = self.top_outputs(features, rows), None
        if features.ndim > 2:  # maps: per location and channel, read in chunks
            self.feature_norm.adapt(features, rows=rows)
        else:
            self.feature_norm.adapt(features if rows is None else features[rows])

    def top_outputs(self, features: np.ndarray, rows, batch_size: int = 64) -> np.ndarray:
        """The top's output for features[rows] as the decoder reads it (pooled for the pooled
        family), float32, computed in batches: what the decoder's own standardiser adapts to."""
        outputs = []
        rows = np.asarray(rows)
        for start in range(0, len(rows), batch_size):
            batch = tf.constant(np.asarray(features[rows[start:start + batch_size]], np.float32))
            outputs.append(np.asarray(self.top_output(batch), np.float32))
        return np.concatenate(outputs) if outputs else np.zeros([0], np.float32)

    @property
    def metrics(self):
        extra = self.train_step_override.metrics if self.train_step_override else []
        return super().metrics + extra  # Keras resets and logs these every epoch

    # --- Keras 3.15 under MultiWorkerMirroredStrategy: two workarounds, found by running it ----
    def train_step(self, data):
        if self.train_step_override is not None:
            return self._logs_for_multi_worker(self.train_step_override(self, data))
        return self._logs_for_multi_worker(super().train_step(data))

    def test_step(self, data):
        return self._logs_for_multi_worker(super().test_step(data))

    def _logs_for_multi_worker(self, logs):
        """With several workers Keras averages each replica's logs by strategy.reduce(MEAN,
        axis=0), which fails on scalar metrics ("Invalid reduction dimension 0 for input with 0
        dimensions"): give them that axis. The reduction returns scalars again."""
        if not self._multi_worker():
            return logs
        return tf.nest.map_structure(lambda value: tf.reshape(value, [1]), logs)

    def _multi_worker(self) -> bool:
        return self.distribute_strategy.extended._in_multi_worker_mode()

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras 3.15's fit all-reduces the first (dict) batch across replicas just to learn its
        shapes; MultiWorkerMirroredStrategy cannot reduce a dict ("Attempt to convert a value
        ({'features': PerReplica...}) ... to a Tensor"). This worker's own copy of the batch has
        the same shapes and needs no communication."""
        if iterator is not None and self._multi_worker():
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda value: self.distribute_strategy.experimental_local_results(value)[0],
                    next(batches))
                break
            iterator = None
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def build_for(self, batch_size=2, length=3):
        """Creates every weight (including optional layers) by running a tiny dummy batch."""
        self({"features": tf.zeros([batch_size, *self.config.feature_shape]),
              "tokens": tf.ones([batch_size, length], tf.int32)})
        return self


class MaskedCaptionLoss(keras.losses.Loss):
    """Cross-entropy over real tokens only (targets == 0 are <pad>), with optional label
    smoothing, averaged over the number of real tokens in the batch (not the padded area),
    like PyTorch's CrossEntropyLoss(ignore_index=pad).

    Each token's share is divided by the real-token count here and the reduction is a plain sum,
    so the value is right whether or not Keras also applies the output's padding mask."""

    def __init__(self, label_smoothing=0.0, name="masked_caption_loss", **kwargs):
        kwargs.setdefault("reduction", "sum")
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.int32)
        log_probs = tf.nn.log_softmax(tf.cast(y_pred, tf.float32))
        nll = -tf.gather(log_probs, y_true, batch_dims=2)
        if self.label_smoothing:
            smooth = -tf.reduce_mean(log_probs, axis=-1)
            nll = (1.0 - self.label_smoothing) * nll + self.label_smoothing * smooth
        real = tf.cast(tf.not_equal(y_true, 0), nll.dtype)
        return nll * real / tf.maximum(tf.reduce_sum(real), 1.0)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def word_presence_loss(logits, tokens, image_index=None):
    """Mean binary cross-entropy of which words (no special tokens) any caption of each image
    uses: logits [B, V]; tokens [N, T] of N captions; image_index [N], the image of each caption
    (None: caption i is image i's only one)."""
    count, steps = tf.shape(logits)[0], tf.shape(tokens)[1]
    if image_index is None:
        image_index = tf.range(tf.shape(tokens)[0])
    ids = tf.reshape(tf.cast(tokens, tf.int32), [-1])
    where = tf.stack([tf.repeat(tf.cast(image_index, tf.int32), steps), ids], axis=1)
    present = tf.tensor_scatter_nd_max(tf.zeros([count, tf.shape(logits)[1]]), where,
                                       tf.cast(ids > UNK_ID, tf.float32))
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(present,
                                                                  tf.cast(logits, tf.float32)))
