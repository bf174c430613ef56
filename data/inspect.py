"""Look at a dataset folder before spending time on features: layout, counts, skipped lines,
splits, the training vocabulary, and the size on disk each kind of feature cache will take beside
the free space where it goes.

    python -m data.inspect datasets/flickr30k            # human-readable
    python -m data.inspect datasets/flickr30k --json     # one JSON object on stdout
    python -m data.inspect                               # the built-in dataset (generated if absent)

Exit code 2 with a one-line message on stderr for unusable input (no traceback).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys

if __name__ == "__main__":  # a command: TensorFlow's start-up noise is hidden before anything loads it
    from data.quiet import quiet_command
    quiet_command()

from data.builtin import ensure_builtin
from data.feature_cache import projected_cache_bytes
from data.feature_kinds import FEATURE_KINDS
from data.files import BUILTIN_ROOT, CACHE_ROOT
from data.layouts import CaptionDataset, SkipReport, load_dataset
from data.splits import SPLITS, split_dataset, split_mode
from data.vocabulary import Vocabulary, VocabularyError


def inspect_dataset(root, min_count: int = 5, cache_dir=CACHE_ROOT) -> dict:
    """Everything the command prints, as a JSON-ready dict."""
    dataset = load_dataset(root)
    splits = split_dataset(dataset)
    vocabulary = Vocabulary.build((c for image in splits["train"] for c in image.captions),
                                  min_count=min_count)
    return {
        "root": str(dataset.root),
        "layout": dataset.layout,
        "caption_file": str(dataset.caption_file),
        "image_dir": str(dataset.image_dir),
        "images": len(dataset.images),
        "captions": dataset.num_captions,
        "captions_per_image": _captions_per_image(dataset),
        "skipped": dataset.skipped.as_dict(),
        "split_mode": split_mode(dataset),
        "splits": {name: {"images": len(splits[name]),
                          "captions": sum(len(image.captions) for image in splits[name])}
                   for name in SPLITS},
        "vocabulary": {"size": len(vocabulary), "min_count": min_count,
                       "coverage": round(vocabulary.coverage, 6),
                       "built_from": "train split"},
        "feature_cache": feature_cache_projection(dataset, cache_dir),
    }


def feature_cache_projection(dataset: CaptionDataset, cache_dir=CACHE_ROOT) -> dict:
    """Bytes on disk of each kind's complete feature cache of the dataset's images (ImageNet
    weights, every image decoding) and the free bytes of the disk `cache_dir` is (or will be) on."""
    items = [(image.name, image.path) for image in dataset.images]
    kinds = {}
    for kind, (shape, dtype) in FEATURE_KINDS.items():
        total = projected_cache_bytes(items, shape, dtype, progress=len(items) > 20_000)
        kinds[kind] = {"shape": list(shape), "dtype": dtype, "bytes": total,
                       "bytes_per_image": round(total / len(items), 1)}
    existing = pathlib.Path(cache_dir).absolute()
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    return {"images": len(items), "kinds": kinds, "cache_dir": str(cache_dir),
            "free_bytes": free, "free_on": str(existing),
            "fits": {kind: row["bytes"] <= free for kind, row in kinds.items()}}


def _captions_per_image(dataset: CaptionDataset) -> dict:
    counts = [len(image.captions) for image in dataset.images]
    return {"min": min(counts), "max": max(counts), "mean": round(sum(counts) / len(counts), 3)}


def format_report(report: dict) -> str:
    per_image = report["captions_per_image"]
    splits = report["splits"]
    vocabulary = report["vocabulary"]
    skip_summary = SkipReport.from_dict(report["skipped"]).summary().replace("\n", "\n" + " " * 12)
    return "\n".join([
        f"dataset:    {report['root']}",
        f"layout:     {report['layout']} ({report['caption_file']})",
        f"images in:  {report['image_dir']}",
        f"images:     {report['images']}",
        f"captions:   {report['captions']} ({per_image['min']}-{per_image['max']} per image, "
        f"mean {per_image['mean']})",
        f"skipped:    {skip_summary}",
        "splits:     " + ", ".join(f"{name} {splits[name]['images']} images / "
                                    f"{splits[name]['captions']} captions" for name in SPLITS)
        + f" ({report['split_mode']} split)",
        f"vocabulary: {vocabulary['size']} tokens (min count {vocabulary['min_count']}, from the "
        f"train split), coverage {100 * vocabulary['coverage']:.2f}% of train words",
        *_cache_lines(report["feature_cache"]),
    ])


def _cache_lines(cache: dict) -> list[str]:
    lines = [f"features:   a cache of the {cache['images']:,} images, by kind (free: "
             f"{cache['free_bytes'] / 1e9:,.1f} GB on {cache['free_on']}):"]
    for kind, row in cache["kinds"].items():
        shape = "x".join(map(str, row["shape"]))
        room = "" if cache["fits"][kind] else "  DOES NOT FIT: free space or use another --cache-dir"
        lines.append(f"            {kind:<8} {row['dtype']} [{shape}]: {row['bytes'] / 1e9:,.2f} GB "
                     f"({row['bytes_per_image']:,.0f} bytes per image){room}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data.inspect",
        description="Report a caption dataset's layout, counts, skipped lines, splits and "
                    "vocabulary without extracting features.")
    parser.add_argument("dir", nargs="?", type=pathlib.Path,
                        help=f"dataset folder (default: the built-in dataset in {BUILTIN_ROOT}, "
                             "generated if absent)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--min-count", type=int, default=5,
                        help="vocabulary minimum word count (default 5)")
    parser.add_argument("--cache-dir", type=pathlib.Path, default=CACHE_ROOT,
                        help=f"where the feature caches will go, for their free space (default "
                             f"{CACHE_ROOT}/)")
    args = parser.parse_args(argv)
    if args.min_count < 1:
        parser.error(f"--min-count must be >= 1, got {args.min_count}")
    try:
        root = args.dir if args.dir is not None else ensure_builtin()
        report = inspect_dataset(root, min_count=args.min_count, cache_dir=args.cache_dir)
    except (ValueError, VocabularyError, OSError) as error:  # DatasetError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
