"""Every caption-file layout, with the tricky lines real downloads contain."""
import io
import json
import pathlib

import pytest
from PIL import Image

from data.layouts import (LAYOUTS, CaptionDataset, DatasetError, SkipReport, detect_layout,
                          load_dataset)


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


JPEG = _jpeg()


def make_images(folder: pathlib.Path, names, empty=()) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(JPEG)
    for name in empty:
        (folder / name).write_bytes(b"")
    return folder


def by_name(ds: CaptionDataset) -> dict:
    return {image.name: image for image in ds.images}


# --- Kaggle captions.txt ---------------------------------------------------------------------

def test_kaggle_captions_txt_with_tricky_lines(tmp_path):
    make_images(tmp_path / "Images", ["1.jpg", "2.jpg", "3.jpg"], empty=["zero.jpg"])
    lines = [
        "image,caption",                                          # 1 header
        '1.jpg,"A dog, brown and white, runs ."',                 # 2 quoted commas
        "1.jpg,A dog runs on the grass .",                        # 3
        "1.jpg,A dog runs on the grass .",                        # 4 duplicate line
        "2.jpg,Un garçon à vélo sur la route",                    # 5 non-ASCII
        "2.jpg, ... ",                                            # 6 empty after cleaning
        "missing.jpg,A cat sleeps .",                             # 7 missing image
        "3.jpg",                                                  # 8 one field
        "3.jpg,A man , unquoted comma",                           # 9 three fields
        "",                                                       # 10 blank, ignored
        "3.jpg,A man's T-shirt is RED.",                          # 11
        "zero.jpg,An empty file .",                               # 12 0-byte image
    ]
    # BOM + CRLF, as written by Windows tools.
    (tmp_path / "captions.txt").write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n")
                                            .encode("utf-8"))
    assert detect_layout(tmp_path) == ("kaggle_captions_txt",
                                       (tmp_path / "captions.txt").resolve())
    ds = load_dataset(tmp_path)
    images = by_name(ds)
    assert ds.layout == "kaggle_captions_txt"
    assert list(images) == ["1.jpg", "2.jpg", "3.jpg"]
    assert images["1.jpg"].captions == ("a dog brown and white runs", "a dog runs on the grass")
    assert images["2.jpg"].captions == ("un garçon à vélo sur la route",)
    assert images["3.jpg"].captions == ("a mans t shirt is red",)
    assert images["1.jpg"].path == (tmp_path / "Images" / "1.jpg").resolve()
    assert images["1.jpg"].path.is_absolute() and images["1.jpg"].split is None
    assert ds.num_captions == 4
    assert ds.image_dir == (tmp_path / "Images").resolve()
    assert ds.skipped.as_dict() == {
        "counts": {"wrong number of fields": 2, "duplicate line": 1, "empty caption": 1,
                   "missing image": 1, "unreadable image": 1},
        "examples": {"wrong number of fields": ["captions.txt:8", "captions.txt:9"],
                     "duplicate line": ["captions.txt:4"], "empty caption": ["captions.txt:6"],
                     "missing image": ["captions.txt:7"],
                     "unreadable image": ["captions.txt:12"]},
        "total": 6}
    assert ds.skipped.summary().splitlines()[0] == (
        "skipped 6 lines: 2 wrong number of fields, 1 duplicate line, 1 empty caption, "
        "1 missing image, 1 unreadable image")


def test_captions_txt_without_header_and_root_given_as_file(tmp_path):
    make_images(tmp_path / "Images", ["a.jpg"])
    (tmp_path / "captions.txt").write_text("a.jpg,A red ball\n", encoding="utf-8")
    ds = load_dataset(tmp_path / "captions.txt")
    assert ds.root == tmp_path.resolve()
    assert [i.captions for i in ds.images] == [("a red ball",)]
    assert load_dataset(tmp_path / "captions.txt", layout="kaggle_captions_txt").num_captions == 1


# --- Kaggle results.csv -----------------------------------------------------------------------

