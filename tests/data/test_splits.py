"""Splits are by image: no image in two splits, exact proportions, independent of input order."""
import pathlib
import random

import pytest

from data.layouts import CaptionDataset, ImageCaptions, SkipReport, load_dataset
from data.splits import KARPATHY_FRACTIONS, split_dataset, split_sizes, uses_karpathy_split


def dataset(n, splits=None):
    images = [ImageCaptions(name=f"{i}.jpg", path=pathlib.Path(f"/x/{i}.jpg"),
                            captions=(f"caption {i}", f"another {i}"),
                            split=splits[i] if splits else None) for i in range(n)]
    return CaptionDataset(root=pathlib.Path("/x"), layout="kaggle_captions_txt", images=images,
                          skipped=SkipReport())


def names(splits):
    return {key: [image.name for image in value] for key, value in splits.items()}


def assert_disjoint_cover(splits, ds):
    seen = [image.name for part in splits.values() for image in part]
    assert len(seen) == len(set(seen)), "an image is in two splits"
    assert set(seen) == {image.name for image in ds.images}


def test_hash_split_disjoint_exact_and_stable_under_shuffling():
    ds = dataset(1000)
    splits = split_dataset(ds)
    assert list(splits) == ["train", "val", "test"]
    assert_disjoint_cover(splits, ds)
    # 1000 * fractions = 935.06, 32.69, 32.24 -> largest remainder gives val the spare image
    assert [len(splits[k]) for k in splits] == [935, 33, 32]
    shuffled = dataset(1000)
    random.Random(7).shuffle(shuffled.images)
    assert names(split_dataset(shuffled)) == names(splits)
    assert not uses_karpathy_split(ds)


def test_hash_split_depends_on_names_not_positions():
    # Adding images moves few existing ones: the split is a property of each name's hash.
    small = names(split_dataset(dataset(200), (0.8, 0.1, 0.1)))
    big = names(split_dataset(dataset(201), (0.8, 0.1, 0.1)))
    moved = sum(name not in big[key] for key in small for name in small[key])
    assert moved <= 2


def test_split_sizes_exact_and_small_datasets_get_every_split():
    assert split_sizes(31014) == (29000, 1014, 1000)
    assert split_sizes(10, (0.8, 0.1, 0.1)) == (8, 1, 1)
    assert split_sizes(3) == (1, 1, 1)
    assert split_sizes(5) == (3, 1, 1)
    assert split_sizes(2) == (2, 0, 0)
    assert sum(split_sizes(12345, (0.7, 0.2, 0.1))) == 12345
    with pytest.raises(ValueError, match="summing to 1"):
        split_sizes(10, (0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="three non-negative"):
        split_sizes(10, (1.2, -0.2, 0.0))


def test_karpathy_split_used_when_every_image_has_one():
    labels = ["train", "val", "test", "train", "train", "test", "val", "train"]
    ds = dataset(8, labels)
    splits = split_dataset(ds)
    assert uses_karpathy_split(ds)
    assert_disjoint_cover(splits, ds)
    assert names(splits) == {"train": ["0.jpg", "3.jpg", "4.jpg", "7.jpg"],
                             "val": ["1.jpg", "6.jpg"], "test": ["2.jpg", "5.jpg"]}


def test_restval_is_train_and_partial_split_falls_back_to_hash():
    ds = dataset(4, ["restval", "val", "test", "train"])
    assert names(split_dataset(ds))["train"] == ["0.jpg", "3.jpg"]
    partial = dataset(4, ["train", None, "test", "val"])
    assert not uses_karpathy_split(partial)
    assert [len(v) for v in split_dataset(partial).values()] == [2, 1, 1]
    with pytest.raises(ValueError, match="split 'dev'"):
        split_dataset(dataset(2, ["dev", "train"]))


def test_caption_rows_of_one_image_never_straddle_splits(tmp_path):
    """Read from a real file where each image has five caption rows, interleaved."""
    (tmp_path / "Images").mkdir()
    rows = ["image,caption"]
    for n in range(5):
        for i in range(60):
            rows.append(f"{i}.jpg,caption number {n} of image {i}")
    for i in range(60):
        (tmp_path / "Images" / f"{i}.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "captions.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    ds = load_dataset(tmp_path)
    splits = split_dataset(ds)
    assert_disjoint_cover(splits, ds)
    assert all(len(image.captions) == 5 for part in splits.values() for image in part)
    assert sum(len(image.captions) for part in splits.values() for image in part) == 300
    assert [len(v) for v in splits.values()] == list(split_sizes(60, KARPATHY_FRACTIONS))
