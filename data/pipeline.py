"""The training input pipeline: cached image features + token ids -> padded teacher-forcing batches.

Every element is

    ({"features": float32 [B, F], "tokens": int32 [B, T]}, targets int32 [B, T])

(features float32 [B, 7, 7, F] when the feature matrix holds spatial maps [N, 7, 7, F]: any
per-image shape [N, ...] passes through).

where a caption's token list [<start>, w1 .. wn, <end>] gives inputs [<start>, w1 .. wn] and
targets [w1 .. wn, <end>], right-padded with 0 (<pad>) to the longest caption of the batch
(PipelineConfig.pad_to pads every batch to one fixed T instead; that reproduces the original
project's padding to 80 and is meant for benchmarks only). A caption of n words has n + 2 tokens
and n + 1 steps (T).

How it stays fast without per-element Python: the dataset runs over caption *indices*. Shuffling,
length bucketing and batching move scalars; one vectorised map per batch then gathers the token
rows from a RaggedTensor and the feature rows from a tf.Variable. The feature matrix is captured
as a variable (a resource handle) rather than a graph constant, so its 238 MB (Flickr30k: 29k x
2048 floats) are not copied into each traced function; every dataset function takes the matrix
or a table feature_table made of it, which datasets of one matrix share.
A float16 matrix (the spatial maps of the feature cache: 29k x 7 x 7 x 2048 is 5.8 GB) stays
float16 in the variable, half the memory of float32; each gathered batch is cast to float32.

Image-major batches (image_major_dataset, image_file_dataset) hold whole images instead: B images
with all their N captions,

    ({"features": float32 [B, ...], "tokens": int32 [N, T], "image_index": int32 [N]}, targets)

where image_index says which of the B images each caption describes ("images": float32
[B, 224, 224, 3] instead of "features" when the images are decoded in the pipeline). A captioner
that trains the encoder's top runs it once per image instead of once per caption (about 1.9x
cheaper steps measured with the conv4 head), and so does the attention family's annotation of
the map. Training batches images whose longest captions have similar lengths (every caption of a
batch is padded to its longest): on the built-in data, 26 random images padded their captions to
23.6 steps on average for 12.6 real ones.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import tensorflow as tf

from data.images import decode_one


@dataclass
class PipelineConfig:
    batch_size: int = 128
    # Elements are caption indices (8 bytes each), so a buffer covering all of Flickr30k's 145k
    # captions costs ~1 MB and gives a full shuffle; a smaller buffer would keep the 5 captions
    # of an image (stored next to each other) in neighbouring batches.
    shuffle_buffer: int = 200_000
    seed: int = 0
    bucket_width: int = 4  # captions whose lengths differ by less than this share batches
    # Longest caption in tokens, <start> and <end> included (so at most max_caption_tokens - 1
    # steps); a longer one keeps its first max_caption_tokens - 2 words and its <end>.
    max_caption_tokens: int | None = None
    pad_to: int | None = None  # pad every batch to this T (benchmarks only)

    def __post_init__(self):
        for name in ("batch_size", "shuffle_buffer", "bucket_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"PipelineConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_caption_tokens is not None and self.max_caption_tokens < 2:
            raise ValueError("PipelineConfig.max_caption_tokens must be None or >= 2 (<start>, "
                             f"<end>), got {self.max_caption_tokens}")
        if self.pad_to is not None and self.pad_to < 1:
            raise ValueError(f"PipelineConfig.pad_to must be None or >= 1, got {self.pad_to}")


@dataclass(frozen=True)
class CaptionExamples:
    """Captions as tensors: which feature row each belongs to and its token ids."""
    image_rows: tf.Tensor  # int32 [N]
    tokens: tf.RaggedTensor  # int32 [N, None]; each row [<start>, w1 .. wn, <end>]
    steps: np.ndarray  # int32 [N]; T of each caption = len(tokens) - 1

    def __len__(self) -> int:
        return len(self.steps)


def caption_examples(image_rows: Sequence[int], token_lists: Sequence[Sequence[int]],
                     max_caption_tokens: int | None = None) -> CaptionExamples:
    """Checks and packs (image row, token ids) pairs; one Python pass, then only tensors.

    Token lists need at least <start> and <end>. With max_caption_tokens, a longer caption keeps
    its first max_caption_tokens - 1 tokens followed by its last token (<end>), so it has exactly
    max_caption_tokens tokens and the model still learns to stop.
    """
    if len(image_rows) != len(token_lists):
        raise ValueError(f"got {len(image_rows)} image rows but {len(token_lists)} token lists; "
                         "expected one image row per caption")
    if max_caption_tokens is not None:
        keep = max_caption_tokens - 1
        token_lists = [ids if len(ids) <= max_caption_tokens else [*ids[:keep], ids[-1]]
                       for ids in token_lists]
    lengths = np.fromiter(map(len, token_lists), np.int64, count=len(token_lists))
    if len(lengths) and lengths.min() < 2:
        bad = int(np.argmin(lengths))
        raise ValueError(f"token list {bad} is {list(token_lists[bad])}; expected at least "
                         "[<start>, <end>]")
    values = np.fromiter(itertools.chain.from_iterable(token_lists), np.int64,
                         count=int(lengths.sum()))
    if len(values) and (values.min() < 0 or values.max() >= 2 ** 31):
        raise ValueError("token ids must be in [0, 2**31); got "
                         f"{values.min() if values.min() < 0 else values.max()}")
    rows = np.asarray(image_rows, np.int64).reshape(-1)
    if len(rows) and rows.min() < 0:
        raise ValueError(f"image rows must be >= 0, got {rows.min()}")
    tokens = tf.RaggedTensor.from_row_lengths(tf.constant(values, tf.int32),
                                              tf.constant(lengths, tf.int64))
    return CaptionExamples(tf.constant(rows, tf.int32), tokens, (lengths - 1).astype(np.int32))


def training_dataset(features: np.ndarray | tf.Variable, image_rows, token_lists,
                     config: PipelineConfig) -> tf.data.Dataset:
    """Shuffled (seeded, reshuffled every epoch), length-bucketed, prefetched batches for one
    epoch; Keras fit iterates it again for each epoch."""
    examples, table = _prepare(features, image_rows, token_lists, config)
    indices = tf.data.Dataset.range(len(examples)).shuffle(
        min(config.shuffle_buffer, max(1, len(examples))), seed=config.seed,
        reshuffle_each_iteration=True)
    if config.pad_to is None:
        batches = _bucketed(indices, examples.steps, config)
    else:
        batches = indices.batch(config.batch_size)
    return _assemble(batches, examples, table, config.pad_to)


def evaluation_dataset(features: np.ndarray | tf.Variable, image_rows, token_lists,
                       config: PipelineConfig) -> tf.data.Dataset:
    """Same elements as training_dataset, in the captions' own order, no shuffle, no bucketing."""
    examples, table = _prepare(features, image_rows, token_lists, config)
    batches = tf.data.Dataset.range(len(examples)).batch(config.batch_size)
    return _assemble(batches, examples, table, config.pad_to)