def test_kaggle_results_csv_nested_images_and_stray_spaces(tmp_path):
    outer = tmp_path / "flickr30k_images"
    make_images(outer / "flickr30k_images", ["1000092795.jpg", "10002456.jpg"])
    (outer / "results.csv").write_text(
        "image_name| comment_number| comment\n"
        "1000092795.jpg| 0| Two young guys with shaggy hair look at their hands .\n"
        "1000092795.jpg | 1 |  Two young , White males are outside near many bushes .\n"
        "10002456.jpg| 0| Several men in hard hats are operating a giant pulley system .\n"
        "10002456.jpg| 4 A dog runs across the grass .\n"     # the real file's missing pipe
        "10002456.jpg| 1| Workers look down from up above on a piece of equipment .\n"
        "10002456.jpg| 2|\n",                                  # empty caption
        encoding="utf-8")
    # Kaggle's download root holds flickr30k_images/results.csv: found one level down.
    layout, caption_file = detect_layout(tmp_path)
    assert (layout, caption_file) == ("kaggle_results_csv", (outer / "results.csv").resolve())
    ds = load_dataset(tmp_path)
    images = by_name(ds)
    assert ds.image_dir == (outer / "flickr30k_images").resolve()
    assert images["1000092795.jpg"].captions == (
        "two young guys with shaggy hair look at their hands",
        "two young white males are outside near many bushes")
    assert len(images["10002456.jpg"].captions) == 2
    assert ds.skipped.counts == {"wrong number of fields": 1, "empty caption": 1}
    assert ds.skipped.examples["wrong number of fields"] == ["results.csv:5"]
    # Passing the inner folder (holding results.csv) works too.
    assert len(load_dataset(outer).images) == 2


# --- original token files ---------------------------------------------------------------------

def test_flickr30k_token_file(tmp_path):
    make_images(tmp_path / "flickr30k-images", ["1000092795.jpg", "10002456.jpg"])
    (tmp_path / "results_20130124.token").write_text(
        "1000092795.jpg#0\tTwo young guys with shaggy hair look at their hands while hanging "
        "out in the yard .\n"
        "1000092795.jpg#1\tTwo young, White males are outside near many bushes .\n"
        "10002456.jpg#0 Several men in hard hats (space, not tab)\n"   # wrong fields
        "10002456.jpg#1\tWorkers look down from up above on a piece of equipment .\n"
        "10002456.jpg#1\tWorkers look down from up above on a piece of equipment .\n",
        encoding="utf-8")
    ds = load_dataset(tmp_path)
    assert ds.layout == "flickr_token"
    assert [len(i.captions) for i in ds.images] == [2, 1]
    assert ds.skipped.counts == {"wrong number of fields": 1, "duplicate line": 1}
    assert ds.skipped.examples["duplicate line"] == ["results_20130124.token:5"]


def test_flickr8k_token_file_in_text_subfolder(tmp_path):
    names = ["1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg"]
    make_images(tmp_path / "Flicker8k_Dataset", names)  # the zip's own misspelling
    (tmp_path / "Flickr8k_text").mkdir()
    (tmp_path / "Flickr8k_text" / "Flickr8k.token.txt").write_text(
        "1000268201_693b08cb0e.jpg#0\tA child in a pink dress is climbing up a set of stairs .\n"
        "1001773457_577c3a7d70.jpg#0\tA black dog and a spotted dog are fighting\n"
        "2258277193_586949ec62.jpg.1#0\tA man on a bike\n",   # the real file's stray entry
        encoding="utf-8")
    ds = load_dataset(tmp_path)
    assert ds.layout == "flickr_token"
    assert ds.image_dir == (tmp_path / "Flicker8k_Dataset").resolve()
    assert [i.name for i in ds.images] == names
    assert ds.skipped.counts == {"missing image": 1}


# --- Karpathy JSON ----------------------------------------------------------------------------

def karpathy(images):
    return {"dataset": "flickr30k", "images": [
        {"filename": name, "imgid": i, "split": split, "sentids": [],
         "sentences": [{"raw": raw, "tokens": raw.lower().split(), "sentid": j}
                       for j, raw in enumerate(raws)]}
        for i, (name, split, raws) in enumerate(images)]}


