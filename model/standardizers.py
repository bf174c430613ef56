"""Feature standardisers: (x - mean) / std with statistics set once from the training images'
features (`adapt`), kept as non-trainable weights so checkpoints and the exported SavedModel
carry them. One per shape of what is standardised: a vector (the pooled family's decoder), each
location and channel of a map (the attention family's), each channel of a map (the conv head's
conv4 input, model/top.py)."""
import keras
import numpy as np

ADAPT_ROWS_PER_CHUNK = 256  # images per chunk when computing feature statistics
ADAPT_VALUES_PER_CHUNK = 256 * 49 * 2048  # and at most this many values (float64) per chunk


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
    """(x - mean) / std per feature of [B, F] vectors, statistics over the training images."""

    def statistics_shape(self, input_shape) -> tuple:
        """The shape of mean and std: one per feature (the last axis)."""
        return tuple(input_shape[-1:])

    def build(self, input_shape):
        shape = self.statistics_shape(input_shape)
        self.mean = self.add_weight(shape=shape, initializer="zeros", trainable=False, name="mean")
        self.std = self.add_weight(shape=shape, initializer="ones", trainable=False, name="std")

    def adapt(self, features):
        features = np.asarray(features, np.float64)
        self.set_statistics(features.mean(0), np.maximum(features.std(0), 1e-6))

    def set_statistics(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Builds the layer for statistics of mean's shape if it is not built, and sets them."""
        if not self.built:
            self.build((None, *mean.shape))
        self.mean.assign(mean.astype("float32"))
        self.std.assign(std.astype("float32"))

    def call(self, features):
        return (features - keras.ops.cast(self.mean, features.dtype)) / \
            keras.ops.cast(self.std, features.dtype)


class SpatialStandardizer(FeatureStandardizer):
    """Standardises [B, locations, C] maps per location and channel, statistics over images.

    Per location, not per channel alone: a ResNet50 map carries a fixed layout, which statistics
    pooled over locations would leave in; over images only, each cell keeps what tells images
    apart, as the pooled model's standardisation does for its vector.

    adapt() reads the images in chunks (chunked_moments)."""

    def statistics_shape(self, input_shape) -> tuple:
        return tuple(input_shape[1:])  # (locations, channels)

    def adapt(self, features, rows=None):
        shape = (int(np.prod(features.shape[1:-1])), int(features.shape[-1]))  # (locations, C)
        self.set_statistics(*chunked_moments(features, rows, shape))


class ChannelStandardizer(FeatureStandardizer):
    """(x - mean) / std per channel of [B, H, W, C] maps, statistics over the training images and
    all their locations (the head's convolutions are the same at every location)."""

    def adapt(self, features, rows=None):
        self.set_statistics(*chunked_moments(features, rows, (int(features.shape[-1]),)))
