"""Train/val/test splits by image, never by caption row (all captions of an image stay together).

Karpathy's split is used when the dataset carries it (every image has .split). Otherwise images
are ordered by sha1(name) and cut at the given fractions: the result depends only on the set of
image names, not on the order they were read in, and is the same on every machine.
"""
from __future__ import annotations

import hashlib
import math

from data.layouts import CaptionDataset, ImageCaptions

SPLITS: tuple[str, ...] = ("train", "val", "test")
KARPATHY_FRACTIONS = (29000 / 31014, 1014 / 31014, 1000 / 31014)
_SPLIT_NAMES = {"train": "train", "restval": "train", "val": "val", "validation": "val",
                "test": "test"}


def uses_karpathy_split(ds: CaptionDataset) -> bool:
    """True when split_dataset will follow the dataset's own (Karpathy) split."""
    return bool(ds.images) and all(image.split is not None for image in ds.images)


def split_dataset(ds: CaptionDataset,
                  fractions=KARPATHY_FRACTIONS) -> dict[str, list[ImageCaptions]]:
    """{"train": [...], "val": [...], "test": [...]} of whole images.

    Karpathy's split when every image has one ("restval" counts as train), else a deterministic
    split by sha1(image name) with exactly `fractions` of the images (largest remainders; every
    split with a positive fraction gets at least one image when there are enough images).
    """
    if uses_karpathy_split(ds):
        splits = {name: [] for name in SPLITS}
        for image in ds.images:
            if image.split not in _SPLIT_NAMES:
                raise ValueError(f"image {image.name} has split {image.split!r}; expected one "
                                 f"of {', '.join(_SPLIT_NAMES)}")
            splits[_SPLIT_NAMES[image.split]].append(image)
        return splits
    sizes = split_sizes(len(ds.images), fractions)
    ordered = sorted(ds.images, key=lambda image: (_name_hash(image.name), image.name))
    splits, start = {}, 0
    for name, size in zip(SPLITS, sizes):
        splits[name] = ordered[start:start + size]
        start += size
    return splits


def split_sizes(n: int, fractions=KARPATHY_FRACTIONS) -> tuple[int, int, int]:
    """Image counts per split summing to n, as close to n * fraction as whole numbers allow."""
    fractions = _check_fractions(fractions)
    exact = [n * f for f in fractions]
    sizes = [math.floor(x) for x in exact]
    # Hand out the remaining images to the largest remainders (ties: earlier split first).
    by_remainder = sorted(range(3), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in by_remainder[:n - sum(sizes)]:
        sizes[i] += 1
    # A tiny dataset would otherwise leave val or test empty; take one image from the largest.
    wanted = [i for i in range(3) if fractions[i] > 0]
    if n >= len(wanted):
        for i in wanted:
            if sizes[i] == 0:
                sizes[max(range(3), key=lambda j: sizes[j])] -= 1
                sizes[i] = 1
    return tuple(sizes)


def _check_fractions(fractions) -> tuple[float, float, float]:
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(
            sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must be three non-negative numbers (train, val, test) "
                         f"summing to 1, got {fractions}")
    return fractions


def _name_hash(name: str) -> str:
    return hashlib.sha1(name.encode("utf-8")).hexdigest()