def test_karpathy_json_preferred_and_carries_split(tmp_path):
    make_images(tmp_path / "flickr30k-images", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    data = karpathy([("a.jpg", "train", ["A dog .", "A dog ."]),   # duplicate sentence
                     ("b.jpg", "val", ["Deux chiens, qui courent"]),
                     ("c.jpg", "restval", ["A cat"]),
                     ("d.jpg", "test", ["!!!"]),                    # empty -> no captions left
                     ("gone.jpg", "test", ["A bird"])])
    data["images"].append({"imgid": 9, "split": "train"})           # no filename / sentences
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(data), encoding="utf-8")
    (tmp_path / "captions.txt").write_text("image,caption\na.jpg,other\n", encoding="utf-8")
    assert detect_layout(tmp_path)[0] == "karpathy_json"
    ds = load_dataset(tmp_path)
    images = by_name(ds)
    assert list(images) == ["a.jpg", "b.jpg", "c.jpg"]   # d.jpg has no usable caption
    assert [images[n].split for n in images] == ["train", "val", "train"]  # restval -> train
    assert images["b.jpg"].captions == ("deux chiens qui courent",)
    assert ds.skipped.counts == {"duplicate line": 1, "empty caption": 1, "missing image": 1,
                                 "malformed entry": 1}
    assert ds.skipped.examples["missing image"] == ["dataset_flickr30k.json:images[4].sentences[0]"]
    # The other layout can still be read on request.
    assert load_dataset(tmp_path, layout="kaggle_captions_txt").images[0].captions == ("other",)


def test_several_karpathy_files_pick_the_one_matching_the_images(tmp_path):
    make_images(tmp_path / "Flicker8k_Dataset", ["x_1.jpg"])
    (tmp_path / "dataset_flickr30k.json").write_text(
        json.dumps(karpathy([("123.jpg", "train", ["A"])])), encoding="utf-8")
    (tmp_path / "dataset_flickr8k.json").write_text(
        json.dumps(karpathy([("x_1.jpg", "train", ["A dog"])])), encoding="utf-8")
    assert detect_layout(tmp_path)[1].name == "dataset_flickr8k.json"
    assert load_dataset(tmp_path).images[0].name == "x_1.jpg"


def test_images_beside_the_caption_file(tmp_path):
    make_images(tmp_path, ["a.jpg"])
    (tmp_path / "captions.txt").write_text("image,caption\na.jpg,A dog\n", encoding="utf-8")
    assert load_dataset(tmp_path).image_dir == tmp_path.resolve()


# --- errors -----------------------------------------------------------------------------------

def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nope'} does not exist"):
        detect_layout(tmp_path / "nope")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_unknown_layout_names_path_and_files_looked_for(tmp_path):
    (tmp_path / "readme.md").write_text("hi")
    with pytest.raises(DatasetError) as error:
        detect_layout(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and "readme.md" in message
    for layout in LAYOUTS:
        assert layout in message
    for name in ("captions.txt", "results.csv", "results_20130124.token",
                 "dataset_flickr30k.json", "Flickr8k.token.txt"):
        assert name in message


def test_no_images_found(tmp_path):
    (tmp_path / "Images").mkdir()
    (tmp_path / "captions.txt").write_text("image,caption\na.jpg,A dog\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no images found"):
        load_dataset(tmp_path)


def test_nothing_usable_left(tmp_path):
    make_images(tmp_path / "Images", ["a.jpg"])
    (tmp_path / "captions.txt").write_text("image,caption\na.jpg,...\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no images found.*1 empty caption"):
        load_dataset(tmp_path)


def test_bad_karpathy_json(tmp_path):
    (tmp_path / "dataset_flickr30k.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DatasetError, match="dataset_flickr30k.json is not valid JSON"):
        load_dataset(tmp_path)


def test_forced_unknown_layout(tmp_path):
    with pytest.raises(DatasetError, match="unknown layout 'coco'"):
        load_dataset(tmp_path, layout="coco")


# --- SkipReport -------------------------------------------------------------------------------

def test_skip_report_examples_merge_and_round_trip():
    a, b = SkipReport(), SkipReport()
    for line in range(5):
        a.add("missing image", f"f:{line}")
    b.add("missing image", "g:1")
    b.add("empty caption", "g:2")
    a.merge(b)
    assert a.counts == {"missing image": 6, "empty caption": 1}
    assert a.examples["missing image"] == ["f:0", "f:1", "f:2"]  # at most three
    assert a.as_dict()["total"] == 7
    assert SkipReport.from_dict(a.as_dict()).as_dict() == a.as_dict()
    assert a.summary().startswith("skipped 7 lines: 6 missing image, 1 empty caption")
    assert SkipReport().summary() == "skipped nothing"
