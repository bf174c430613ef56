"""The soft-attention captioner (Show, Attend and Tell, Xu et al. 2015) over ResNet50's 7x7 map.

    a = ReLU(Dense(units)(standardised features))                  annotations, [B, 49, units]
    h0, c0 = tanh(Dense(units)(mean over the 49 annotations))      the mean feature starts the LSTM
    at every step t:
      e = Dense(1)(tanh(Dense(A)(a) + Dense(A)(h)))                additive attention, [B, 49]
      alpha = softmax(e);  z = sigmoid(Dense(1)(h)) * sum(alpha a)  context with its f_beta gate
      h, c = LSTMCell([embedding(word), z], (h, c));  logits = Dense(V)(h)
    optional doubly stochastic regulariser: lambda * mean over locations of (1 - sum_t alpha)^2

Training and decoding run the same `advance` (one step); training scans it over the caption,
decoding (model/decoding.py) calls it through `step`, the interface the pooled Captioner has.
Unlike the pooled model there is no cuDNN LSTM here: the context depends on the previous h, so the
sequence cannot be handed to a fused kernel.
"""
import keras
import numpy as np
import tensorflow as tf

from model.base import (CaptionerBase, FeatureStandardizer, ModelConfig, chunked_moments,
                        logits_dtype)


class SpatialStandardizer(FeatureStandardizer):
    """Standardises [B, locations, C] maps per location and channel, statistics over images.

    Per location, not per channel alone: a ResNet50 map carries a fixed layout, which statistics
    pooled over locations would leave in; over images only, each cell keeps what tells images
    apart, as the pooled model's standardisation does for its vector.

    adapt() reads the images in chunks (model.base.chunked_moments)."""

    def build(self, input_shape):
        shape = tuple(input_shape[1:])  # (locations, channels)
        self.mean = self.add_weight(shape=shape, initializer="zeros", trainable=False, name="mean")
        self.std = self.add_weight(shape=shape, initializer="ones", trainable=False, name="std")

    def adapt(self, features, rows=None):
        shape = (int(np.prod(features.shape[1:-1])), int(features.shape[-1]))  # (locations, C)
        mean, std = chunked_moments(features, rows, shape)
        if not self.built:
            self.build((None, *shape))
        self.mean.assign(mean)
        self.std.assign(std)


class AttentionCaptioner(CaptionerBase):
    """inputs {"features": [B, H, W, F] float, "tokens": [B, T] int (0 = <pad>)} -> logits
    [B, T, V]. The same step/initial_state interface as model.captioner.Captioner."""

    def __init__(self, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.set_config(config)
        # float32 for the reason given in Captioner.
        self.feature_norm = (SpatialStandardizer(name="feature_norm", dtype="float32")
                             if config.standardizes_decoder_input else None)
        self.annotate = keras.layers.Dense(config.units, activation="relu", name="annotate")
        self.init_h = keras.layers.Dense(config.units, activation="tanh", name="init_h")
        self.init_c = keras.layers.Dense(config.units, activation="tanh", name="init_c")
        self.attend_features = keras.layers.Dense(config.attention_units, name="attend_features")
        self.attend_state = keras.layers.Dense(config.attention_units, use_bias=False,
                                               name="attend_state")
        self.attend_score = keras.layers.Dense(1, name="attend_score")
        self.context_gate = keras.layers.Dense(1, activation="sigmoid", name="context_gate")
        self.embedding = keras.layers.Embedding(config.vocab_size, config.embed_dim,
                                                name="embedding")
        self.cell = keras.layers.LSTMCell(config.units, name="lstm_cell")
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
        mean = keras.ops.mean(annotations, axis=1)
        return {"h": self.init_h(mean), "c": self.init_c(mean), "annotations": annotations,
                "keys": self.attend_features(annotations)}

    def attend(self, h, annotations, keys):
        """(gated context [B, units], attention weights [B, locations]) for LSTM output h."""
        hidden = keras.ops.tanh(keys + self.attend_state(h)[:, None, :])
        weights = keras.ops.softmax(self.attend_score(hidden)[..., 0], axis=-1)
        context = keras.ops.einsum("bl,bld->bd", weights, annotations)
        return self.context_gate(h) * context, weights

    def advance(self, embedded, state, training=False):
        """One step from an embedded word: (LSTM output, new state, attention weights)."""
        context, weights = self.attend(state["h"], state["annotations"], state["keys"])
        inputs = keras.ops.concatenate([embedded, keras.ops.cast(context, embedded.dtype)], -1)
        output, (h, c) = self.cell(inputs, [state["h"], state["c"]], training=training)
        return output, dict(state, h=h, c=c), weights

    # --- training ------------------------------------------------------------------------------
    def call(self, inputs, training=False):
        words = (inputs["tokens"], inputs.get("image_index"))  # for the word loss
        state = self.initial_state(self.input_features(inputs), training=training, words=words)
        state = self.per_caption(state, inputs.get("image_index"))
        tokens = inputs["tokens"]
        embedded = self.dropout(self.embedding(tokens), training=training)

        def one_step(carry, embedded_t):
            h, c, _ = carry
            output, new, weights = self.advance(embedded_t, dict(state, h=h, c=c), training)
            return new["h"], new["c"], weights

        locations = self.config.feature_grid ** 2
        start = (state["h"], state["c"],
                 tf.zeros([tf.shape(tokens)[0], locations], state["keys"].dtype))
        outputs, _, weights = tf.scan(one_step, tf.transpose(embedded, [1, 0, 2]),
                                      initializer=start)
        outputs = tf.transpose(outputs, [1, 0, 2])          # [B, T, units]
        if training and self.config.attention_regularizer:
            self.add_loss(self._doubly_stochastic(tf.transpose(weights, [1, 0, 2]), tokens))
        return tf.cast(self.to_logits(self.dropout(outputs, training=training)), tf.float32)

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
        embedded = tf.gather(self.embedding.embeddings, tokens)
        output, new, weights = self.advance(embedded, state)
        if "attention" in state:
            steps = state["attention"].shape[1]
            at_step = tf.one_hot(state["position"], steps, dtype=tf.float32)   # [N, M]
            new["attention"] = (state["attention"]
                                + at_step[:, :, None] * tf.cast(weights, tf.float32)[:, None, :])
            new["position"] = state["position"] + 1
        return tf.cast(self.to_logits(output), tf.float32), new

    def recording_state(self, state, max_new_tokens: int):
        """The state plus an empty record of max_new_tokens steps' weights, kept per row (so
        beam search reorders it with its beams) and filled by step()."""
        batch = tf.shape(state["h"])[0]
        locations = self.config.feature_grid ** 2
        return dict(state, attention=tf.zeros([batch, max_new_tokens, locations], tf.float32),
                    position=tf.zeros([batch], tf.int32))
