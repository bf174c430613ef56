"""Does a caption of a built-in image say what is in it? The built-in data's correctness figure.

The built-in dataset (data/builtin.py) is generated, so each image's scene is known exactly:
data.builtin.scene_of regenerates it. A caption is read with the generator's own words, and each
attribute is right when it states:

  colours   the scene's colours, by name, and no other
  shapes    the scene's kinds of shape (circle/disc/round shape, square/box/square shape,
            triangle/triangular shape, singular or plural; "shape" names no kind), and no other
  count     the number of shapes: "a"/"one"/"a single" (or a singular noun alone) 1, "two"/"a pair
            of" 2, "three" 3, summed over the shapes named ("a red circle and a blue box" is 2);
            a plural noun without a number states none, and "N shapes" must agree
  size      the scene's size (large/big or small/little); a caption of two different shapes may
            leave it out, as half their references do
  position  single shapes only: where it is (left, centre/center/middle, right)
  all       every attribute above that applies, and each colour on its own shape ("a red circle
            and a blue box" is wrong for a blue circle and a red box)

Every reference caption of the built-in data is right on every attribute
(tests/model/test_attributes.py). Other datasets have no scenes: `builtin_scenes` returns None.
"""
import json
from pathlib import Path
from typing import Sequence

from data import builtin
from data.captions import clean_captions

ATTRIBUTES = ("colours", "shapes", "count", "size", "position")
LABELS = ATTRIBUTES + ("all",)

_COUNTS = {"a": 1, "an": 1, "one": 1, "a single": 1, "two": 2, "a pair of": 2, "three": 3,
           "some": None}
_SIZES = {word.split()[-1]: size
          for size, words in [*builtin.SIZE_WORDS.items(), *builtin.SIZE_PREDICATES.items()]
          for word in words}  # "quite big" -> big
_PLACES = {"left": "left", "right": "right", "centre": "centre", "center": "centre",
           "middle": "centre"}
_NOUNS = {noun: kind for kind, nouns in builtin.SHAPE_WORDS.items() for noun in nouns}
_SINGULAR = {plural: word for word, plural in builtin.PLURALS.items()}


