"""Look at a dataset folder before spending time on features: layout, counts, skipped lines,
splits and the training vocabulary.

    python -m data.inspect datasets/flickr30k            # human-readable
    python -m data.inspect datasets/flickr30k --json     # one JSON object on stdout
    python -m data.inspect                               # the built-in dataset (generated if absent)

Exit code 2 with a one-line message on stderr for unusable input (no traceback).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from data.builtin import ensure_builtin
from data.files import BUILTIN_ROOT
from data.layouts import CaptionDataset, SkipReport, load_dataset
from data.splits import SPLITS, split_dataset, uses_karpathy_split
from data.vocabulary import Vocabulary, VocabularyError


def inspect_dataset(root, min_count: int = 5) -> dict:
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
        "split_mode": "karpathy" if uses_karpathy_split(dataset) else "sha1",
        "splits": {name: {"images": len(splits[name]),
                          "captions": sum(len(image.captions) for image in splits[name])}
                   for name in SPLITS},
        "vocabulary": {"size": len(vocabulary), "min_count": min_count,
                       "coverage": round(vocabulary.coverage, 6),
                       "built_from": "train split"},
    }


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
    ])


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
    args = parser.parse_args(argv)
    if args.min_count < 1:
        parser.error(f"--min-count must be >= 1, got {args.min_count}")
    try:
        root = args.dir if args.dir is not None else ensure_builtin()
        report = inspect_dataset(root, min_count=args.min_count)
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
