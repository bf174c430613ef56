"""--data accepts a dataset folder, a prepared TFDS dir, or nothing (the built-in data)."""
from data.layouts import load_dataset
from data.sources import open_dataset, materialize_tfds
from data.splits import split_dataset


def test_tfds_dir_reads_like_the_folder_it_came_from(small_builtin, tmp_path, monkeypatch):
    import data.tfds_flickr30k as f30k
    monkeypatch.chdir(tmp_path)  # materialised files go under ./datasets/from-tfds
    f30k.prepare(small_builtin, data_dir=tmp_path / "tfds")
    from_tfds = open_dataset(tmp_path / "tfds")
    direct = load_dataset(small_builtin)
    assert from_tfds.layout == "karpathy_json"
    assert sorted((i.name, i.captions) for i in from_tfds.images) == \
        sorted((i.name, i.captions) for i in direct.images)
    a, b = split_dataset(from_tfds), split_dataset(direct)
    assert {k: sorted(i.name for i in v) for k, v in a.items()} == \
        {k: sorted(i.name for i in v) for k, v in b.items()}
    # second call reuses the materialised folder
    assert materialize_tfds(tmp_path / "tfds") == materialize_tfds(tmp_path / "tfds")


def test_folder_is_read_directly(small_builtin):
    assert len(open_dataset(small_builtin).images) == len(load_dataset(small_builtin).images)