def _prepare(features, image_rows, token_lists, config: PipelineConfig):
    if not isinstance(config, PipelineConfig):
        raise TypeError(f"expected a PipelineConfig, got {type(config).__name__}")
    examples = caption_examples(image_rows, token_lists, config.max_caption_tokens)
    if config.pad_to is not None and len(examples) and examples.steps.max() > config.pad_to:
        raise ValueError(f"a caption has {examples.steps.max()} steps, more than pad_to="
                         f"{config.pad_to}; set max_caption_tokens <= pad_to + 1")
    table = feature_table(features)
    num_rows = int(table.shape[0])
    rows = examples.image_rows.numpy()
    if len(rows) and rows.max() >= num_rows:
        raise ValueError(f"caption {int(rows.argmax())} refers to image row {rows.max()}, but the "
                         f"feature matrix has {num_rows} rows")
    return examples, table


def feature_table(features) -> tf.Variable:
    """The feature matrix [N, ...] as a CPU variable: float16 kept as float16, anything else
    float32. A table made here passes through unchanged: datasets of one matrix (training and
    validation) can share it instead of each holding a copy."""
    if isinstance(features, tf.Variable):
        return features
    features = np.asarray(features)
    if features.dtype != np.float16:
        features = features.astype(np.float32, copy=False)
    if features.ndim < 2:
        raise ValueError(f"features must be a 2-D [images, feature_dim] or 4-D [images, 7, 7, "
                         f"feature_dim] array, got shape {features.shape}")
    # On the CPU, where tf.data runs: the per-batch gather then never crosses devices.
    with tf.device("/CPU:0"):
        return tf.Variable(features, trainable=False, name="image_features")