def builtin_scenes(root, names: Sequence[str]) -> list | None:
    """The scenes of the images `names` when `root` is a folder data/builtin.py generated (its
    manifest says so, at the generator's current version); None for any other dataset."""
    try:
        manifest = json.loads((Path(root) / builtin.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("generator") != "data.builtin" or manifest.get("version") != builtin.VERSION:
        return None
    scenes, layout = [], manifest.get("layout", "flickr30k")
    for name in names:
        index = builtin.image_index(Path(name).name, layout)
        if index is None:
            raise ValueError(f"{name!r} in the built-in dataset {root} is not an image name the "
                             f"generator writes in its {layout} layout")
        scenes.append(builtin.scene_of(index, manifest["seed"]))
    return scenes


def _singular(phrase: str) -> str | None:
    """"red circles" -> "red circle", "boxes" -> "box"; None for a phrase that is no plural."""
    head, _, last = phrase.rpartition(" ")
    if last in _SINGULAR:
        last = _SINGULAR[last]
    elif last.endswith("s"):
        last = last[:-1]
    else:
        return None
    return f"{head} {last}".strip()


def _items(words: list[str]) -> list[tuple[str, object]]:
    """(kind, value) per phrase, longest phrase first: ("noun", (shape, plural)), ("generic",
    plural), ("count", n), ("colour", c), ("size", s), ("place", p) or ("word", w)."""
    items, i = [], 0
    while i < len(words):
        for length in (3, 2, 1):
            phrase = " ".join(words[i:i + length])
            if phrase in _NOUNS:
                found = ("noun", (_NOUNS[phrase], False))
            elif _singular(phrase) in _NOUNS:
                found = ("noun", (_NOUNS[_singular(phrase)], True))
            elif phrase in ("shape", "shapes"):
                found = ("generic", phrase == "shapes")
            elif phrase in _COUNTS:
                found = ("count", _COUNTS[phrase])
            elif length > 1:
                continue
            elif phrase in builtin.COLOURS:
                found = ("colour", phrase)
            elif phrase in _SIZES:
                found = ("size", _SIZES[phrase])
            elif phrase in _PLACES:
                found = ("place", _PLACES[phrase])
            else:
                found = ("word", phrase)
            items.append(found)
            i += length
            break
    return items


def _mentions(items) -> tuple[list[dict], list]:
    """The shapes a caption names, each {"kind", "count", "colours"}, and the counts of its
    generic "N shapes": a noun takes the colour and size words right before it, the count word
    before those, and a colour after "in" ("a big circle in red")."""
    mentions, generic_counts = [], []
    for k, (kind, value) in enumerate(items):
        if kind not in ("noun", "generic"):
            continue
        plural = value[1] if kind == "noun" else value
        j = k - 1
        while j >= 0 and items[j][0] in ("colour", "size"):
            j -= 1
        colours = [word for category, word in items[j + 1:k] if category == "colour"]
        count = items[j][1] if j >= 0 and items[j][0] == "count" else (None if plural else 1)
        after = items[k + 1:k + 3]
        if len(after) == 2 and after[0] == ("word", "in") and after[1][0] == "colour":
            colours.append(after[1][1])
        if kind == "noun":
            mentions.append({"kind": value[0], "count": count, "colours": colours})
        else:
            generic_counts.append(count)
    return mentions, generic_counts


def check_caption(scene, caption: str) -> dict:
    """{attribute: True/False, or None where it does not apply} for one scene and caption."""
    return _check(scene, clean_captions([caption])[0])


def _check(scene, cleaned: str) -> dict:
    items = _items(cleaned.split())
    mentions, generic_counts = _mentions(items)
    named = {category: {value for kind, value in items if kind == category}
             for category in ("colour", "size", "place")}
    counts = [m["count"] for m in mentions]
    shapes = len(scene.shapes)
    result = {
        "colours": named["colour"] == {shape.colour for shape in scene.shapes},
        "shapes": {m["kind"] for m in mentions} == {shape.shape for shape in scene.shapes},
        "count": (bool(counts) and None not in counts and sum(counts) == shapes
                  and all(count == shapes for count in generic_counts)),
        "size": named["size"] == {scene.size} or (scene.kind == "pair" and not named["size"]),
        "position": named["place"] == {scene.position} if scene.kind == "single" else None,
    }
    bound = {(m["colours"][0], m["kind"]) for m in mentions if len(set(m["colours"])) == 1}
    each_colour_on_its_shape = (all(len(set(m["colours"])) == 1 for m in mentions)
                                and bound == {(s.colour, s.shape) for s in scene.shapes})
    result["all"] = each_colour_on_its_shape and all(v for v in result.values() if v is not None)
    return result


def attribute_scores(scenes: Sequence, captions: Sequence[str]) -> dict:
    """Share of images whose caption states each attribute right: {"images", "single_images",
    "colours", "shapes", "count", "size", "position" (of the single shapes), "all"}."""
    if isinstance(captions, str) or len(scenes) != len(captions) or not captions:
        raise ValueError(f"expected one caption per scene, got {len(scenes)} scenes and "
                         f"{'a string' if isinstance(captions, str) else len(captions)} captions")
    checks = [_check(scene, caption) for scene, caption in zip(scenes, clean_captions(captions))]
    scores = {"images": len(checks),
              "single_images": sum(check["position"] is not None for check in checks)}
    for label in LABELS:
        applies = [check[label] for check in checks if check[label] is not None]
        scores[label] = sum(applies) / len(applies) if applies else None
    return scores


def attribute_line(label: str, scores: dict, label_width: int = 17) -> str:
    """One method's attribute scores as every command prints them:
    `   greedy  states right: colours 98.7%  shapes 76.0%  count 96.7%  size 99.3%  position
    97.3% of 75 single shapes  all 67.3% of 150 images`."""
    def share(name):
        return "-" if scores[name] is None else f"{100 * scores[name]:.1f}%"
    parts = [f"{name} {share(name)}" for name in ATTRIBUTES]
    parts[-1] += f" of {scores['single_images']} single shapes"
    return (f"{label:>{label_width}}  states right: " + "  ".join(parts)
            + f"  all {share('all')} of {scores['images']} images")
