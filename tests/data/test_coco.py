"""MS-COCO's layouts, written by the project's generator (data/builtin.py, layout="coco2014" /
"coco2017") with the real files' quirks: the official captions_{train,val}YEAR.json files, Karpathy's
dataset_coco.json, their splits, the COCO ids they carry, and data.inspect's report on them."""
import json
import shutil

import pytest

from data import builtin
from data import inspect as inspect_cli
from data.feature_kinds import FEATURE_KINDS
from data.inspect import inspect_dataset
from data.layouts import (HELDOUT, MISSING_IMAGE, NO_CAPTIONS, UNLISTED_IMAGE, DatasetError,
                          detect_layout, load_dataset)
from data.splits import heldout_sizes, split_dataset, split_mode

NUM_IMAGES = 40


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """coco(layout) -> a generated folder: "coco2014" (official files + dataset_coco.json),
    "coco2014_official" (the same without Karpathy's file), "coco2017"."""
    base = tmp_path_factory.mktemp("coco")
    made = {}

    def folder(layout: str):
        if layout not in made:
            root = base / layout
            if layout == "coco2014_official":
                shutil.copytree(folder("coco2014"), root)
                (root / "dataset_coco.json").unlink()
            else:
                builtin.generate_builtin(root, NUM_IMAGES, seed=0, layout=layout)
            made[layout] = root
        return made[layout]
    return folder


def annotations(root, release: str) -> dict:
    return json.loads((root / "annotations" / f"captions_{release}.json").read_text())


def expected_images(root, year: int) -> dict:
    """{file name: (COCO id, stripped captions, release)} from the generated official files: every
    listed image that is on disk (the quirks manifest names the missing one)."""
    missing = set(json.loads((root / "builtin.json").read_text())["quirks"]["missing_on_disk"])
    images = {}
    for release in (f"train{year}", f"val{year}"):
        data = annotations(root, release)
        names = {image["id"]: image["file_name"] for image in data["images"]}
        for annotation in sorted(data["annotations"], key=lambda a: a["id"]):
            if annotation["image_id"] in names and annotation["image_id"] not in missing:
                name = names[annotation["image_id"]]
                images.setdefault(name, (annotation["image_id"], [], release))[1].append(
                    annotation["caption"])
    return images


@pytest.mark.parametrize("layout,year", [("coco2014_official", 2014), ("coco2017", 2017)])
def test_official_files_read_with_every_quirk_counted(coco, layout, year):
    root = coco(layout)
    assert detect_layout(root) == ("coco_official",
                                   (root / "annotations" / f"captions_train{year}.json").resolve())
    ds = load_dataset(root)
    expected = expected_images(root, year)
    assert ds.layout == "coco_official" and ds.image_dir == root.resolve()
    assert {image.name for image in ds.images} == set(expected)
    for image in ds.images:
        image_id, raw, release = expected[image.name]
        assert image.image_id == image_id and image.path == root.resolve() / release / image.name
        assert len(image.captions) == len(raw)  # 5, 6 or 7, all kept
        assert all(c == c.strip() and c == c.lower() and "\n" not in c for c in image.captions)
        assert image.split == ("train" if release.startswith("train") else HELDOUT)
    assert {len(image.captions) for image in ds.images} == {5, 6, 7}
    name_2017 = f"{expected[ds.images[0].name][0]:012d}.jpg"
    assert ds.images[0].name == (name_2017 if year == 2017 else f"COCO_train2014_{name_2017}")
    # The missing image's captions and the unlisted annotations are skipped and counted.
    missing_captions = sum(1 for a in annotations(root, f"train{year}")["annotations"]
                           if a["image_id"] in json.loads((root / "builtin.json").read_text())
                           ["quirks"]["missing_on_disk"])
    assert dict(ds.skipped.counts) == {MISSING_IMAGE: missing_captions, UNLISTED_IMAGE: 2}
    assert ds.skipped.examples[UNLISTED_IMAGE][0].startswith(f"captions_train{year}.json:annotations[")


def test_karpathy_coco_json_wins_and_keeps_its_split(coco):
    root = coco("coco2014")
    assert detect_layout(root) == ("karpathy_json", (root / "dataset_coco.json").resolve())
    ds = load_dataset(root)
    entries = {e["filename"]: e for e in json.loads((root / "dataset_coco.json").read_text())
               ["images"]}
    official = expected_images(root, 2014)
    assert {image.name for image in ds.images} == set(official)
    for image in ds.images:
        entry = entries[image.name]
        assert image.image_id == entry["cocoid"] == official[image.name][0]
        assert image.path == root.resolve() / entry["filepath"] / image.name
        assert len(image.captions) == len(entry["sentences"])
    splits = split_dataset(ds)
    assert split_mode(ds) == "karpathy"
    for split, images in splits.items():  # restval joins train, the rest exactly as written
        wanted = {"train": {"train", "restval"}}.get(split, {split})
        assert {entries[image.name]["split"] for image in images} == wanted
    assert sum(map(len, splits.values())) == len(ds.images)


