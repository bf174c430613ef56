"""The caption decoder: image features -> LSTM initial state -> next-word logits.

Shape of the original ("seed") model, which the `seed` preset reproduces exactly:
    h0 = ReLU(Dense(2048 -> 512)(features)),  c0 = 0
    Embedding(V, 256) -> LSTM(512) -> Dense(V)
Options beyond parity: dropout, an image-initialised c0, feature standardisation, and (in
model/train.py) gradient clipping, label smoothing and a learning-rate schedule.

Training runs the whole sequence through keras.layers.LSTM (cuDNN on a GPU); decoding runs
`step`, which calls the very same LSTM cell weights one token at a time.
"""
import keras
import tensorflow as tf

from model.base import CaptionerBase, logits_dtype
from model.settings import ModelConfig
from model.standardizers import FeatureStandardizer
from model.top import top_layers


class Captioner(CaptionerBase):
    """inputs {"features": [B, F] float, "tokens": [B, T] int (0 = <pad>)} -> logits [B, T, V].
    With an encoder top, features are conv4 maps [B, 14, 14, 1024] and the decoder reads the
    top's map averaged over its grid; an image-major batch adds "image_index" [N] (the image of
    each of N captions) and B counts images."""

    def __init__(self, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.set_config(config, *top_layers(config))
        # float32 under mixed precision too: features differ little between images, so rounding
        # them to 16 bits before the mean is subtracted would drown that difference, for no speed.
        self.feature_norm = (FeatureStandardizer(name="feature_norm", dtype="float32")
                             if config.standardizes_decoder_input else None)
        self.image_to_h = keras.layers.Dense(config.units, activation="relu", name="image_to_h")
        self.image_to_c = (keras.layers.Dense(config.units, activation="tanh", name="image_to_c")
                           if config.image_init_cell else None)
        self.embedding = keras.layers.Embedding(config.vocab_size, config.embed_dim,
                                                mask_zero=True, name="embedding")
        # Defaults tanh/sigmoid, no recurrent dropout, unroll=False: the cuDNN kernel's conditions.
        self.lstm = keras.layers.LSTM(config.units, return_sequences=True, name="lstm")
        self.dropout = keras.layers.Dropout(config.dropout)
        # float32 logits under every policy: softmax/loss need the range. The projection is most
        # of a training step's FLOPs (units x vocab per token), so under mixed_bfloat16 (float32's
        # range already) it multiplies in bfloat16 and call()/step() cast its output to float32.
        self.to_logits = keras.layers.Dense(config.vocab_size, dtype=logits_dtype(),
                                            name="to_logits")

    def initial_state(self, features, training=False, words=None):
        """Image features [B, F] (or conv4 maps) -> LSTM state (h0, c0), each [B, units]."""
        features = self.top_output(features, training, words)
        if self.feature_norm is not None:
            features = self.feature_norm(features)
        h = self.image_to_h(features)
        c = self.image_to_c(features) if self.image_to_c is not None else keras.ops.zeros_like(h)
        return h, c

    def call(self, inputs, training=False):
        words = (inputs["tokens"], inputs.get("image_index"))  # for the word loss
        state = self.initial_state(self.input_features(inputs), training=training, words=words)
        h, c = self.per_caption(state, inputs.get("image_index"))
        embedded = self.dropout(self.embedding(inputs["tokens"]), training=training)
        outputs = self.lstm(embedded, initial_state=[h, c], training=training)
        return tf.cast(self.to_logits(self.dropout(outputs, training=training)), tf.float32)

    def step(self, tokens, state):
        """One decoding step with the training weights: tokens [N] int, state (h, c) ->
        (logits [N, V] float32, new state). Inference only (no dropout)."""
        output, (h, c) = self.lstm_step(tokens, *state)
        return tf.cast(self.to_logits(output), tf.float32), (h, c)
