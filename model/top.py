"""The encoder's trainable top: it turns the frozen trunk's conv4_x maps [B, 14, 14, 1024] (the
"conv4" feature kind, model/encoder.py) into the 7x7 map the captioner reads, and trains with the
decoder (`--fine-tune-encoder`, ModelConfig.encoder_top). top_layers makes the layers a family
passes to CaptionerBase.set_config: the top, and the head on its pooled map whose logits the word
loss scores (model.base.word_presence_loss).

- "head", for random-init weights (the built-in data): conv4 standardised per channel with the
  training images' statistics, then Conv2D(64, 1), Conv2D(256, 3, stride 2) and Conv2D(256, 3),
  each followed by BatchNorm and ReLU, [B, 7, 7, 256], trained from the start with the decoder.
  Not a random conv5_x stage: that loses the shapes conv4 holds; BatchNorm: without it, Adam at
  the decoder's learning rate kills most of its ReLUs, and at a lower rate the head learns no
  shape (docs/training.md#fine-tuning-the-encoders-top).
- "conv5", for ImageNet weights or a weights file: ResNet50's own conv5_x stage with the same
  weights, [B, 7, 7, 2048], BatchNorm frozen in inference mode; the usual recipe continues a run
  trained on frozen features (`--init-from`, model.train.init_from_run) at a lower learning rate.

The pooled family averages the top's map, the attention family attends over its 49 cells.
"""
import keras
import tensorflow as tf

from model.encoder import build_conv5
from model.settings import EncoderConfig, ModelConfig
from model.standardizers import ChannelStandardizer

TOPS = ("head", "conv5")
# (filters, kernel, stride) of each convolution: a 1x1 bottleneck first, since a 3x3 convolution
# of all 1,024 channels cost a training step more than the LSTM.
HEAD_LAYERS = ((64, 1, 1), (256, 3, 2), (256, 3, 1))


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


def top_layers(config: ModelConfig) -> tuple:
    """(the top layer named by config.encoder_top, or None for ""; its word head, or None
    without a word loss): what CaptionerBase.set_config takes."""
    if not config.encoder_top:
        return None, None
    if config.encoder_top not in TOPS:
        raise ValueError(f"encoder_top must be one of {['', *TOPS]}, got {config.encoder_top!r}")
    top = (ConvHead(name="encoder_top") if config.encoder_top == "head"
           else Conv5Top(name="encoder_top"))
    if not config.word_loss_weight:
        return top, None
    # Dense itself, not a subclass: a weights file names a model's layers by their classes.
    word_head = keras.layers.Dense(config.vocab_size, name="word_head", dtype="float32")
    word_head.build((None, TOP_CHANNELS[config.encoder_top]))
    return top, word_head