def test_official_split_draws_val_and_test_from_the_val_release_by_image(coco):
    ds = load_dataset(coco("coco2014_official"))
    splits = split_dataset(ds)
    assert split_mode(ds) == "coco_val_release"
    release = {image.name: image.path.parent.name for image in ds.images}
    assert {release[image.name] for image in splits["train"]} == {"train2014"}
    assert {release[image.name] for s in ("val", "test") for image in splits[s]} == {"val2014"}
    assert len(splits["val"]) == len(splits["test"]) == 8  # the 16 val-release images, halved
    names = [{image.name for image in splits[s]} for s in ("train", "val", "test")]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    # Deterministic by image name: the same split from the images in another order.
    ds.images.reverse()
    assert {s: {i.name for i in images} for s, images in split_dataset(ds).items()} == {
        s: {i.name for i in images} for s, images in splits.items()}


def test_heldout_sizes_follow_karpathy_on_the_full_release():
    assert heldout_sizes(40_504) == (30_504, 5_000, 5_000)  # 2014: 82,783 + 30,504 = 113,287 train
    assert heldout_sizes(5_000) == (0, 2_500, 2_500)          # 2017's val release
    assert heldout_sizes(17) == (0, 9, 8) and heldout_sizes(1) == (0, 1, 0)


def test_only_the_val_release_is_enough_to_find_the_images(coco, tmp_path):
    """A user with val2014/ and its captions only: the images are found, train is empty."""
    root = tmp_path / "coco"
    shutil.copytree(coco("coco2014_official") / "val2014", root / "val2014")
    (root / "annotations").mkdir()
    shutil.copy(coco("coco2014_official") / "annotations" / "captions_val2014.json",
                root / "annotations")
    ds = load_dataset(root)
    assert len(ds.images) == 16 and {image.split for image in ds.images} == {HELDOUT}


def test_broken_official_files_give_errors_naming_them(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2014").mkdir()
    path = tmp_path / "annotations" / "captions_val2014.json"
    path.write_text('{"images": [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg"}]}')
    with pytest.raises(DatasetError, match=r"captions_val2014\.json has no \"annotations\" list"):
        load_dataset(tmp_path)
    path.write_text('{"images": [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg"}, '
                    '{"id": 2, "file_name": "x.jpg"}, {"file_name": "no-id.jpg"}], "annotations": '
                    '[{"image_id": 1, "caption": "A dog.\\n"}, {"image_id": 1}]}')
    (tmp_path / "val2014" / "COCO_val2014_000000000001.jpg").write_bytes(b"\xff\xd8 jpeg")
    ds = load_dataset(tmp_path)
    assert [(i.name, i.captions, i.image_id) for i in ds.images] == [
        ("COCO_val2014_000000000001.jpg", ("a dog",), 1)]
    assert dict(ds.skipped.counts) == {"malformed entry": 2, NO_CAPTIONS: 1}


def test_inspect_reports_coco_and_projects_the_cache_exactly(coco, tmp_path):
    report = inspect_dataset(coco("coco2014_official"), min_count=2, cache_dir=tmp_path / "c")
    assert report["layout"] == "coco_official" and report["split_mode"] == "coco_val_release"
    assert report["captions_per_image"]["min"] == 5 and report["captions_per_image"]["max"] == 7
    assert report["skipped"]["counts"][UNLISTED_IMAGE] == 2
    cache = report["feature_cache"]
    assert cache["free_on"] == str(tmp_path) and cache["free_bytes"] > 0
    for kind, (shape, dtype) in FEATURE_KINDS.items():
        row = cache["kinds"][kind]
        feature_bytes = report["images"] * (2 if dtype == "float16" else 4)
        for size in shape:
            feature_bytes *= size
        # the features themselves, plus names, stamps and headers: under 1 KB an image here
        assert 0 < row["bytes"] - feature_bytes < 1_000 * report["images"], kind


def test_inspect_command_prints_coco_layout_splits_and_cache_sizes(coco, capsys, tmp_path):
    assert inspect_cli.main([str(coco("coco2017")), "--min-count", "2",
                             "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "layout:     coco_official (" in out and "captions_train2017.json" in out
    assert "(5-7 per image" in out and "2 annotation of an unlisted image" in out
    assert "(coco_val_release split)" in out
    assert "free: " in out and f"on {tmp_path}" in out
    for kind in FEATURE_KINDS:
        assert f"            {kind} " in out


def test_generator_writes_the_same_bytes_twice_and_refuses_unknown_layouts(tmp_path):
    first = builtin.generate_builtin(tmp_path / "a", 12, seed=3, layout="coco2017")
    second = builtin.generate_builtin(tmp_path / "b", 12, seed=3, layout="coco2017")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    with pytest.raises(ValueError, match="layout must be one of flickr30k, coco2014, coco2017"):
        builtin.generate_builtin(tmp_path / "c", 12, layout="coco2015")
    with pytest.raises(ValueError, match="num_images must be >= 12 for the coco2014 layout"):
        builtin.generate_builtin(tmp_path / "d", 5, layout="coco2014")


def test_karpathy_coco_images_in_one_flat_folder_are_found(coco, tmp_path):
    root = tmp_path / "flat"
    (root / "images").mkdir(parents=True)
    for release in ("train2014", "val2014"):
        for image in (coco("coco2014") / release).iterdir():
            shutil.copy(image, root / "images" / image.name)
    shutil.copy(coco("coco2014") / "dataset_coco.json", root)
    ds = load_dataset(root)
    assert ds.image_dir == (root / "images").resolve()
    assert {image.name for image in ds.images} == {image.name for image in
                                                    load_dataset(coco("coco2014")).images}
