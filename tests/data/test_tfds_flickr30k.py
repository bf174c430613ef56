"""The TFDS builder on small manual-download folders laid out like the real ones, offline."""
import io

import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data.builtin import generate_builtin
from data.layouts import load_dataset
from data.splits import split_dataset
from data.tfds_flickr30k import NAME, Flickr30kCaptions, prepare, tfds_records


def _jpeg(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def kaggle_results_download(root):
    """Like Kaggle's flickr-image-dataset: flickr30k_images/results.csv + nested image folder."""
    images = root / "flickr30k_images" / "flickr30k_images"
    images.mkdir(parents=True)
    lines = ["image_name| comment_number| comment"]
    for i in range(12):
        (images / f"{1000 + i}.jpg").write_bytes(_jpeg((20 * i, 100, 200)))
        lines += [f"{1000 + i}.jpg| {n}| Picture {i} , caption {n} ." for n in range(3)]
    lines.append("404.jpg| 0| not downloaded")
    (root / "flickr30k_images" / "results.csv").write_text("\n".join(lines) + "\n")
    return root


def test_builder_name_and_manual_instructions():
    assert Flickr30kCaptions.name == NAME == "flickr30k_captions"
    assert "captions.txt" in Flickr30kCaptions.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_prepare_kaggle_layout_then_tfds_load(tmp_path):
    manual = kaggle_results_download(tmp_path / "manual")
    data_dir = tmp_path / "tfds"
    builder = prepare(manual, data_dir)
    expected = split_dataset(load_dataset(manual))   # the same reader and split, no second one
    tfds_names = {"train": "train", "val": "validation", "test": "test"}
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
        tfds_names[k]: len(v) for k, v in expected.items()}
    assert builder.info.metadata["layout"] == "kaggle_results_csv"
    assert builder.info.metadata["skipped"]["counts"] == {"missing image": 1}

    # A plain tfds.load by name finds the prepared data.
    train = tfds.load(NAME, data_dir=str(data_dir), split="train")
    examples = {ex["image_name"].decode(): ex for ex in tfds.as_numpy(train)}
    want = {image.name: image for image in expected["train"]}
    assert examples.keys() == want.keys()
    for name, ex in examples.items():
        assert ex["image"].shape == (16, 24, 3)
        assert [c.decode() for c in ex["captions"]] == list(want[name].captions)

    # Encoded bytes are the original files, untouched.
    records = list(tfds_records(data_dir, "val"))
    assert [r[0] for r in sorted(records)] == sorted(i.name for i in expected["val"])
    for name, encoded, captions in records:
        assert encoded == (manual / "flickr30k_images" / "flickr30k_images" / name).read_bytes()
        assert captions[0].startswith("picture ")


def test_prepare_builtin_karpathy_layout(tmp_path):
    manual = generate_builtin(tmp_path / "builtin", num_images=20, seed=0)
    data_dir = tmp_path / "tfds"
    builder = prepare(manual, data_dir)
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
        "train": 16, "validation": 2, "test": 2}
    assert builder.info.metadata["split_mode"] == "karpathy"
    # tfds_records also takes the version folder itself.
    version_dir = data_dir / NAME / "1.0.0"
    test = list(tfds_records(version_dir, "test"))
    karpathy_test = [i for i in load_dataset(manual).images if i.split == "test"]
    assert sorted(r[0] for r in test) == sorted(i.name for i in karpathy_test)
    assert all(len(r[2]) == 5 and r[1][:3] == b"\xff\xd8\xff" for r in test)


def test_records_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no prepared flickr30k_captions dataset"):
        list(tfds_records(tmp_path, "train"))
