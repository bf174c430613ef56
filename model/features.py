"""Extract ResNet50 image features of a dataset into the feature cache (data/feature_cache.py).

    python -m model.features                       # built-in dataset, random encoder weights
    python -m model.features --data ~/flickr30k    # ImageNet weights (downloaded once)
    python -m model.features --data ~/flickr30k \\
        --encoder-weights ~/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5
    python -m model.features --data ~/flickr30k --kind spatial   # 7x7x2048 maps, for attention
    python -m model.features --data ~/flickr30k --kind conv4   # 14x14x1024, --fine-tune-encoder

The cache defaults to cache/<data folder name>-<encoder id> (+ "-spatial" or "-conv4"), the
folder `python -m model.train` uses, so training afterwards finds the features ready. Maps are
stored as float16: spatial 7 * 7 * 2048 * 2 = 200,704 bytes per image (about 6.4 GB for
Flickr30k), conv4 14 * 14 * 1024 * 2 = 401,408 (about 12.8 GB); the summary prints the size
measured on the files written. Interrupted? Run the same command
again: finished shards are kept. Bad images are counted by reason, never fatal.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

if __name__ == "__main__":  # a command: TensorFlow's start-up noise is hidden before anything loads it
    from data.quiet import quiet_command
    quiet_command()

import numpy as np
import tensorflow as tf

from data.feature_cache import (ExtractionReport, FeatureCacheError, encode_function,
                                extract_features, load_features)
from data.files import CACHE_ROOT
from data.layouts import DatasetError, ImageCaptions, SkipReport
from data.pipeline import (PipelineConfig, evaluation_dataset, feature_table,
                           image_file_dataset, image_major_dataset, images_per_batch,
                           training_dataset)
from data.sources import open_dataset
from model.encoder import (FEATURE_KINDS, EncoderWeightsError, build_encoder, check_kind,
                           encoder_id)
from model.settings import EncoderConfig


class Features(NamedTuple):
    """What ensure_features returns; unpacks like a tuple (report, names, features, skipped)."""
    report: ExtractionReport
    names: list[str]  # images with features, in the order of the images passed
    # float32 [len(names), 2048], or float16 maps [len(names), 7, 7, 2048] (spatial) or
    # [len(names), 14, 14, 1024] (conv4); row i belongs to names[i]
    features: np.ndarray
    skipped: SkipReport  # images without features, by reason: merge into the dataset's report


def ensure_features(images: Sequence[ImageCaptions], cache_dir, encoder_config: EncoderConfig,
                    *, kind: str = "pooled", batch_size: int = 32,
                    progress: bool = True, lock_wait_seconds: float = 0) -> Features:
    """Features of `kind` (model.encoder.FEATURE_KINDS) of `images`,
    extracting only what the cache lacks. Each kind needs a cache of its own
    (default_cache_dir). The encoder is built only when something must be computed, so a
    complete cache works offline even for ImageNet weights that are not on this machine.
    """
    kind = check_kind(kind)
    identity = encoder_id(encoder_config)
    shape, dtype = FEATURE_KINDS[kind]
    report = extract_features([(image.name, image.path) for image in images],
                              lambda: build_encoder(encoder_config, kind=kind), cache_dir,
                              encoder_id=identity, batch_size=batch_size, progress=progress,
                              lock_wait_seconds=lock_wait_seconds, feature_shape=shape,
                              feature_dtype=dtype)
    names, features = load_features(cache_dir, [image.name for image in images],
                                     encoder_id=identity, feature_shape=shape,
                                     feature_dtype=dtype)
    skipped = SkipReport()
    for name, reason in report.failures:
        skipped.add(reason, name)
    return Features(report, names, features, skipped)


# Training images whose trunk output sets the top's statistics when training from images.
FROM_IMAGES_ADAPT_IMAGES = 512


class TrainingFeed:
    """What a training step reads, by the model and the encoder settings:
    - cached features, one row per caption (data.pipeline.training_dataset): the pooled family
      on frozen features;
    - cached maps in image-major batches (image_major_dataset): a captioner with an encoder top
      runs it once per image, the attention family its annotations (7x7 maps or conv4 maps);
    - decoded images in image-major batches (image_file_dataset) with the frozen trunk run in
      the step (EncoderConfig.train_from_images), for GPUs.
    Validation reads the same way, unshuffled."""

    def __init__(self, model_config, encoder_config: EncoderConfig, images: Sequence[ImageCaptions],
                 names: list[str], features: np.ndarray):
        self.encoder_config = encoder_config
        self.image_major = bool(model_config.encoder_top) or model_config.attention
        self.from_images = encoder_config.train_from_images
        if self.from_images and not model_config.encoder_top:
            raise ValueError("--train-from-images trains the encoder's top from images: it needs "
                             "--fine-tune-encoder")
        self.features = features
        self._table = None
        if self.from_images:  # rows are the dataset's images; `features` only serve evaluation
            self.files = [str(image.path) for image in images]
            self.row_of = {image.name: i for i, image in enumerate(images)}
        else:
            self.row_of = {name: i for i, name in enumerate(names)}

    def training(self, rows, tokens, pipeline: PipelineConfig):
        return self._dataset(rows, tokens, pipeline, shuffle=True)

    def evaluation(self, rows, tokens, pipeline: PipelineConfig):
        return self._dataset(rows, tokens, pipeline, shuffle=False)

    def _dataset(self, rows, tokens, pipeline, shuffle):
        if self.from_images:
            return image_file_dataset(self.files, rows, tokens, pipeline, shuffle=shuffle)
        if self.image_major:
            return image_major_dataset(self.table(), rows, tokens, pipeline, shuffle=shuffle)
        make = training_dataset if shuffle else evaluation_dataset
        return make(self.table(), rows, tokens, pipeline)

    def table(self):
        """The cached features as one table (data.pipeline.feature_table), made once: every
        dataset of this feed shares it instead of holding a copy of the matrix."""
        if self._table is None:
            self._table = feature_table(self.features)
        return self._table

    def steps_per_epoch(self, dataset, rows, pipeline: PipelineConfig) -> int:
        """Batches per epoch; when images that fail to decode are only found while training, as
        many as if every image decoded."""
        count = int(dataset.cardinality())
        if count >= 0:
            return count
        images = len(set(rows))
        return -(-images // images_per_batch(pipeline, images, len(rows)))

    def prepare(self, captioner, train_rows, initial_weights: bool = True) -> None:
        """Before the first epoch: the conv5 top takes the encoder's weights, the statistics
        are set from the training images (CaptionerBase.adapt), and training from images gets
        its frozen trunk. initial_weights=False: every weight comes from a run's checkpoint
        afterwards (statistics included), so only the trunk is set."""
        if initial_weights and captioner.config.encoder_top == "conv5":
            captioner.top.load_encoder_weights(self.encoder_config)
        rows = sorted(set(train_rows))
        if not self.from_images:
            if initial_weights:
                captioner.adapt(self.features, rows)
            return
        trunk = build_encoder(self.encoder_config, kind="conv4")
        captioner.image_trunk = _frozen(trunk)
        if initial_weights:
            sample = [self.files[row] for row in rows[:FROM_IMAGES_ADAPT_IMAGES]]
            captioner.adapt(_trunk_features(trunk, sample), None)


def _frozen(trunk):
    """The trunk as a plain function of the images: a function is not a Keras attribute, so the
    captioner neither trains nor saves its weights (checkpoints stay the cached path's)."""
    def encode(images):
        return trunk(images, training=False)
    return encode


def _trunk_features(trunk, files: list[str], batch_size: int = 32) -> np.ndarray:
    """float16 conv4 maps of the decodable `files`, through data.images (the one image path)."""
    from data.images import decode_batch
    encode, maps = encode_function(trunk), []
    for start in range(0, len(files), batch_size):
        data = [Path(file).read_bytes() for file in files[start:start + batch_size]]
        images, errors = decode_batch(tf.constant(data))
        good = [i for i, error in enumerate(errors.numpy()) if not error]
        if good:
            maps.append(encode(tf.gather(images, good)).numpy().astype(np.float16))
    if not maps:
        raise DatasetError("no training image could be decoded")
    return np.concatenate(maps)


def default_cache_dir(data, encoder_config: EncoderConfig, kind: str = "pooled") -> Path:
    """cache/<data folder name or "builtin">-<encoder id>[-spatial|-conv4], with path-unsafe
    characters replaced."""
    kind = check_kind(kind)
    source = Path(data).resolve().name if data else "builtin"
    suffix = "" if kind == "pooled" else f"-{kind}"
    return CACHE_ROOT / f"{source}-{encoder_id(encoder_config)}{suffix}".replace(
        "/", "_").replace(":", "_")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m model.features", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="Flickr30k/Flickr8k folder in any known layout; omit for "
                                       "the built-in generated dataset")
    parser.add_argument("--cache-dir", help="feature cache folder (default: cache/<data>-<encoder>)")
    parser.add_argument("--encoder-weights",
                        help="imagenet | random | path to a local ResNet50 notop .h5 file "
                             "(default: random for the built-in data, imagenet otherwise)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --encoder-weights random")
    parser.add_argument("--batch-size", type=_positive_int, default=32,
                        help="images per encoder call (default 32)")
    parser.add_argument("--kind", choices=sorted(FEATURE_KINDS), default="pooled",
                        help="the kind of feature: pooled (2048-d vectors, the default), spatial "
                             "(7x7x2048 maps, float16, ~200 kB per image, for the attention "
                             "family) or conv4 (14x14x1024 float16, ~400 kB per image, for "
                             "--fine-tune-encoder)")
    return parser.parse_args(argv)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    weights = args.encoder_weights or ("imagenet" if args.data else "random")
    config = EncoderConfig(weights=weights, seed=args.seed)
    try:
        dataset = open_dataset(args.data)
        cache_dir = Path(args.cache_dir or default_cache_dir(args.data, config, kind=args.kind))
        result = ensure_features(dataset.images, cache_dir, config, kind=args.kind,
                                 batch_size=args.batch_size)
    except (DatasetError, EncoderWeightsError, FeatureCacheError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"dataset: {dataset.root} ({dataset.layout}), {len(dataset.images)} images, "
          f"{dataset.num_captions} captions; {dataset.skipped.summary()}")
    print(f"feature cache: {cache_dir}  encoder: {encoder_id(config)}")
    print(result.report.summary())
    for reason, examples in result.skipped.as_dict()["examples"].items():
        print(f"  {reason}: e.g. {', '.join(examples)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
