"""A data dir of TFDS's own coco_captions builder as --data: TFDS's reading mocked with
tfds.testing.mock_data over the generator's COCO 2014 files (its automatic random examples fail
on coco_captions' "objects" sequence: tensorflow/datasets#4125), everything after it real."""
import json

import tensorflow as tf
import tensorflow_datasets as tfds

from data import builtin
from data.layouts import load_dataset
from data.sources import is_tfds_dir, open_dataset
from data.splits import split_dataset


def test_coco_captions_data_dir_reads_like_the_download_it_came_from(tmp_path, monkeypatch):
    coco = builtin.generate_builtin(tmp_path / "coco", 16, seed=0, layout="coco2014")
    entries = json.loads((coco / "dataset_coco.json").read_text())["images"]
    on_disk = [e for e in entries if (coco / e["filepath"] / e["filename"]).is_file()]

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        assert "image" in decoders  # read back encoded: data.images decodes
        rows = [e for e in on_disk if e["split"] == str(split)]
        return tf.data.Dataset.from_generator(lambda: ({
            "image": (coco / e["filepath"] / e["filename"]).read_bytes(),
            "image/filename": e["filename"], "image/id": e["cocoid"],
            "captions": {"text": [s["raw"] for s in e["sentences"]],
                         "id": list(range(len(e["sentences"])))}} for e in rows),
            output_signature={"image": tf.TensorSpec([], tf.string),
                              "image/filename": tf.TensorSpec([], tf.string),
                              "image/id": tf.TensorSpec([], tf.int64),
                              "captions": {"text": tf.TensorSpec([None], tf.string),
                                           "id": tf.TensorSpec([None], tf.int64)}})

    data_dir = tmp_path / "tfds"
    (data_dir / "coco_captions").mkdir(parents=True)
    assert is_tfds_dir(data_dir)
    monkeypatch.chdir(tmp_path)  # materialised files go under ./datasets/from-tfds
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        from_tfds = open_dataset(data_dir)
    direct = load_dataset(coco)
    assert from_tfds.layout == "karpathy_json"
    assert from_tfds.caption_file.name == "dataset_coco.json"
    assert sorted((i.name, i.image_id, i.captions) for i in from_tfds.images) == sorted(
        (i.name, i.image_id, i.captions) for i in direct.images)
    assert {i.path.parent.name for i in from_tfds.images} == {"train2014", "val2014"}
    assert {k: sorted(i.name for i in v) for k, v in split_dataset(from_tfds).items()} == {
        k: sorted(i.name for i in v) for k, v in split_dataset(direct).items()}
