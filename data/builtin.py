"""A generated stand-in for Flickr30k: coloured shapes with about five captions each.

It is written in Flickr30k's own file layouts (Kaggle's Images/ + captions.txt AND Karpathy's
dataset_flickr30k.json with an 80/10/10 split), so it goes through exactly the same readers as the
real download. Every caption needs the image: colour, shape, count, size and position are drawn
independently.

The encoder is a randomly initialised ResNet50 with average pooling (no ImageNet weights offline),
so the visual signal is made strong: large saturated shapes with a darker rim on a plain light
background. Colour is the easiest to learn, then size and shape, then count; position has just
three large-scale values (left half, centre, right half) so that average pooling keeps some of it.

Generation is deterministic: the same seed gives byte-identical files (each image has its own
numpy generator seeded by (seed, index)).

generate_builtin(..., layout="coco2014" | "coco2017") writes the same kind of scenes in MS-COCO's
layouts instead, with the quirks of the real files (COCO_LAYOUT below), for the COCO readers' tests.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pathlib
import re
import shutil
import uuid

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from data.files import BUILTIN_IMAGES, BUILTIN_ROOT
from data.layouts import DatasetError
from data.splits import split_sizes

DEFAULT_NUM_IMAGES = 1500  # features extracted in a minute or two on 2 cores, leaving time to train
VERSION = 2  # bump when the scenes or captions change, so old folders are regenerated
MANIFEST = "builtin.json"
IMAGE_DIR = BUILTIN_IMAGES.relative_to(BUILTIN_ROOT)  # the same sub-folder under any root
CAPTIONS_TXT = "captions.txt"
KARPATHY_JSON = "dataset_flickr30k.json"
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # a bigger test split than Karpathy's 3%, so scores are stable
LAYOUTS = ("flickr30k", "coco2014", "coco2017")

IMAGE_SIDE = 160
JPEG_QUALITY = 90
# A darker rim makes the outlines, what tells shapes apart, stand out to a random-init encoder.
OUTLINE_WIDTH = 4
OUTLINE_SHADE = 0.45
COLOURS = {  # saturated, far from each other and from the light background
    "red": (215, 25, 30), "green": (30, 165, 45), "blue": (30, 60, 215),
    "yellow": (240, 205, 15), "purple": (135, 40, 175), "orange": (245, 125, 15),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = ("left", "centre", "right")
POSITION_X = {"left": 42, "centre": 80, "right": 118}
KINDS = ("single", "single", "group", "pair")  # half single shapes, a quarter each of the rest


@dataclasses.dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    x: float       # centre
    y: float
    radius: float  # every shape has the area of a circle of this radius


@dataclasses.dataclass(frozen=True)
class Scene:
    kind: str            # "single" | "group" (2-3 alike) | "pair" (two different, left + right)
    size: str            # "small" | "large", shared by all shapes of the scene
    position: str | None  # single shapes only
    shapes: tuple[Shape, ...]


# ---------------------------------------------------------------------------------------------
# Scenes


def sample_scene(rng: np.random.Generator) -> Scene:
    kind = KINDS[rng.integers(len(KINDS))]
    size = SIZES[rng.integers(len(SIZES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    shape = SHAPES[rng.integers(len(SHAPES))]

    def radius(large_range):
        low, high = large_range if size == "large" else (14, 18)
        return float(rng.uniform(low, high))

    if kind == "single":
        position = POSITIONS[rng.integers(len(POSITIONS))]
        x = POSITION_X[position] + rng.uniform(-5, 5)
        y = IMAGE_SIDE / 2 + rng.uniform(-20, 20)
        return Scene(kind, size, position, (Shape(colour, shape, x, y, radius((30, 36))),))
    if kind == "group":
        count = int(rng.integers(2, 4))
        cells = rng.permutation(4)[:count]  # distinct cells of a 2x2 grid, so shapes never overlap
        shapes = []
        for cell in sorted(cells):
            r = radius((24, 28))
            jitter = 6 if size == "large" else 14
            x = 40 + 80 * (cell % 2) + rng.uniform(-jitter, jitter)
            y = 40 + 80 * (cell // 2) + rng.uniform(-jitter, jitter)
            shapes.append(Shape(colour, shape, x, y, r))
        return Scene(kind, size, None, tuple(shapes))
    # pair: two different kinds (colour, shape or both differ), one in each half
    while True:
        colour2 = list(COLOURS)[rng.integers(len(COLOURS))]
        shape2 = SHAPES[rng.integers(len(SHAPES))]
        if (colour2, shape2) != (colour, shape):
            break
    left = Shape(colour, shape, 40 + rng.uniform(-4, 4), 80 + rng.uniform(-15, 15),
                 radius((24, 29)))
    right = Shape(colour2, shape2, 120 + rng.uniform(-4, 4), 80 + rng.uniform(-15, 15),
                  radius((24, 29)))
    return Scene(kind, size, None, (left, right))


def scene_of(index: int, seed: int = 0) -> Scene:
    """Image `index`'s scene (image_name(index)): the first draw of its generator, as
    generate_builtin draws it."""
    return sample_scene(np.random.default_rng([seed, index]))


def _outline(item: Shape) -> list[tuple[float, float]]:
    """Polygon (or circle bounding box) of equal area, kept inside the image."""
    x, y, r = item.x, item.y, item.radius
    if item.shape == "circle":
        points = [(x - r, y - r), (x + r, y + r)]
    elif item.shape == "square":
        half = r * np.sqrt(np.pi) / 2
        points = [(x - half, y - half), (x + half, y - half), (x + half, y + half),
                  (x - half, y + half)]
    else:  # equilateral triangle pointing up, centroid at (x, y)
        side = r * np.sqrt(4 * np.pi / np.sqrt(3))
        height = side * np.sqrt(3) / 2
        points = [(x, y - 2 * height / 3), (x + side / 2, y + height / 3),
                  (x - side / 2, y + height / 3)]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    dx = max(0.0, 2 - min(xs)) - max(0.0, max(xs) - (IMAGE_SIDE - 3))
    dy = max(0.0, 2 - min(ys)) - max(0.0, max(ys) - (IMAGE_SIDE - 3))
    return [(px + dx, py + dy) for px, py in points]


def render(scene: Scene, rng: np.random.Generator) -> bytes:
    """JPEG bytes of the scene on a light background with a gentle random gradient."""
    base = rng.uniform(222, 248, size=3)
    slope = rng.uniform(-10, 10, size=2)
    ramp = np.linspace(-1, 1, IMAGE_SIDE)
    shade = slope[0] * ramp[None, :] + slope[1] * ramp[:, None]  # [h, w]
    background = base[None, None, :] + shade[:, :, None] + rng.normal(0, 1.5, (IMAGE_SIDE,
                                                                                IMAGE_SIDE, 3))
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for item in scene.shapes:
        fill = tuple(int(c) for c in np.clip(np.array(COLOURS[item.colour])
                                             + rng.integers(-12, 13, size=3), 0, 255))
        edge = tuple(int(c * OUTLINE_SHADE) for c in fill)
        points = _outline(item)
        if item.shape == "circle":
            draw.ellipse(points, fill=fill, outline=edge, width=OUTLINE_WIDTH)
        else:
            draw.polygon(points, fill=fill, outline=edge, width=OUTLINE_WIDTH)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Captions: varied templates and synonyms, so the decoder learns words, not one fixed sentence

SIZE_WORDS = {"large": ("large", "big"), "small": ("small", "little")}
SIZE_PREDICATES = {"large": ("big", "large", "quite big"), "small": ("small", "quite small",
                                                                     "little")}
SHAPE_WORDS = {"circle": ("circle", "disc", "round shape"),
               "square": ("square", "box", "square shape"),
               "triangle": ("triangle", "triangular shape")}
PLURALS = {"box": "boxes"}
ONE = ("a", "one", "a single")
COUNTS = {2: ("two", "a pair of"), 3: ("three",)}
PLACES = {"left": ("on the left", "at the left side", "to the left of the picture",
                   "in the left half of the image"),
          "right": ("on the right", "at the right side", "to the right of the picture",
                    "in the right half of the image"),
          "centre": ("in the centre", "in the middle", "in the center of the picture",
                     "in the middle of the image")}
BACKGROUNDS = ("light", "plain", "pale")

SINGLE_TEMPLATES = (
    "{one} {size} {colour} {shape} {place}",
    "there is {one} {size} {colour} {shape} {place}",
    "{place}, there is {one} {size} {colour} {shape}",
    "a picture of {one} {size} {colour} {shape} {place}",
    "{one} {colour} {shape} {place}, it is {size_pred}",
    "an image showing {one} {size} {shape} in {colour} {place}",
    "{one} {size} {colour} {shape} {place} on a {background} background",
)
GROUP_TEMPLATES = (
    "{count} {size} {colour} {shapes}",
    "there are {count} {size} {colour} {shapes}",
    "a picture of {count} {size} {colour} {shapes}",
    "{count} {colour} {shapes}, all of them {size_pred}",
    "an image showing {count} {size} {shapes} in {colour}",
    "{count} {size} {colour} {shapes} on a {background} background",
)
PAIR_TEMPLATES = (
    "a {size} {colour} {shape} {left} and a {size2} {colour2} {shape2} {right}",
    "a {colour2} {shape2} {right} and a {colour} {shape} {left}",
    "there is a {colour} {shape} next to a {colour2} {shape2}",
    "two {size} shapes, a {colour} {shape} and a {colour2} {shape2}",
    "a {size} {colour} {shape} and a {size2} {colour2} {shape2}",
    "{left} a {colour} {shape} and {right} a {colour2} {shape2}",
)


def _pick(rng: np.random.Generator, options):
    return options[rng.integers(len(options))]


def _plural(word: str) -> str:
    head, _, last = word.rpartition(" ")
    return (head + " " if head else "") + PLURALS.get(last, last + "s")


def captions_for(scene: Scene, rng: np.random.Generator, count: int = 5) -> list[str]:
    """`count` differently worded captions (different templates, random synonyms; at most one
    per template: 6 or 7)."""
    first = scene.shapes[0]
    templates = {"single": SINGLE_TEMPLATES, "group": GROUP_TEMPLATES,
                 "pair": PAIR_TEMPLATES}[scene.kind]
    captions = []
    for index in rng.permutation(len(templates))[:count]:
        words = {
            "one": _pick(rng, ONE), "size": _pick(rng, SIZE_WORDS[scene.size]),
            "size2": _pick(rng, SIZE_WORDS[scene.size]),
            "size_pred": _pick(rng, SIZE_PREDICATES[scene.size]), "colour": first.colour,
            "shape": _pick(rng, SHAPE_WORDS[first.shape]),
            "shapes": _plural(_pick(rng, SHAPE_WORDS[first.shape])),
            "count": _pick(rng, COUNTS.get(len(scene.shapes), ("some",))),
            "place": _pick(rng, PLACES[scene.position]) if scene.position else "",
            "left": _pick(rng, PLACES["left"]), "right": _pick(rng, PLACES["right"]),
            "background": _pick(rng, BACKGROUNDS),
        }
        if scene.kind == "pair":
            second = scene.shapes[1]
            words.update(colour2=second.colour, shape2=_pick(rng, SHAPE_WORDS[second.shape]))
        text = templates[index].format(**words)
        text = re.sub(r"\ba ([aeiou])", r"an \1", text)  # "a orange" -> "an orange"
        captions.append(text[0].upper() + text[1:] + ".")  # written like Flickr's captions
    return captions


# ---------------------------------------------------------------------------------------------
# Files


def image_name(index: int) -> str:
    return f"scene_{index:05d}.jpg"


def generate_builtin(root, num_images: int = DEFAULT_NUM_IMAGES, seed: int = 0,
                     layout: str = "flickr30k") -> pathlib.Path:
    """Writes the dataset into `root` (which must be absent or empty) in one of LAYOUTS: Flickr30k's
    (the default) or COCO's (generate_coco). Not atomic: use ensure_builtin, which generates the
    Flickr30k layouts into a temporary folder and renames it into place."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    min_images = 3 if layout == "flickr30k" else COCO_LAYOUT["min_images"]
    if num_images < min_images:
        raise ValueError(f"num_images must be >= {min_images} for the {layout} layout (every "
                         f"split and quirk needs an image), got {num_images}")
    root = pathlib.Path(root)
    if root.exists() and any(root.iterdir()):
        raise DatasetError(f"{root} is not empty; generate_builtin writes into a new folder")
    if layout != "flickr30k":
        return generate_coco(root, num_images, seed, int(layout[-4:]))
    (root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    splits = _assign_splits(num_images, seed)
    rows, entries = [], []
    for i in tqdm(range(num_images), desc="generating built-in dataset", unit="image",
                  mininterval=1.0, disable=num_images < 200):
        rng = np.random.default_rng([seed, i])
        scene = sample_scene(rng)
        (root / IMAGE_DIR / image_name(i)).write_bytes(render(scene, rng))
        captions = captions_for(scene, rng)
        rows += [(image_name(i), caption) for caption in captions]
        entries.append(_karpathy_entry(i, splits[i], captions))
    with open(root / CAPTIONS_TXT, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    karpathy = {"images": entries, "dataset": "builtin"}
    (root / KARPATHY_JSON).write_text(json.dumps(karpathy), encoding="utf-8")
    manifest = {"generator": "data.builtin", "version": VERSION, "layout": "flickr30k",
                "num_images": num_images, "seed": seed, "image_side": IMAGE_SIDE,
                "split_fractions": SPLIT_FRACTIONS}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return root


# ---------------------------------------------------------------------------------------------
# COCO's layouts: annotations/captions_{train,val}YEAR.json, trainYEAR/, valYEAR/ and for 2014
# Karpathy's dataset_coco.json. The real files' quirks, each at fixed images (indices counted
# from the end of the train release, so they never touch the val release):
COCO_LAYOUT = {
    "val_fraction": 0.4,          # of the images in the val release (COCO 2014: 40,504 / 123,287)
    "karpathy_val_test": 0.25,    # of the val release each for Karpathy's val and test; rest restval
    "six_captions_every": 4,      # every 4th image has 6 captions; every 3rd single shape 7
    "seven_captions_every": 3,
    "padded_caption_every": 3,    # every 3rd caption ends in " \n" or starts with a space
    "unlisted_annotations": 2,    # annotations whose image_id no "images" entry has
    "missing_on_disk": 1,         # train images listed but not written
    "corrupt_jpeg": 1,            # train images whose file is not a JPEG
    "min_images": 12,
}
COCO_ID_START, COCO_ID_STEP = 9, 7919  # ids are unique, not contiguous, not file order
KARPATHY_COCO_JSON = "dataset_coco.json"


def coco_image_id(index: int) -> int:
    return COCO_ID_START + COCO_ID_STEP * index


def image_index(name: str, layout: str = "flickr30k") -> int | None:
    """The generator's index of an image file name it wrote in `layout` (image_name,
    coco_file_name), None for any other name."""
    match = re.fullmatch(r"scene_(\d+)\.jpg" if layout == "flickr30k"
                         else r"(?:COCO_(?:train|val)2014_)?(\d{12})\.jpg", name)
    if match is None:
        return None
    if layout == "flickr30k":
        return int(match.group(1))
    index, rest = divmod(int(match.group(1)) - COCO_ID_START, COCO_ID_STEP)
    return index if rest == 0 and index >= 0 else None


def coco_file_name(image_id: int, release: str) -> str:
    """COCO_val2014_000000391895.jpg (2014) or 000000391895.jpg (2017); release "val2014"."""
    return f"COCO_{release}_{image_id:012d}.jpg" if release.endswith("2014") else f"{image_id:012d}.jpg"


def generate_coco(root, num_images: int, seed: int = 0, year: int = 2014) -> pathlib.Path:
    """The scenes in COCO's file layout of `year` (2014 or 2017) with COCO_LAYOUT's quirks."""
    root = pathlib.Path(root)
    num_val = max(4, round(num_images * COCO_LAYOUT["val_fraction"]))
    releases = [f"train{year}"] * (num_images - num_val) + [f"val{year}"] * num_val
    num_heldout = max(1, round(num_val * COCO_LAYOUT["karpathy_val_test"]))
    karpathy = (["train"] * (num_images - num_val) + ["val"] * num_heldout
                + ["test"] * num_heldout + ["restval"] * (num_val - 2 * num_heldout))
    num_train = num_images - num_val
    missing = set(range(num_train - COCO_LAYOUT["missing_on_disk"], num_train))
    corrupt = set(range(min(missing) - COCO_LAYOUT["corrupt_jpeg"], min(missing)))
    images = {release: [] for release in dict.fromkeys(releases)}
    annotations = {release: [] for release in images}
    entries, caption_count, singles = [], 0, 0
    for i in tqdm(range(num_images), desc=f"generating COCO {year} layout", unit="image",
                  mininterval=1.0, disable=num_images < 200):
        rng = np.random.default_rng([seed, i])
        scene = sample_scene(rng)
        image_id, release = coco_image_id(i), releases[i]
        name = coco_file_name(image_id, release)
        (root / release).mkdir(parents=True, exist_ok=True)
        jpeg = render(scene, rng)
        if i in corrupt:
            jpeg = b"<html>not a JPEG: a failed download</html>"
        if i not in missing:
            (root / release / name).write_bytes(jpeg)
        singles += scene.kind == "single"  # only they have 7 templates
        count = (7 if scene.kind == "single" and singles % COCO_LAYOUT["seven_captions_every"] == 1
                 else 6 if i % COCO_LAYOUT["six_captions_every"] == 1 else 5)
        captions = []
        for caption in captions_for(scene, rng, count):
            caption_count += 1
            if caption_count % COCO_LAYOUT["padded_caption_every"] == 0:
                caption = caption + " \n" if caption_count % 2 else " " + caption
            captions.append(caption)
            annotations[release].append({"image_id": image_id, "id": 100 + caption_count,
                                         "caption": caption})
        images[release].append({"license": 1, "file_name": name, "height": IMAGE_SIDE,
                                "width": IMAGE_SIDE, "id": image_id,
                                "date_captured": "2013-11-14 16:28:13"})
        entry = _karpathy_entry(i, karpathy[i], captions)
        entries.append({"filepath": release, "sentids": entry["sentids"], "filename": name,
                        "imgid": i, "split": karpathy[i], "sentences": entry["sentences"],
                        "cocoid": image_id})
    for number in range(COCO_LAYOUT["unlisted_annotations"]):
        annotations[f"train{year}"].append({"image_id": coco_image_id(num_images + number),
                                            "id": 100 + caption_count + 1 + number,
                                            "caption": "An image that is not in the list."})
    (root / "annotations").mkdir(exist_ok=True)
    for release in images:
        order = np.random.default_rng([seed, 2 ** 30]).permutation(len(annotations[release]))
        data = {"info": {"description": f"data.builtin scenes in COCO {year}'s layout",
                         "version": "1.0", "year": year},
                "licenses": [{"id": 1, "name": "generated", "url": ""}],
                "images": images[release],
                "annotations": [annotations[release][j] for j in order]}  # not grouped by image
        (root / "annotations" / f"captions_{release}.json").write_text(json.dumps(data),
                                                                       encoding="utf-8")
    if year == 2014:  # Karpathy made his split of the 2014 release
        (root / KARPATHY_COCO_JSON).write_text(json.dumps({"images": entries,
                                                           "dataset": "coco"}), encoding="utf-8")
    manifest = {"generator": "data.builtin", "version": VERSION, "layout": f"coco{year}",
                "num_images": num_images, "seed": seed, "image_side": IMAGE_SIDE,
                "quirks": {"missing_on_disk": [coco_image_id(i) for i in sorted(missing)],
                           "corrupt_jpeg": [coco_image_id(i) for i in sorted(corrupt)]}}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return root


def _assign_splits(num_images: int, seed: int) -> list[str]:
    sizes = split_sizes(num_images, SPLIT_FRACTIONS)
    labels = ["train"] * sizes[0] + ["val"] * sizes[1] + ["test"] * sizes[2]
    order = np.random.default_rng([seed, 2 ** 31]).permutation(num_images)
    splits = [""] * num_images
    for label, index in zip(labels, order):
        splits[index] = label
    return splits


def _karpathy_entry(index: int, split: str, captions: list[str]) -> dict:
    sentids = list(range(index * len(captions), (index + 1) * len(captions)))
    return {"filename": image_name(index), "imgid": index, "split": split, "sentids": sentids,
            "sentences": [{"raw": caption, "tokens": re.findall(r"[a-z]+", caption.lower()),
                           "imgid": index, "sentid": sentid}
                          for caption, sentid in zip(captions, sentids)]}


def is_complete(root, num_images: int, seed: int) -> bool:
    """True when `root` holds a finished generation with these settings."""
    root = pathlib.Path(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        with os.scandir(root / IMAGE_DIR) as entries:
            found = sum(entry.name.endswith(".jpg") for entry in entries)
    except (OSError, ValueError):
        return False
    return (manifest.get("version") == VERSION  # folders written before COCO's have no layout
            and manifest.get("layout", "flickr30k") == "flickr30k"
            and manifest.get("num_images") == num_images
            and manifest.get("seed") == seed and found == num_images
            and (root / CAPTIONS_TXT).is_file() and (root / KARPATHY_JSON).is_file())


def ensure_builtin(root=BUILTIN_ROOT, num_images: int = DEFAULT_NUM_IMAGES,
                   seed: int = 0) -> pathlib.Path:
    """The built-in dataset folder, generated first if absent or incomplete.

    Generation goes into a temporary sibling folder that is renamed into place only when
    finished, so an interrupted run never leaves a folder that looks complete. A non-empty
    folder that was not made here (no builtin.json) is never overwritten.
    """
    root = pathlib.Path(root)
    if is_complete(root, num_images, seed):
        return root
    if root.exists() and any(root.iterdir()) and not (root / MANIFEST).is_file():
        raise DatasetError(f"{root} exists but is not a built-in dataset folder (no {MANIFEST}); "
                           f"remove it or pass another folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root)
    temporary = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        generate_builtin(temporary, num_images, seed)
        _replace(temporary, root)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    if not is_complete(root, num_images, seed):
        raise DatasetError(f"generating the built-in dataset in {root} did not complete")
    return root


def _replace(temporary: pathlib.Path, root: pathlib.Path) -> None:
    """Renames `temporary` to `root`, moving an old (incomplete or outdated) root aside first."""
    if root.exists():
        old = root.parent / f".{root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            root.rename(old)
        except FileNotFoundError:  # another process moved it already
            pass
        else:
            shutil.rmtree(old, ignore_errors=True)
    try:
        temporary.rename(root)
    except OSError:
        # Another process renamed its own finished copy into place first; that one is used.
        if not (root / MANIFEST).is_file():
            raise


def _remove_stale_temporaries(root: pathlib.Path) -> None:
    """Deletes temporary folders left by interrupted generations (their process is gone)."""
    for path in root.parent.glob(f".{root.name}.tmp-*"):
        try:
            pid = int(path.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)
        except (ValueError, IndexError):
            continue
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:  # alive, another user's
            continue
