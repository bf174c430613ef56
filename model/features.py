"""Extract ResNet50 image features of a dataset into the feature cache (data/feature_cache.py).

    python -m model.features                       # built-in dataset, random encoder weights
    python -m model.features --data ~/flickr30k    # ImageNet weights (downloaded once)
    python -m model.features --data ~/flickr30k \\
        --encoder-weights ~/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5
    python -m model.features --data ~/flickr30k --spatial   # 7x7x2048 maps, for attention

The cache defaults to cache/<data folder name>-<encoder id> (+ "-spatial"), the folder
`python -m model.train` uses, so training afterwards finds the features ready. Spatial maps are
stored as float16, 7 * 7 * 2048 * 2 = 200,704 bytes per image (about 6.4 GB for Flickr30k);
the summary prints the size measured on the files written. Interrupted? Run the same command
again: finished shards are kept. Bad images are counted by reason, never fatal.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from data.feature_cache import ExtractionReport, FeatureCacheError, extract_features, load_features
from data.layouts import DatasetError, ImageCaptions, SkipReport
from data.sources import open_dataset
from model.encoder import (FEATURE_DIM, SPATIAL_SHAPE, EncoderConfig, EncoderWeightsError,
                           build_encoder, encoder_id)


class Features(NamedTuple):
    """What ensure_features returns; unpacks like a tuple (report, names, features, skipped)."""
    report: ExtractionReport
    names: list[str]  # images with features, in the order of the images passed
    # float32 [len(names), 2048], or float16 [len(names), 7, 7, 2048] when spatial;
    # row i belongs to names[i]
    features: np.ndarray
    skipped: SkipReport  # images without features, by reason: merge into the dataset's report


def ensure_features(images: Sequence[ImageCaptions], cache_dir, encoder_config: EncoderConfig,
                    *, spatial: bool = False, batch_size: int = 32, progress: bool = True,
                    lock_wait_seconds: float = 0) -> Features:
    """Features of `images`, extracting only what the cache lacks.

    spatial=True: ResNet50's 7x7x2048 maps stored as float16, for the attention decoder, in a
    cache of their own (default_cache_dir(..., spatial=True)). The encoder is built only when
    something must be computed, so a complete cache works offline even for ImageNet weights that
    are not on this machine.
    """
    identity = encoder_id(encoder_config)
    shape, dtype = (SPATIAL_SHAPE, "float16") if spatial else ((FEATURE_DIM,), "float32")
    report = extract_features([(image.name, image.path) for image in images],
                              lambda: build_encoder(encoder_config, spatial=spatial), cache_dir,
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


def default_cache_dir(data, encoder_config: EncoderConfig, spatial: bool = False) -> Path:
    """cache/<data folder name or "builtin">-<encoder id>[-spatial], with path-unsafe characters
    replaced."""
    source = Path(data).resolve().name if data else "builtin"
    suffix = "-spatial" if spatial else ""
    return Path("cache") / f"{source}-{encoder_id(encoder_config)}{suffix}".replace(
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
    parser.add_argument("--spatial", action="store_true",
                        help="store ResNet50's 7x7x2048 maps (float16, ~200 kB per image) for "
                             "the attention decoder instead of the pooled 2048-d vectors")
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
        cache_dir = Path(args.cache_dir or default_cache_dir(args.data, config, args.spatial))
        result = ensure_features(dataset.images, cache_dir, config, spatial=args.spatial,
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
