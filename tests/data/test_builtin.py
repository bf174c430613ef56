"""The built-in dataset: deterministic bytes, Flickr layouts read by the same readers, captions
that need the image, atomic generation."""
import inspect
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from data import builtin
from data.builtin import (COLOURS, PLACES, SHAPE_WORDS, SIZE_PREDICATES, SIZE_WORDS,
                          captions_for, ensure_builtin, generate_builtin, is_complete, render,
                          sample_scene)
from data.files import BUILTIN_IMAGES, BUILTIN_ROOT
from data.layouts import DatasetError, detect_layout, load_dataset
from data.splits import split_dataset


def files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(tmp_path):
    a = files(generate_builtin(tmp_path / "a", num_images=12, seed=3))
    b = files(generate_builtin(tmp_path / "b", num_images=12, seed=3))
    c = files(generate_builtin(tmp_path / "c", num_images=12, seed=4))
    assert len(a) == 12 + 3  # images + captions.txt + dataset_flickr30k.json + builtin.json
    assert a == b
    assert a.keys() == c.keys()
    assert a["captions.txt"] != c["captions.txt"]
    assert sum(a[k] != c[k] for k in a if k.startswith("Images/")) >= 11


def test_loads_with_the_same_readers_in_both_layouts(tmp_path):
    root = generate_builtin(tmp_path / "builtin", num_images=30, seed=0)
    assert detect_layout(root)[0] == "karpathy_json"  # preferred: it carries the split
    karpathy = load_dataset(root)
    kaggle = load_dataset(root, layout="kaggle_captions_txt")
    # Kaggle layout alone (as a user would have it): Images/ + captions.txt.
    alone = tmp_path / "kaggle"
    shutil.copytree(root / "Images", alone / "Images")
    shutil.copy(root / "captions.txt", alone / "captions.txt")
    assert detect_layout(alone)[0] == "kaggle_captions_txt"
    kaggle_alone = load_dataset(alone)
    for ds in (karpathy, kaggle, kaggle_alone):
        assert len(ds.images) == 30 and ds.num_captions == 150
        assert ds.skipped.total == 0
    assert [(i.name, i.captions) for i in karpathy.images] == [
        (i.name, i.captions) for i in kaggle_alone.images]
    splits = split_dataset(karpathy)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [24, 3, 3]  # 80/10/10
    assert {i.split for i in kaggle.images} == {None}


def test_every_caption_describes_what_is_drawn():
    seen = {"colour": set(), "shape": set(), "size": set(), "position": set(), "kind": set()}
    for i in range(300):
        rng = np.random.default_rng([0, i])
        scene = sample_scene(rng)
        captions = captions_for(scene, rng)
        assert len(set(captions)) == 5, captions
        first = scene.shapes[0]
        for caption in captions:
            text = caption.lower()
            assert first.colour in text
            assert any(word in text for word in SHAPE_WORDS[first.shape])
            if scene.kind != "pair":
                assert any(w in text for w in SIZE_WORDS[scene.size] + SIZE_PREDICATES[scene.size])
        if scene.kind == "single":
            assert all(any(p in c.lower() for p in PLACES[scene.position]) for c in captions)
            seen["position"].add(scene.position)
        if scene.kind == "group":
            assert all(("three" in c.lower()) == (len(scene.shapes) == 3) for c in captions)
        if scene.kind == "pair":
            assert all(scene.shapes[1].colour in c.lower() for c in captions)
        seen["colour"].add(first.colour)
        seen["shape"].add(first.shape)
        seen["size"].add(scene.size)
        seen["kind"].add(scene.kind)
    assert seen == {"colour": set(COLOURS), "shape": {"circle", "square", "triangle"},
                    "size": {"small", "large"}, "position": {"left", "centre", "right"},
                    "kind": {"single", "group", "pair"}}


