"""model/attributes.py: every reference caption of a generated built-in dataset is right on every
attribute, captions wrong in one way are wrong in exactly that way, and only the built-in data
has scenes."""
import json
import shutil

import pytest

from data import builtin
from data.builtin import Scene, Shape
from data.layouts import load_dataset
from model.attributes import (LABELS, attribute_line, attribute_scores, builtin_scenes,
                              check_caption)

SINGLE = Scene("single", "large", "left", (Shape("red", "circle", 42, 80, 33),))
GROUP = Scene("group", "small", None, tuple(Shape("blue", "square", x, 40, 16) for x in (40, 120)))
PAIR = Scene("pair", "large", None, (Shape("blue", "circle", 40, 80, 26),
                                     Shape("red", "square", 120, 80, 26)))


def test_every_reference_of_the_generated_data_is_right(small_builtin):
    dataset = load_dataset(small_builtin)
    scenes = builtin_scenes(dataset.root, [image.name for image in dataset.images])
    pairs = [(scene, caption) for scene, image in zip(scenes, dataset.images)
             for caption in image.captions]
    wrong = [(scene, caption, check_caption(scene, caption)) for scene, caption in pairs
             if not check_caption(scene, caption)["all"]]
    assert not wrong, wrong[:3]
    scores = attribute_scores(*zip(*pairs))
    assert scores["images"] == len(pairs) == 5 * len(dataset.images)
    assert all(scores[label] == 1.0 for label in LABELS), scores
    assert {scene.kind for scene in scenes} == {"single", "group", "pair"}


@pytest.mark.parametrize("scene, caption, wrong", [
    (SINGLE, "a big red circle on the left", set()),
    (SINGLE, "there is a single large circle in red in the left half of the image", set()),
    (SINGLE, "a big blue circle on the left", {"colours"}),
    (SINGLE, "a big red triangle on the left", {"shapes"}),
    (SINGLE, "two big red circles on the left", {"count"}),
    (SINGLE, "red circles on the left, all of them big", {"count"}),  # no number stated
    (SINGLE, "a small red circle on the left", {"size"}),
    (SINGLE, "a red circle on the left", {"size"}),
    (SINGLE, "a big red circle in the middle", {"position"}),
    (SINGLE, "a big red circle", {"position"}),
    (GROUP, "a pair of small blue boxes", set()),
    (GROUP, "two blue square shapes, all of them quite small", set()),
    (GROUP, "three small blue squares", {"count"}),
    (PAIR, "a blue circle and a red box", set()),  # a pair's size may be left out
    (PAIR, "two large shapes, a blue disc and a red square", set()),
    (PAIR, "three large shapes, a blue disc and a red square", {"count"}),
    (PAIR, "a large blue circle and a small red square", {"size"}),
])
def test_a_caption_is_wrong_where_it_is_wrong(scene, caption, wrong):
    result = check_caption(scene, caption)
    assert {label for label, right in result.items() if right is False} - {"all"} == wrong
    assert result["all"] is (not wrong)
    assert (result["position"] is None) is (scene.kind != "single")


def test_swapped_colours_of_a_pair_are_wrong_in_all_only():
    result = check_caption(PAIR, "a red circle and a blue square")
    assert result["colours"] and result["shapes"] and result["count"] and result["size"]
    assert result["all"] is False


def test_scores_and_their_line():
    scenes = [SINGLE, SINGLE, GROUP, PAIR]
    captions = ["a big red circle on the left", "a big red circle on the right",
                "two small blue boxes", "a red circle and a blue square"]
    scores = attribute_scores(scenes, captions)
    assert scores == {"images": 4, "single_images": 2, "colours": 1.0, "shapes": 1.0,
                      "count": 1.0, "size": 1.0, "position": 0.5, "all": 0.5}
    assert attribute_line("greedy", scores) == (
        "           greedy  states right: colours 100.0%  shapes 100.0%  count 100.0%  "
        "size 100.0%  position 50.0% of 2 single shapes  all 50.0% of 4 images")
    with pytest.raises(ValueError, match="one caption per scene, got 4 scenes and 3 captions"):
        attribute_scores(scenes, captions[:3])
    with pytest.raises(ValueError, match="got 1 scenes and a string"):
        attribute_scores([SINGLE], "a big red circle on the left")


def test_only_the_builtin_data_has_scenes(small_builtin, tmp_path):
    names = [builtin.image_name(i) for i in (0, 3)]
    assert builtin_scenes(small_builtin, names) == [builtin.scene_of(0), builtin.scene_of(3)]
    other = tmp_path / "flickr"
    shutil.copytree(small_builtin, other)
    (other / builtin.MANIFEST).unlink()  # a Flickr30k folder has no generator manifest
    assert builtin_scenes(other, names) is None
    manifest = json.loads((small_builtin / builtin.MANIFEST).read_text())
    (other / builtin.MANIFEST).write_text(json.dumps(manifest | {"version": builtin.VERSION - 1}))
    assert builtin_scenes(other, names) is None  # an older generator drew other scenes
    with pytest.raises(ValueError, match="'1000092795.jpg' in the built-in dataset"):
        builtin_scenes(small_builtin, ["1000092795.jpg"])
