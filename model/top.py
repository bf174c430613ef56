"""The encoder's trainable top: it turns the frozen trunk's conv4_x maps [B, 14, 14, 1024] (the
"conv4" feature kind, model/encoder.py) into the 7x7 map the captioner reads, and trains with the
decoder (`--fine-tune-encoder`, ModelConfig.encoder_top).

- "head", for random-init weights (the built-in data): conv4 standardised per channel with the
  training images' statistics, then Conv2D(64, 1), Conv2D(256, 3, stride 2) and Conv2D(256, 3),
  each followed by BatchNorm and ReLU, [B, 7, 7, 256], trained from the start with the decoder. A random conv5_x
  stage loses what conv4 holds (a shape probe: 0.00-0.77 over epochs through it, 1.00 through
  such a head); without BatchNorm, Adam at the decoder's learning rate kills most of its ReLUs in
  the first epoch (each unit has 9,216 inputs), and at a tenth of it the head learns no shape.
- "conv5", for ImageNet weights or a weights file: ResNet50's own conv5_x stage with the same
  weights, [B, 7, 7, 2048], BatchNorm frozen in inference mode; the usual recipe continues a run
  trained on frozen features (`--init-from`, init_from_run) at a lower learning rate.

The pooled family averages the top's map, the attention family attends over its 49 cells.
"""
import logging

import keras
import numpy as np
import tensorflow as tf

from data.vocabulary import UNK_ID
from model.base import FeatureStandardizer, chunked_moments
from model.encoder import EncoderConfig, build_conv5

log = logging.getLogger(__name__)
TOPS = ("head", "conv5")
# (filters, kernel, stride) of each convolution: a 1x1 bottleneck first, since a 3x3 convolution
# of all 1,024 channels cost a training step more than the LSTM.
HEAD_LAYERS = ((64, 1, 1), (256, 3, 2), (256, 3, 1))


def resolve_encoder_top(top: str, weights: str) -> str:
    """ModelConfig.encoder_top for `--fine-tune-encoder` given bare ("auto"): the head for random
    weights, ResNet50's conv5_x stage for ImageNet's or a file's. Others pass unchanged."""
    if top != "auto":
        return top
    return "head" if weights == "random" else "conv5"


class ChannelStandardizer(FeatureStandardizer):
    """(x - mean) / std per channel of [B, H, W, C] maps, statistics over the training images and
    all their locations (the head's convolutions are the same at every location)."""

    def adapt(self, features, rows=None):
        mean, std = chunked_moments(features, rows, (int(features.shape[-1]),))
        if not self.built:
            self.build((None, len(mean)))
        self.mean.assign(mean)
        self.std.assign(std)


class ConvHead(keras.layers.Layer):
    """The "head" top: conv4 maps [B, 14, 14, 1024] -> [B, 7, 7, 256]."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # float32 for the reason model.captioner gives for its FeatureStandardizer.
        self.standardize = ChannelStandardizer(name="standardize", dtype="float32")
        self.convs = [keras.layers.Conv2D(filters, kernel, strides=stride, padding="same",
                                          use_bias=False, name=f"conv{i}")
                      for i, (filters, kernel, stride) in enumerate(HEAD_LAYERS)]
        self.norms = [keras.layers.BatchNormalization(name=f"bn{i}")
                      for i in range(len(HEAD_LAYERS))]

    def call(self, maps, training=False):
        x = self.standardize(tf.cast(maps, tf.float32))
        for conv, norm in zip(self.convs, self.norms):
            x = tf.nn.relu(norm(conv(x), training=training))
        return x

    def adapt(self, features, rows=None):
        self.standardize.adapt(features, rows)


class Conv5Top(keras.layers.Layer):
    """The "conv5" top: ResNet50's conv5_x stage (model.encoder.build_conv5), [B, 14, 14, 1024]
    -> [B, 7, 7, 2048], its BatchNorm always in inference mode."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stage = build_conv5()  # random here; load_encoder_weights or a checkpoint sets them

    def call(self, maps, training=False):
        return self.stage(maps, training=False)

    def load_encoder_weights(self, config: EncoderConfig) -> None:
        self.stage.set_weights(build_conv5(config).get_weights())

    def adapt(self, features, rows=None):
        pass  # nothing learnt from the data before training


TOP_CHANNELS = {"head": HEAD_LAYERS[-1][0], "conv5": 2048}


def word_head(config) -> keras.layers.Layer:
    """Dense(vocabulary) on the top's pooled map: the word loss's logits."""
    head = keras.layers.Dense(config.vocab_size, name="word_head", dtype="float32")
    head.build((None, TOP_CHANNELS[config.encoder_top]))
    return head


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


def build_top(top: str):
    """The top layer named by ModelConfig.encoder_top, or None for ""."""
    if not top:
        return None
    if top not in TOPS:
        raise ValueError(f"encoder_top must be one of {['', *TOPS]}, got {top!r}")
    return ConvHead(name="encoder_top") if top == "head" else Conv5Top(name="encoder_top")


def top_features(captioner, features: np.ndarray, rows, batch_size: int = 64) -> np.ndarray:
    """The top's output for features[rows] as the decoder reads it (pooled for the pooled
    family), float32, computed in batches: what the decoder's own standardiser adapts to."""
    outputs = []
    rows = np.asarray(rows)
    for start in range(0, len(rows), batch_size):
        batch = tf.constant(np.asarray(features[rows[start:start + batch_size]], np.float32))
        outputs.append(np.asarray(captioner.top_output(batch), np.float32))
    return np.concatenate(outputs) if outputs else np.zeros([0], np.float32)


def init_from_run(captioner, run_dir) -> list[str]:
    """Initialises `captioner` from a finished run's best weights (`--init-from RUN`): all of
    them when the architectures agree; otherwise every layer the two share by name and shape
    (a run trained on frozen pooled features gives a conv5-top run its decoder and
    standardiser). Returns the names of the layers copied; refuses a run sharing none."""
    from model.run_dir import load_run  # run_dir imports this stage's modules
    source = load_run(run_dir).load_captioner()
    if source.config.family != captioner.config.family:
        raise ValueError(f"--init-from {run_dir}: that run's captioner is of the "
                         f"{source.config.family} family, this one of the "
                         f"{captioner.config.family} family")
    copied = []
    for layer in captioner.layers:
        match = next((other for other in source.layers if other.name == layer.name), None)
        if match is None or layer.name == "encoder_top":
            continue
        shapes = [tuple(w.shape) for w in layer.weights]
        if shapes and shapes == [tuple(w.shape) for w in match.weights]:
            layer.set_weights(match.get_weights())
            copied.append(layer.name)
    if source.top is not None and captioner.top is not None \
            and source.config.encoder_top == captioner.config.encoder_top:
        captioner.top.set_weights(source.top.get_weights())
        copied.append("encoder_top")
    if not copied:
        raise ValueError(f"--init-from {run_dir}: its captioner shares no layer with this one")
    log.info("initialised from %s: %s", run_dir, ", ".join(copied))
    return copied
