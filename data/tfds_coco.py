"""MS-COCO from a data dir prepared by TensorFlow Datasets' own `coco_captions` builder (COCO 2014
with Karpathy's split: train, restval, val, test), read back as encoded image bytes with their COCO
ids and captions. data.sources writes them once as COCO's folders plus dataset_coco.json, so they
go through the same reader, split and feature cache as a downloaded COCO.
"""
from __future__ import annotations

import pathlib
from typing import Iterator

import tensorflow_datasets as tfds

NAME = "coco_captions"
SPLITS = ("train", "restval", "val", "test")  # Karpathy's; restval joins train (data.layouts)


def is_coco_tfds_dir(path) -> bool:
    """True for a TFDS data_dir holding a prepared coco_captions dataset."""
    return (pathlib.Path(path) / NAME).is_dir()


def coco_records(data_dir, split: str) -> Iterator[tuple[str, int, bytes, list[str]]]:
    """(file name such as COCO_val2014_000000391895.jpg, COCO image id, encoded image bytes,
    captions) of one split of the coco_captions dataset prepared in `data_dir`; images are not
    decoded (data.images decodes them, as for every other source)."""
    if split not in SPLITS:
        raise ValueError(f"coco_captions split must be one of {', '.join(SPLITS)}, got {split!r}")
    builder = tfds.builder(NAME, data_dir=str(data_dir))
    dataset = builder.as_dataset(split=split, shuffle_files=False,
                                 decoders={"image": tfds.decode.SkipDecoding()})
    for example in dataset.as_numpy_iterator():
        yield (example["image/filename"].decode("utf-8"), int(example["image/id"]),
               bytes(example["image"]),
               [text.decode("utf-8") for text in example["captions"]["text"]])