def _bucketed(indices: tf.data.Dataset, steps: np.ndarray, config: PipelineConfig,
              batch_size: int | None = None, key=None, all_arrive=True) -> tf.data.Dataset:
    """Batches of `batch_size` (default config.batch_size) elements of `indices` whose steps[i]
    fall in the same bucket_width-wide bucket; key(element) gives i (default: the element).
    all_arrive=False: elements may be left out on the way, so the count of batches is unknown."""
    batch_size = batch_size or config.batch_size
    longest = int(steps.max()) if len(steps) else 1
    boundaries = list(range(1 + config.bucket_width, longest + 1, config.bucket_width))
    if not boundaries:
        return indices.batch(batch_size)
    steps_table = tf.constant(steps, tf.int32)
    key = key or (lambda i: i)
    batches = indices.bucket_by_sequence_length(
        lambda *element: tf.gather(steps_table, key(*element)), boundaries,
        [batch_size] * (len(boundaries) + 1), no_padding=True)
    # Every bucket ends with one partial batch, so the count is known without iterating; telling
    # tf.data lets Keras show epoch progress and skips its "ran out of data" warning.
    if not all_arrive:
        return batches
    per_bucket = np.bincount(np.searchsorted(boundaries, steps, side="right"))
    count = int(np.sum(-(-per_bucket // batch_size)))
    return batches.apply(tf.data.experimental.assert_cardinality(count))


def _assemble(batches: tf.data.Dataset, examples: CaptionExamples, table: tf.Variable,
              pad_to: int | None) -> tf.data.Dataset:
    """Index batches -> (inputs, targets) batches, gathered and padded in one vectorised step."""
    image_rows, tokens = examples.image_rows, examples.tokens
    pad_shape = None if pad_to is None else [None, pad_to]

    def make_batch(indices):
        captions = tf.gather(tokens, indices)  # ragged [B, None]
        inputs = captions[:, :-1].to_tensor(0, shape=pad_shape)  # drop <end>
        targets = captions[:, 1:].to_tensor(0, shape=pad_shape)  # drop <start>
        features = tf.cast(tf.gather(table, tf.gather(image_rows, indices)), tf.float32)
        return {"features": features, "tokens": inputs}, targets

    return (batches.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def image_batches(features: np.ndarray | tf.Variable, image_rows: Sequence[int],
                  references: np.ndarray, batch_size: int, seed: int = 0) -> tf.data.Dataset:
    """Shuffled batches of images for self-critical training: (features float32 [B, ...],
    reference token ids int32 [B, R, L]), where references[i] holds the references of the image
    in feature row image_rows[i] (model.cider.CiderReferences.tokens)."""
    if len(image_rows) != len(references):
        raise ValueError(f"got {len(image_rows)} image rows for {len(references)} reference sets")
    if batch_size < 1 or not len(image_rows):
        raise ValueError(f"need batch_size >= 1 and at least one image, got {batch_size}, "
                         f"{len(image_rows)} images")
    table = feature_table(features)
    rows = tf.constant(np.asarray(image_rows, np.int64))
    if int(tf.reduce_max(rows)) >= table.shape[0]:
        raise ValueError(f"image row {int(tf.reduce_max(rows))} is beyond the feature matrix's "
                         f"{table.shape[0]} rows")
    references = tf.constant(np.asarray(references, np.int32))

    def make_batch(indices):
        batch = tf.cast(tf.gather(table, tf.gather(rows, indices)), tf.float32)
        return batch, tf.gather(references, indices)

    return (tf.data.Dataset.range(len(image_rows))
            .shuffle(len(image_rows), seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size).map(make_batch, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def images_per_batch(config: PipelineConfig, num_images: int, num_captions: int) -> int:
    """Images per image-major batch: about config.batch_size captions' worth."""
    return max(1, round(config.batch_size * num_images / max(1, num_captions)))


def image_major_dataset(features: np.ndarray | tf.Variable, image_rows, token_lists,
                        config: PipelineConfig, shuffle: bool = True) -> tf.data.Dataset:
    """Image-major batches (module docstring) of the cached features: images shuffled (seeded,
    reshuffled every epoch) unless shuffle=False, then in row order."""
    examples, table = _prepare(features, image_rows, token_lists, config)
    images, captions_of = _captions_by_image(examples)
    rows = tf.constant(images, tf.int32)

    def make_batch(positions):
        batch = tf.cast(tf.gather(table, tf.gather(rows, positions)), tf.float32)
        return _with_captions("features", batch, positions, captions_of, examples.tokens,
                              config.pad_to)

    per_batch = images_per_batch(config, len(images), len(examples))
    positions = _image_positions(len(images), config, shuffle)
    batches = (_bucketed(positions, _longest_caption(examples, captions_of), config, per_batch)
               if shuffle else positions.batch(per_batch))
    return (batches.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def image_file_dataset(files: Sequence[str], image_rows, token_lists, config: PipelineConfig,
                       shuffle: bool = True) -> tf.data.Dataset:
    """Image-major batches of decoded images (data.images.decode_one, the one preprocessing
    path), for training that runs the frozen encoder in its step: files[row] is the image of
    feature row `row`. An image that fails to decode is left out with its captions, so the
    number of batches is not known in advance."""
    examples = caption_examples(image_rows, token_lists, config.max_caption_tokens)
    images, captions_of = _captions_by_image(examples)
    if len(images) and images.max() >= len(files):
        raise ValueError(f"a caption refers to image row {images.max()}, but there are "
                         f"{len(files)} image files")
    paths = tf.constant([str(files[row]) for row in images])

    def load(position):
        image, error = decode_one(tf.io.read_file(tf.gather(paths, position)))
        return position, image, error

    def make_batch(positions, batch, errors):
        return _with_captions("images", batch, positions, captions_of, examples.tokens,
                              config.pad_to)

    per_batch = images_per_batch(config, len(images), len(examples))
    decoded = (_image_positions(len(images), config, shuffle)
               .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .ignore_errors()  # a decoder that raised: a corrupt image
               .filter(lambda position, image, error: tf.equal(error, "")))
    if shuffle:
        batches = _bucketed(decoded, _longest_caption(examples, captions_of), config, per_batch,
                            key=lambda position, image, error: position, all_arrive=False)
    else:
        batches = decoded.batch(per_batch)
    return (batches.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def _longest_caption(examples: CaptionExamples, captions_of) -> np.ndarray:
    """Steps of each image's longest caption: training batches images of similar longest captions
    together, since a batch's captions are all padded to its longest."""
    steps = tf.gather(tf.constant(examples.steps), captions_of)  # ragged [M, None]
    return tf.reduce_max(steps, axis=1).numpy()


def _captions_by_image(examples: CaptionExamples):
    """(the distinct image rows, sorted, int64 [M]; ragged [M, None] of the caption indices of
    each)."""
    rows = examples.image_rows.numpy()
    images, image_of_caption = np.unique(rows, return_inverse=True)
    order = np.argsort(image_of_caption, kind="stable")
    counts = np.bincount(image_of_caption, minlength=len(images))
    return images, tf.RaggedTensor.from_row_lengths(tf.constant(order, tf.int64),
                                                    tf.constant(counts, tf.int64))


def _image_positions(count: int, config: PipelineConfig, shuffle: bool) -> tf.data.Dataset:
    positions = tf.data.Dataset.range(count)
    if shuffle:
        positions = positions.shuffle(max(1, count), seed=config.seed,
                                      reshuffle_each_iteration=True)
    return positions


def _with_captions(key: str, batch, positions, captions_of, tokens, pad_to):
    """One image-major element: the images' `batch` under `key`, all their captions after it."""
    captions = tf.gather(captions_of, positions)  # ragged [B, None] caption indices
    chosen = tf.gather(tokens, captions.flat_values)
    pad_shape = None if pad_to is None else [None, pad_to]
    inputs = {key: batch, "tokens": chosen[:, :-1].to_tensor(0, shape=pad_shape),
              "image_index": tf.cast(captions.value_rowids(), tf.int32)}
    return inputs, chosen[:, 1:].to_tensor(0, shape=pad_shape)