def test_images_show_the_colour_at_each_shape():
    for i in range(20):
        rng = np.random.default_rng([1, i])
        scene = sample_scene(rng)
        pixels = np.asarray(Image.open(io.BytesIO(render(scene, rng))).convert("RGB"), np.int32)
        assert pixels.shape == (160, 160, 3)
        for shape in scene.shapes:
            y, x = int(round(shape.y)), int(round(shape.x))
            y, x = min(max(y, 20), 140), min(max(x, 20), 140)  # clamped shapes stay inside
            patch = pixels[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(axis=0)
            assert np.abs(patch - COLOURS[shape.colour]).max() < 45, (scene, patch)
        corner = pixels[:4, :4].reshape(-1, 3).mean(axis=0)
        assert corner.min() > 190  # light background (no shape reaches a corner's 4x4 block)


def test_ensure_builtin_generates_once_and_repairs_incomplete(tmp_path):
    root = tmp_path / "datasets" / "builtin"
    assert ensure_builtin(root, num_images=10, seed=0) == root
    assert is_complete(root, 10, 0)
    stamp = (root / "captions.txt").stat().st_mtime_ns
    ensure_builtin(root, num_images=10, seed=0)
    assert (root / "captions.txt").stat().st_mtime_ns == stamp  # reused, not regenerated
    (root / "Images" / "scene_00003.jpg").unlink()                # incomplete -> regenerated
    assert not is_complete(root, 10, 0)
    ensure_builtin(root, num_images=10, seed=0)
    assert is_complete(root, 10, 0) and (root / "Images" / "scene_00003.jpg").is_file()
    ensure_builtin(root, num_images=12, seed=0)                   # other settings -> regenerated
    assert is_complete(root, 12, 0)
    assert sorted(p.name for p in root.parent.iterdir()) == ["builtin"]  # no temporaries left


def test_interrupted_generation_is_never_taken_as_complete(tmp_path):
    root = tmp_path / "builtin"
    # What a killed run leaves behind: a temporary sibling from a process that no longer exists.
    dead = tmp_path / f".builtin.tmp-{2 ** 22 + 12345}-deadbeef"
    generate_builtin(dead, num_images=10, seed=0)
    (dead / "builtin.json").unlink()
    assert not root.exists()
    ensure_builtin(root, num_images=10, seed=0)
    assert is_complete(root, 10, 0) and not dead.exists()
    # A folder without the manifest (a half-written or foreign one) is not complete...
    (root / "builtin.json").unlink()
    assert not is_complete(root, 10, 0)
    # ...and is never overwritten: it may be the user's own data.
    with pytest.raises(DatasetError, match="not a built-in dataset folder"):
        ensure_builtin(root, num_images=10, seed=0)


def test_generate_refuses_a_non_empty_folder_and_tiny_sizes(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty"):
        generate_builtin(tmp_path / "x", num_images=5)
    with pytest.raises(ValueError, match="num_images must be >= 3"):
        generate_builtin(tmp_path / "y", num_images=2)


def test_defaults():
    assert builtin.DEFAULT_NUM_IMAGES == 1500
    assert str(BUILTIN_ROOT) == os.path.join("datasets", "builtin")
    assert inspect.signature(ensure_builtin).parameters["root"].default == BUILTIN_ROOT
    assert BUILTIN_ROOT / builtin.IMAGE_DIR == BUILTIN_IMAGES  # where generate_builtin writes


def test_a_folder_generated_before_the_layouts_were_recorded_is_still_complete(tmp_path):
    root = ensure_builtin(tmp_path / "builtin", num_images=4, seed=0)
    manifest = json.loads((root / "builtin.json").read_text())
    assert manifest.pop("layout") == "flickr30k"
    (root / "builtin.json").write_text(json.dumps(manifest))
    assert is_complete(root, 4, 0)   # reused as it is: its feature cache stays valid
    manifest["layout"] = "coco2014"
    (root / "builtin.json").write_text(json.dumps(manifest))
    assert not is_complete(root, 4, 0)
