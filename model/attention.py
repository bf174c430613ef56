"""The soft-attention captioner over a 7x7 map: the spatial attention of Lu et al. 2017 ("Knowing
When to Look"), which attends with the LSTM's current output instead of its previous one (Show,
Attend and Tell, Xu et al. 2015):

    a = ReLU(Dense(units)(standardised features)) + P              annotations, [B, 49, units]
    h0, c0 = tanh(Dense(units)(mean over the 49 annotations))      the mean feature starts the LSTM
    h_t = LSTM(embedding(word_t), h_{t-1})                         the same LSTM as the pooled model
    e_t = Dense(1)(tanh(Dense(A)(a) + Dense(A)(h_t)))              additive attention, [B, 49]
    alpha_t = softmax(e_t);  z_t = sum(alpha_t a)                  the context of step t
    logits_t = Dense(V)(h_t + z_t)
    optional doubly stochastic regulariser: lambda * mean over locations of (1 - sum_t alpha)^2

P is a learnt embedding of each location [49, units]: a context is a weighted sum over
locations, which would otherwise not say where it looked, and captions say left and right.

Since the context does not feed the LSTM, training runs the whole caption through
keras.layers.LSTM (cuDNN on a GPU) and attends at every step at once, as batched matrix products:
an epoch costs little more than the pooled model's. Decoding (model/decoding.py) calls `step`,
the interface the pooled Captioner has: the same LSTM cell one token at a time, then attention.
"""
import keras
import tensorflow as tf

from model.base import CaptionerBase, logits_dtype
from model.settings import ModelConfig
from model.standardizers import SpatialStandardizer
from model.top import top_layers


class AttentionCaptioner(CaptionerBase):
    """inputs {"features": [B, H, W, F] float, "tokens": [B, T] int (0 = <pad>)} -> logits
    [B, T, V]. The same step/initial_state interface as model.captioner.Captioner."""

    def __init__(self, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.set_config(config, *top_layers(config))
        # float32 for the reason given in Captioner.
        self.feature_norm = (SpatialStandardizer(name="feature_norm", dtype="float32")
                             if config.standardizes_decoder_input else None)
        self.annotate = keras.layers.Dense(config.units, activation="relu", name="annotate")
        self.locations = self.add_weight(shape=(config.feature_grid ** 2, config.units),
                                         initializer="zeros", name="locations")
        self.init_h = keras.layers.Dense(config.units, activation="tanh", name="init_h")
        self.init_c = keras.layers.Dense(config.units, activation="tanh", name="init_c")
        self.attend_features = keras.layers.Dense(config.attention_units, name="attend_features")
        self.attend_state = keras.layers.Dense(config.attention_units, use_bias=False,
                                               name="attend_state")
        self.attend_score = keras.layers.Dense(1, name="attend_score")
        self.embedding = keras.layers.Embedding(config.vocab_size, config.embed_dim,
                                                mask_zero=True, name="embedding")
        # Defaults tanh/sigmoid, no recurrent dropout, unroll=False: the cuDNN kernel's conditions.
        self.lstm = keras.layers.LSTM(config.units, return_sequences=True, name="lstm")
        self.dropout = keras.layers.Dropout(config.dropout)
        self.to_logits = keras.layers.Dense(config.vocab_size, dtype=logits_dtype(),
                                            name="to_logits")

    # --- the pieces --------------------------------------------------------------------------
    def initial_state(self, features, training=False, words=None):
        """Feature maps [B, H, W, F] (or conv4 maps, through the top) -> the decoder state: LSTM
        (h, c) from the mean annotation, plus the annotations and their attention keys, computed
        once per image."""
        features = self.top_output(features, training, words)
        grid = self.config.feature_grid
        features = keras.ops.reshape(features, [-1, grid * grid, features.shape[-1]])
        if self.feature_norm is not None:
            features = self.feature_norm(features)
        annotations = self.annotate(features)
        annotations = annotations + keras.ops.cast(self.locations, annotations.dtype)
        mean = keras.ops.mean(annotations, axis=1)
        return {"h": self.init_h(mean), "c": self.init_c(mean), "annotations": annotations,
                "keys": self.attend_features(annotations)}

    def attend(self, outputs, annotations, keys):
        """LSTM outputs [B, T, units] -> (outputs + their contexts [B, T, units], attention
        weights [B, T, locations]): every step attends at once."""
        queries = self.attend_state(outputs)                             # [B, T, A]
        hidden = keras.ops.tanh(keys[:, None, :, :] + queries[:, :, None, :])  # [B, T, L, A]
        weights = keras.ops.softmax(self.attend_score(hidden)[..., 0], axis=-1)
        context = keras.ops.einsum("btl,bld->btd", weights, annotations)
        return outputs + keras.ops.cast(context, outputs.dtype), weights

    # --- training ------------------------------------------------------------------------------
    def call(self, inputs, training=False):
        words = (inputs["tokens"], inputs.get("image_index"))  # for the word loss
        state = self.initial_state(self.input_features(inputs), training=training, words=words)
        state = self.per_caption(state, inputs.get("image_index"))
        tokens = inputs["tokens"]
        embedded = self.dropout(self.embedding(tokens), training=training)
        outputs = self.lstm(embedded, initial_state=[state["h"], state["c"]], training=training)
        combined, weights = self.attend(outputs, state["annotations"], state["keys"])
        if training and self.config.attention_regularizer:
            self.add_loss(self._doubly_stochastic(weights, tokens))
        return tf.cast(self.to_logits(self.dropout(combined, training=training)), tf.float32)

    def _doubly_stochastic(self, weights, tokens):
        """lambda * mean over images and locations of (1 - attention a location got over the
        caption's real steps)^2: pushes the model to look at every part of the image once."""
        real = tf.cast(tf.not_equal(tokens, 0), tf.float32)[:, :, None]
        total = tf.reduce_sum(tf.cast(weights, tf.float32) * real, axis=1)   # [B, locations]
        return self.config.attention_regularizer * tf.reduce_mean(tf.square(1.0 - total))

    # --- decoding ------------------------------------------------------------------------------
    def step(self, tokens, state):
        """One decoding step: tokens [N] int, state -> (logits [N, V] float32, new state).
        When the state records attention (recording_state), writes this step's weights into
        its row of state["attention"]."""
        output, (h, c) = self.lstm_step(tokens, state["h"], state["c"])
        combined, weights = self.attend(output[:, None, :], state["annotations"], state["keys"])
        weights = weights[:, 0, :]
        new = dict(state, h=h, c=c)
        if "attention" in state:
            steps = state["attention"].shape[1]
            at_step = tf.one_hot(state["position"], steps, dtype=tf.float32)   # [N, M]
            new["attention"] = (state["attention"]
                                + at_step[:, :, None] * tf.cast(weights, tf.float32)[:, None, :])
            new["position"] = state["position"] + 1
        return tf.cast(self.to_logits(combined[:, 0, :]), tf.float32), new

    def recording_state(self, state, max_new_tokens: int):
        """The state plus an empty record of max_new_tokens steps' weights, kept per row (so
        beam search reorders it with its beams) and filled by step()."""
        batch = tf.shape(state["h"])[0]
        locations = self.config.feature_grid ** 2
        return dict(state, attention=tf.zeros([batch, max_new_tokens, locations], tf.float32),
                    position=tf.zeros([batch], tf.int32))
