"""Train/val/test splits by image, never by caption row (all captions of an image stay together).

Karpathy's split is used when the dataset carries it (every image has .split). Otherwise images
are ordered by sha1(name) and cut at the given fractions: the result depends only on the set of
image names, not on the order they were read in, and is the same on every machine.

COCO's official files carry half a split: the train release is train, the val release (split
HELDOUT) is drawn into val and test by the same sha1 order, Karpathy's sizes: the first 5,000 val,
the next 5,000 test, the rest train (as Karpathy's restval), so 2014 gives 113,287 / 5,000 / 5,000
images like Karpathy's split (other images: use dataset_coco.json for comparable figures). A val
release under 10,000 images is cut in half (2017's 5,000: 2,500 / 2,500).
"""
from __future__ import annotations

import hashlib
import math

from data.layouts import HELDOUT, CaptionDataset, ImageCaptions

SPLITS: tuple[str, ...] = ("train", "val", "test")
KARPATHY_FRACTIONS = (29000 / 31014, 1014 / 31014, 1000 / 31014)
COCO_HELDOUT_IMAGES = 5000  # Karpathy's COCO val and test size, drawn from the val release
_SPLIT_NAMES = {"train": "train", "restval": "train", "val": "val", "validation": "val",
                "test": "test"}


def uses_karpathy_split(ds: CaptionDataset) -> bool:
    """True when split_dataset will follow the dataset's own (Karpathy) split."""
    return bool(ds.images) and all(image.split is not None for image in ds.images)


def split_mode(ds: CaptionDataset) -> str:
    """How split_dataset splits `ds`: "karpathy" (its own split), "coco_val_release" (COCO's
    official files: the val release drawn into val and test) or "sha1"."""
    if not uses_karpathy_split(ds):
        return "sha1"
    return "coco_val_release" if any(image.split == HELDOUT for image in ds.images) else "karpathy"


def split_dataset(ds: CaptionDataset,
                  fractions=KARPATHY_FRACTIONS) -> dict[str, list[ImageCaptions]]:
    """{"train": [...], "val": [...], "test": [...]} of whole images.

    Karpathy's split when every image has one ("restval" counts as train; COCO's val release,
    HELDOUT, is drawn into val, test and train by heldout_sizes), else a deterministic
    split by sha1(image name) with exactly `fractions` of the images (largest remainders; every
    split with a positive fraction gets at least one image when there are enough images).
    """
    if uses_karpathy_split(ds):
        splits = {name: [] for name in SPLITS}
        heldout = [image for image in ds.images if image.split == HELDOUT]
        for image in ds.images:
            if image.split == HELDOUT:
                continue
            if image.split not in _SPLIT_NAMES:
                raise ValueError(f"image {image.name} has split {image.split!r}; expected one "
                                 f"of {', '.join(_SPLIT_NAMES)}")
            splits[_SPLIT_NAMES[image.split]].append(image)
        rest, val, test = heldout_sizes(len(heldout))
        drawn = _cut(heldout, (val, test, rest))  # sha1 order: val first, then test, then train
        for split, images in zip(("val", "test", "train"), drawn):
            splits[split] += images
        return splits
    return dict(zip(SPLITS, _cut(ds.images, split_sizes(len(ds.images), fractions))))


def heldout_sizes(n: int) -> tuple[int, int, int]:
    """(train, val, test) image counts of a COCO val release of n images: 5,000 val and 5,000
    test, the rest train; under 10,000 images half val, half test (an odd one to val)."""
    val = test = min(COCO_HELDOUT_IMAGES, n // 2)
    if n < 2 * COCO_HELDOUT_IMAGES:
        val = n - test
    return n - val - test, val, test


def _cut(images: list[ImageCaptions], sizes) -> list[list[ImageCaptions]]:
    """`images` in sha1(name) order cut into consecutive runs of `sizes` (summing to the count)."""
    ordered = sorted(images, key=lambda image: (_name_hash(image.name), image.name))
    runs, start = [], 0
    for size in sizes:
        runs.append(ordered[start:start + size])
        start += size
    return runs


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
