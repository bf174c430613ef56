"""What every captioner shares: its settings (ModelConfig), the feature standardiser, the
training loss, the logits' dtype under mixed precision, and CaptionerBase (the encoder's
trainable top, image-major batches, Keras workarounds, build_for). Both model families
(model/captioner.py, model/attention.py) build on this module; model/presets.py picks the family.
"""
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from data.flags import check_choices, setting
from model.encoder import CONV4_SHAPE, FEATURE_DIM, GRID

# Training's Keras dtype policies by precision name; logits and loss stay float32 under both
# 16-bit policies (logits_dtype, MaskedCaptionLoss).
MIXED_POLICIES = {"": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
FAMILIES = ("pooled", "attention")  # model/captioner.py, model/attention.py
ENCODER_TOPS = ("", "head", "conv5", "auto")  # model/top.py; "auto" is resolved by the weights
ADAPT_ROWS_PER_CHUNK = 256  # images per chunk when computing feature statistics
ADAPT_VALUES_PER_CHUNK = 256 * 49 * 2048  # and at most this many values (float64) per chunk


@dataclasses.dataclass
class ModelConfig:
    # Given by the data and the encoder, never by a preset or a flag.
    vocab_size: int
    feature_dim: int = FEATURE_DIM
    feature_grid: int = GRID          # locations per side of ResNet50's last map (attention)
    # Settings.
    family: str = setting("pooled", "pooled: the decoder reads ResNet50's pooled vector; "
                          "attention: soft attention over its 7x7 map at every word (model/attention.py)",
                          choices=FAMILIES)
    embed_dim: int = setting(256, "word embedding width")
    units: int = setting(512, "LSTM width")
    dropout: float = setting(0.0, "dropout on embeddings and LSTM outputs (never recurrent: "
                             "cuDNN's condition)")
    image_init_cell: bool = setting(False, "pooled family: c0 = tanh(Dense(features)) instead "
                                    "of zeros")
    normalize_features: bool = setting(
        False, "standardise features with the training images' statistics (saved with the "
        "weights); random-init encoders need it: their features differ little between images")
    attention_units: int = setting(512, "attention family: width of the additive attention's "
                                   "hidden layer")
    attention_regularizer: float = setting(
        0.0, "attention family: weight (lambda) of the doubly stochastic regulariser; "
        "Show, Attend and Tell used 1; 0 = off")
    word_loss: float | None = setting(
        None, "with an encoder top: weight of an auxiliary loss, which words an image's "
        "captions use, predicted from the top's pooled map (a direct signal for every visual "
        "word, which the captioning loss gives the top slowly); none = 1 for the head (what "
        "taught it shape), 0 for conv5 (not measured there); 0 = off")
    encoder_top: str = setting(
        "", "train the encoder's top with the decoder, from the frozen trunk's conv4_x maps "
        "(14x14x1024, cached): head = a small conv head, attention family only (what random "
        "weights need), conv5 = ResNet50's conv5_x stage, BatchNorm frozen (ImageNet weights or "
        "a file; with --init-from a run on frozen features and a lower --learning-rate); the "
        "bare flag picks by --encoder-weights", choices=ENCODER_TOPS, flag="fine-tune-encoder", const="auto")

    def __post_init__(self):
        check_choices(self)
        for name in ("vocab_size", "feature_dim", "embed_dim", "units", "feature_grid",
                     "attention_units"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.attention_regularizer < 0:
            raise ValueError("ModelConfig.attention_regularizer must be >= 0, "
                             f"got {self.attention_regularizer!r}")
        if self.word_loss is not None and self.word_loss < 0:
            raise ValueError(f"ModelConfig.word_loss must be >= 0, got {self.word_loss!r}")
        if self.encoder_top == "auto":
            raise ValueError("ModelConfig.encoder_top 'auto' is chosen by the encoder weights "
                             "first (model.top.resolve_encoder_top)")
        if self.encoder_top == "head" and self.family == "pooled":
            raise ValueError("the conv head (encoder_top 'head', random weights) trains under "
                             "the attention family only: averaged for the pooled family it "
                             "scored below frozen pooled features (docs/attention.md#measured); "
                             "use --preset attention")

    @property
    def attention(self) -> bool:
        """Whether this is the attention family (what export/ asks)."""
        return self.family == "attention"

    @property
    def word_loss_weight(self) -> float:
        """word_loss, or its default for the top (the field's help)."""
        if self.word_loss is not None:
            return float(self.word_loss) if self.encoder_top else 0.0
        return 1.0 if self.encoder_top == "head" else 0.0

    @property
    def standardizes_decoder_input(self) -> bool:
        """normalize_features standardises what the decoder reads, but after the head: that
        standardises its own conv4 input and ends in BatchNorm, and statistics fixed before
        training would go stale as it learns."""
        return self.normalize_features and self.encoder_top != "head"

    @property
    def feature_kind(self) -> str:
        """The encoder features the model reads (model.encoder.FEATURE_KINDS)."""
        if self.encoder_top:
            return "conv4"
        return "spatial" if self.attention else "pooled"

    @property
    def feature_shape(self) -> tuple:
        """One image's features as the model takes them."""
        if self.encoder_top:
            return CONV4_SHAPE
        if self.attention:
            return (self.feature_grid, self.feature_grid, self.feature_dim)
        return (self.feature_dim,)


def chunked_moments(features, rows, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """float32 (mean, std) of features[rows] viewed as [-1, *shape], read in chunks (a float64
    copy of Flickr30k's training maps would not fit in memory), the chunks' means and variances
    combined exactly (Chan et al.). std is at least 1e-6."""
    rows = np.arange(len(features)) if rows is None else np.asarray(rows)
    count, mean, squares = 0, np.zeros(shape), np.zeros(shape)
    step = max(1, min(ADAPT_ROWS_PER_CHUNK,
                      ADAPT_VALUES_PER_CHUNK // max(1, int(np.prod(features.shape[1:])))))
    for start in range(0, len(rows), step):
        chunk = np.asarray(features[rows[start:start + step]], np.float64).reshape(-1, *shape)
        n, chunk_mean = len(chunk), chunk.mean(0)
        delta = chunk_mean - mean
        total = count + n
        squares += ((chunk - chunk_mean) ** 2).sum(0) + delta ** 2 * count * n / total
        mean += delta * n / total
        count = total
    std = np.maximum(np.sqrt(squares / max(count, 1)), 1e-6)
    return mean.astype("float32"), std.astype("float32")


class FeatureStandardizer(keras.layers.Layer):
    """(x - mean) / std with statistics set once from the training features by `adapt`; they are
    non-trainable weights, so checkpoints and the exported SavedModel carry them."""

    def build(self, input_shape):
        dim = input_shape[-1]
        self.mean = self.add_weight(shape=(dim,), initializer="zeros", trainable=False, name="mean")
        self.std = self.add_weight(shape=(dim,), initializer="ones", trainable=False, name="std")

    def adapt(self, features):
        features = np.asarray(features, np.float64)
        if not self.built:
            self.build(features.shape)
        self.mean.assign(features.mean(0).astype("float32"))
        self.std.assign(np.maximum(features.std(0), 1e-6).astype("float32"))

    def call(self, features):
        return (features - keras.ops.cast(self.mean, features.dtype)) / \
            keras.ops.cast(self.std, features.dtype)


def logits_dtype() -> str | None:
    """None (follow the global policy) under mixed_bfloat16, else float32."""
    return None if keras.mixed_precision.global_policy().name == "mixed_bfloat16" else "float32"


class CaptionerBase(keras.Model):
    """What both model families share: the encoder's trainable top (model/top.py), image-major
    batches, self-critical training (model/scst.py), Keras 3.15 workarounds for multi-worker fit,
    and build_for. Subclasses call set_config and define initial_state, call and step."""

    self_critical = None  # a model.scst.SelfCritical once model.scst.enable() was called
    image_trunk = None  # set by train_from_images: the frozen trunk run inside the step

    def set_config(self, config: ModelConfig) -> None:
        from model.top import build_top, word_head  # model/top.py builds on this module
        self.config = config
        self.top = build_top(config.encoder_top)
        self.word_head = word_head(config) if config.word_loss_weight else None

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
            from model.top import word_presence_loss
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
            from model.top import top_features
            features, rows = top_features(self, features, rows), None
        if features.ndim > 2:  # maps: per location and channel, read in chunks
            self.feature_norm.adapt(features, rows=rows)
        else:
            self.feature_norm.adapt(features if rows is None else features[rows])

    @property
    def metrics(self):
        extra = [self.self_critical.mean_reward] if self.self_critical else []
        return super().metrics + extra  # Keras resets and logs these every epoch

    # --- Keras 3.15 under MultiWorkerMirroredStrategy: two workarounds, found by running it ----
    def train_step(self, data):
        if self.self_critical is not None:
            # model.scst (and the metrics it validates with) only once enable() has run: the
            # export and serving stages load captioners without them.
            from model.scst import self_critical_step
            return self._logs_for_multi_worker(self_critical_step(self, data))
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
