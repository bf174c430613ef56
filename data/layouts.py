"""Readers for the caption-file layouts Flickr30k, Flickr8k and MS-COCO are found in, detected
automatically.

Every layout is parsed into the same raw records (image name, raw caption, Karpathy split, where it
came from); one shared step then checks the images, drops duplicates, cleans the captions with the
project's one cleaning rule (data.captions) and groups them by image. Bad lines are skipped and
counted in a SkipReport, never fatal: a 31k-image download always has a few.

Layouts (file names looked for, in order of preference):
  karpathy_json        dataset_flickr30k.json / dataset_flickr8k.json / dataset_coco.json ("raw"
                       sentences + split; COCO's entries add "filepath" (train2014/val2014) and
                       "cocoid")
  coco_official        annotations/captions_{train,val}2014.json (or 2017) with train2014/ and
                       val2014/ (train2017/, val2017/) beside: COCO's own {"images", "annotations"}
  flickr_token         results_20130124.token / Flickr8k.token.txt  ("name.jpg#N<TAB>caption")
  kaggle_results_csv   results.csv  ("image_name| comment_number| comment", pipe-separated)
  kaggle_captions_txt  captions.txt ("image,caption", CSV with quoted commas)
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import itertools
import json
import os
import pathlib
from typing import Iterator

from data.captions import clean_captions

LAYOUTS: tuple[str, ...] = ("karpathy_json", "coco_official", "flickr_token",
                            "kaggle_results_csv", "kaggle_captions_txt")

# Caption file names per layout; LAYOUTS order is the preference order (Karpathy first: it carries
# the standard split).
CAPTION_FILES: dict[str, tuple[str, ...]] = {
    "karpathy_json": ("dataset_flickr30k.json", "dataset_flickr8k.json", "dataset_coco.json"),
    # One release's train file names its val file and the reverse (_coco_release_files); 2014
    # first: Karpathy's split and the published figures are on the 2014 images.
    "coco_official": ("captions_train2014.json", "captions_val2014.json",
                      "captions_train2017.json", "captions_val2017.json"),
    "flickr_token": ("results_20130124.token", "Flickr30k.token.txt", "results.token",
                     "Flickr8k.token.txt"),
    "kaggle_results_csv": ("results.csv",),
    "kaggle_captions_txt": ("captions.txt",),
}

# Image folders looked for beside the caption file (and in the folder passed), in this order; each
# may also be nested once in itself (Kaggle's flickr30k_images/flickr30k_images). "." = the folder.
IMAGE_DIRS: tuple[str, ...] = ("Images", "images", "flickr30k_images", "flickr30k-images",
                               "Flickr30k_images", "Flickr8k_Dataset", "Flicker8k_Dataset",
                               "Flickr8k_images", ".")

# Skip reasons (SkipReport keys).
MISSING_IMAGE = "missing image"
UNREADABLE_IMAGE = "unreadable image"
EMPTY_CAPTION = "empty caption"
WRONG_FIELDS = "wrong number of fields"
DUPLICATE_LINE = "duplicate line"
MALFORMED_ENTRY = "malformed entry"  # a JSON entry without its file name / caption fields
UNLISTED_IMAGE = "annotation of an unlisted image"  # COCO: image_id not in the file's "images"
NO_CAPTIONS = "image without captions"  # COCO: listed in "images", no annotation names it

KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
# Split of an image of COCO's official val release: val or test, drawn by data.splits.
HELDOUT = "val+test"


class DatasetError(ValueError):
    """Unusable dataset input: missing folder, unknown layout, no images found."""


@dataclasses.dataclass(frozen=True)
class ImageCaptions:
    name: str                  # image file name as in the caption file, e.g. "1000092795.jpg"
    path: pathlib.Path         # absolute path of the image file
    captions: tuple[str, ...]  # cleaned (data.captions.clean_captions); non-empty
    split: str | None          # "train" | "val" | "test" from Karpathy's JSON; COCO's official
    #                            files: "train" or HELDOUT (its val release); else None
    image_id: int | None = None  # COCO's image id (Karpathy's "cocoid", the official "id")


class SkipReport:
    """Skipped lines counted by reason, with up to MAX_EXAMPLES examples ("captions.txt:17")."""

    MAX_EXAMPLES = 3

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.MAX_EXAMPLES:
            examples.append(example)

    def merge(self, other: "SkipReport") -> None:
        self.counts.update(other.counts)
        for reason, examples in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(examples[:self.MAX_EXAMPLES - len(mine)])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        reasons = sorted(self.counts, key=lambda r: (-self.counts[r], r))
        return {"counts": {r: self.counts[r] for r in reasons},
                "examples": {r: list(self.examples.get(r, [])) for r in reasons},
                "total": self.total}

    @classmethod
    def from_dict(cls, data: dict) -> "SkipReport":
        """Inverse of as_dict (e.g. for a report read back from JSON)."""
        report = cls()
        report.counts.update(data.get("counts", {}))
        report.examples = {r: list(e)[:cls.MAX_EXAMPLES] for r, e in data.get("examples", {}).items()}
        return report

    def summary(self) -> str:
        if not self.total:
            return "skipped nothing"
        counts = self.as_dict()["counts"]
        lines = [f"skipped {self.total} line{'s' if self.total != 1 else ''}: "
                 + ", ".join(f"{n} {reason}" for reason, n in counts.items())]
        for reason in counts:
            lines.append(f"  {reason}: e.g. {', '.join(self.examples.get(reason, []))}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"SkipReport({dict(self.counts)})"


@dataclasses.dataclass
class CaptionDataset:
    root: pathlib.Path
    layout: str
    images: list[ImageCaptions]
    skipped: SkipReport
    caption_file: pathlib.Path | None = None
    image_dir: pathlib.Path | None = None

    @property
    def num_captions(self) -> int:
        return sum(len(image.captions) for image in self.images)


@dataclasses.dataclass(frozen=True)
class _Record:
    """One caption line as read from a caption file, before any checks."""
    where: str           # "captions.txt:17", for the skip report
    name: str            # image file name
    raw: str             # caption as written
    split: str | None
    folder: str = ""     # sub-folder of the image folder holding it (COCO: "val2014"), "" = none
    image_id: int | None = None

    @property
    def relpath(self) -> str:
        """The image file's path under the image folder."""
        return f"{self.folder}/{self.name}" if self.folder else self.name


# ---------------------------------------------------------------------------------------------
# Layout detection


def _found_caption_files(folder: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
    """(layout, file) for every known caption file directly in `folder`, in preference order."""
    return [(layout, folder / name) for layout in LAYOUTS for name in CAPTION_FILES[layout]
            if (folder / name).is_file()]


def _looked_for() -> str:
    return "; ".join(f"{layout}: {', '.join(CAPTION_FILES[layout])}" for layout in LAYOUTS)


def detect_layout(root) -> tuple[str, pathlib.Path]:
    """(layout name, caption file) of the dataset folder `root`.

    Looks in `root` first, then in its immediate sub-folders (a Kaggle download often nests one
    level, e.g. flickr30k_images/results.csv or Flickr8k_text/Flickr8k.token.txt). `root` may also
    be a caption file itself. With several caption files, Karpathy's JSON wins.
    """
    root = pathlib.Path(root).expanduser()
    if root.is_file():
        for layout in LAYOUTS:
            if root.name in CAPTION_FILES[layout]:
                return layout, root.resolve()
        raise DatasetError(f"{root} is not a known caption file; expected one of: {_looked_for()}")
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    found = _found_caption_files(root)
    if not found:
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            found += _found_caption_files(sub)
        found.sort(key=lambda item: LAYOUTS.index(item[0]))
    if not found:
        present = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
        shown = ", ".join(present[:12]) + (", ..." if len(present) > 12 else "") or "nothing"
        raise DatasetError(
            f"no caption file found in {root} or its sub-folders (it holds: {shown}). "
            f"Expected one of the layouts {', '.join(LAYOUTS)} with these file names: "
            f"{_looked_for()}")
    layout, path = found[0]
    karpathy = [p for lay, p in found if lay == "karpathy_json"]
    if len(karpathy) > 1:  # Karpathy's zip ships both; take the one whose images are here
        path = _best_karpathy_file(karpathy, root)
    return layout, path.resolve()


def _best_karpathy_file(paths: list[pathlib.Path], root: pathlib.Path) -> pathlib.Path:
    """Of several Karpathy JSON files, the first whose first images exist in an image folder."""
    for path in paths:
        names = [r.relpath for r in itertools.islice(_read_karpathy_json(path, SkipReport()), 5)]
        if _find_image_dir([path.parent, root], names, required=False):
            return path
    return paths[0]


# ---------------------------------------------------------------------------------------------
# Per-layout readers: caption file -> _Record stream (wrong-field lines go to the report)


def _read_lines(path: pathlib.Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without line ending); BOM and CRLF tolerated."""
    with open(path, encoding="utf-8-sig", errors="replace", newline=None) as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line


def _read_captions_txt(path: pathlib.Path, skipped: SkipReport) -> Iterator[_Record]:
    """Kaggle captions.txt: CSV "image,caption"; a caption with commas is quoted."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = csv.reader(f)
        for row in reader:
            where = f"{path.name}:{reader.line_num}"
            if not any(field.strip() for field in row):
                continue  # blank line
            if reader.line_num == 1 and [c.strip().lower() for c in row] == ["image", "caption"]:
                continue  # header
            if len(row) != 2 or not row[0].strip():
                skipped.add(WRONG_FIELDS, where)
                continue
            yield _Record(where, row[0].strip(), row[1].strip(), None)


def _read_results_csv(path: pathlib.Path, skipped: SkipReport) -> Iterator[_Record]:
    """Kaggle results.csv: "image_name| comment_number| comment" with stray spaces."""
    for number, line in _read_lines(path):
        where = f"{path.name}:{number}"
        fields = [field.strip() for field in line.split("|")]
        if fields[0].lower() == "image_name":
            continue  # header
        if len(fields) != 3 or not fields[0]:
            skipped.add(WRONG_FIELDS, where)
            continue
        yield _Record(where, fields[0], fields[2], None)


def _read_token_file(path: pathlib.Path, skipped: SkipReport) -> Iterator[_Record]:
    """Original release: "1000092795.jpg#0<TAB>Two young guys ..." (also Flickr8k.token.txt)."""
    for number, line in _read_lines(path):
        where = f"{path.name}:{number}"
        fields = line.split("\t")
        name = fields[0].strip().rsplit("#", 1)[0].strip()
        if len(fields) != 2 or not name:
            skipped.add(WRONG_FIELDS, where)
            continue
        yield _Record(where, name, fields[1].strip(), None)


def _load_json(path: pathlib.Path, expected: str) -> dict:
    """The JSON object in `path` holding an "images" list, or DatasetError naming `expected`."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path} has no \"images\" list; expected {expected}")
    return data


def _coco_id(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _read_karpathy_json(path: pathlib.Path, skipped: SkipReport) -> Iterator[_Record]:
    """Karpathy's dataset_{flickr30k,flickr8k,coco}.json: images[i].filename, .split,
    .sentences[j].raw; COCO's entries add .filepath (the image's sub-folder) and .cocoid."""
    data = _load_json(path, "Karpathy's format {\"images\": [{\"filename\", \"split\", "
                            "\"sentences\": [{\"raw\"}]}]}")
    for i, image in enumerate(data["images"]):
        where = f"{path.name}:images[{i}]"
        if (not isinstance(image, dict) or not isinstance(image.get("filename"), str)
                or not isinstance(image.get("sentences"), list)
                or not isinstance(image.get("filepath", ""), str)):
            skipped.add(MALFORMED_ENTRY, where)
            continue
        split = KARPATHY_SPLITS.get(image.get("split"))
        folder, image_id = image.get("filepath", "").strip().strip("/"), _coco_id(
            image.get("cocoid"))
        for j, sentence in enumerate(image["sentences"]):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if raw is None and isinstance(sentence, dict):  # fall back to the token list
                raw = " ".join(sentence.get("tokens") or [])
            if not isinstance(raw, str):
                skipped.add(MALFORMED_ENTRY, f"{where}.sentences[{j}]")
                continue
            yield _Record(f"{where}.sentences[{j}]", image["filename"].strip(), raw.strip(),
                          split, folder, image_id)


def _coco_release_files(path: pathlib.Path) -> list[tuple[pathlib.Path, str]]:
    """(annotation file, split of its images) of the release `path` belongs to: its train file
    ("train") and val file (HELDOUT), those that exist, train first."""
    year = path.stem[-4:]
    files = [(path.with_name(f"captions_{release}{year}.json"), split)
             for release, split in (("train", "train"), ("val", HELDOUT))]
    return [(file, split) for file, split in files if file.is_file()]


def _read_coco_official(path: pathlib.Path, skipped: SkipReport) -> Iterator[_Record]:
    """COCO's captions_{train,val}{2014,2017}.json, both files of the release `path` is one of:
    {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}. Images sit in
    the folder named like the file's release (captions_val2014.json -> val2014/)."""
    for file, split in _coco_release_files(path):
        data = _load_json(file, 'COCO\'s format {"images": [{"id", "file_name"}], '
                                '"annotations": [{"image_id", "caption"}]}')
        folder = file.stem[len("captions_"):]  # "val2014"
        names: dict[int, str] = {}
        for i, image in enumerate(data["images"]):
            image_id = _coco_id(image.get("id")) if isinstance(image, dict) else None
            name = image.get("file_name") if isinstance(image, dict) else None
            if image_id is None or not isinstance(name, str) or not name.strip():
                skipped.add(MALFORMED_ENTRY, f"{file.name}:images[{i}]")
                continue
            names[image_id] = name.strip()
        annotations = data.get("annotations")
        if not isinstance(annotations, list):
            raise DatasetError(f"{file} has no \"annotations\" list; expected COCO's captions "
                               'file {"images": [...], "annotations": [{"image_id", "caption"}]}')
        captioned: set[int] = set()
        for i, annotation in enumerate(annotations):
            where = f"{file.name}:annotations[{i}]"
            image_id = (_coco_id(annotation.get("image_id")) if isinstance(annotation, dict)
                        else None)
            caption = annotation.get("caption") if isinstance(annotation, dict) else None
            if image_id is None or not isinstance(caption, str):
                skipped.add(MALFORMED_ENTRY, where)
            elif image_id not in names:
                skipped.add(UNLISTED_IMAGE, where)
            else:
                captioned.add(image_id)
                yield _Record(where, names[image_id], caption.strip(), split, folder, image_id)
        for image_id in sorted(set(names) - captioned):
            skipped.add(NO_CAPTIONS, f"{file.name}:id {image_id}")


READERS = {
    "karpathy_json": _read_karpathy_json,
    "coco_official": _read_coco_official,
    "flickr_token": _read_token_file,
    "kaggle_results_csv": _read_results_csv,
    "kaggle_captions_txt": _read_captions_txt,
}


# ---------------------------------------------------------------------------------------------
# Image folder


def _candidate_image_dirs(bases: list[pathlib.Path]) -> list[pathlib.Path]:
    candidates: list[pathlib.Path] = []
    for base in bases:
        for name in IMAGE_DIRS:
            folder = base if name == "." else base / name
            # Kaggle nests flickr30k_images in itself: look one level deeper too.
            options = [folder] if name == "." else [folder, folder / folder.name]
            for option in options:
                option = option.resolve()
                if option.is_dir() and option not in candidates:
                    candidates.append(option)
    return candidates


def _find_image_dir(bases: list[pathlib.Path], names: list[str],
                    required: bool = True) -> pathlib.Path | None:
    """The candidate folder holding the most of a sample of the referenced image names."""
    sample = names[:50]
    best, best_hits = None, 0
    for folder in _candidate_image_dirs(bases):
        hits = sum((folder / name).is_file() for name in sample)
        if hits > best_hits:
            best, best_hits = folder, hits
    if best is None and required:
        looked = ", ".join(str(p) for p in _candidate_image_dirs(bases)) or "(none exist)"
        example = f" (e.g. {sample[0]})" if sample else ""
        raise DatasetError(
            f"no images found: none of the images named in the caption file{example} is in "
            f"any of the folders looked at: {looked}. Expected the images in one of "
            f"{', '.join(n for n in IMAGE_DIRS if n != '.')} or beside the caption file")
    return best


def _image_sizes(folder: pathlib.Path, subfolders=("",)) -> dict[str, int]:
    """Path under `folder` ("name.jpg", "val2014/name.jpg") -> size in bytes for every file in
    `folder` and in each of its `subfolders` ("" = itself): one directory scan each."""
    sizes = {}
    for sub in subfolders:
        prefix = f"{sub}/" if sub else ""
        try:
            with os.scandir(folder / sub) as entries:
                for entry in entries:
                    if entry.is_file():
                        sizes[prefix + entry.name] = entry.stat().st_size
        except (FileNotFoundError, NotADirectoryError):  # e.g. val2014/ not downloaded
            continue
    return sizes


# ---------------------------------------------------------------------------------------------
# Loading


def load_dataset(root, layout: str | None = None) -> CaptionDataset:
    """Reads the dataset in folder `root` (layout detected, or forced with `layout`).

    Lines with a missing or empty (0-byte) image, an empty caption, the wrong number of fields,
    or repeating an earlier line are skipped and counted in `.skipped`. Raises DatasetError when
    the folder, caption file or images cannot be found, or nothing usable remains.
    """
    root = pathlib.Path(root).expanduser()
    if layout is None:
        layout, caption_file = detect_layout(root)
    else:
        caption_file = _forced_caption_file(root, layout)
    if root.is_file():
        root = root.parent
    skipped = SkipReport()
    records = list(READERS[layout](caption_file, skipped))
    if not records:
        raise DatasetError(f"{caption_file} holds no usable caption lines "
                           f"({skipped.summary()})")
    bases = [caption_file.parent, root.resolve()]
    if layout == "coco_official":  # annotations/captions_*.json: train2014/ is beside annotations/
        bases.append(caption_file.parent.parent)
    bases = list(dict.fromkeys(bases))
    image_dir = _find_image_dir(bases, _spread_sample(records), required=False)
    if image_dir is None and any(r.folder for r in records):
        # COCO's train2014/ and val2014/ images moved into one folder: look for them there
        records = [dataclasses.replace(r, folder="") for r in records]
    if image_dir is None:
        image_dir = _find_image_dir(bases, _spread_sample(records))
    images = _group(records, image_dir, skipped)
    if not images:
        raise DatasetError(f"no images found: no usable image with captions in {root} "
                           f"(images looked for in {image_dir}); {skipped.summary()}")
    return CaptionDataset(root=root.resolve(), layout=layout, images=images, skipped=skipped,
                          caption_file=caption_file, image_dir=image_dir)


def _forced_caption_file(root: pathlib.Path, layout: str) -> pathlib.Path:
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if root.is_file() and root.name in CAPTION_FILES[layout]:
        return root.resolve()
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    for folder in [root] + sorted(p for p in root.iterdir() if p.is_dir()):
        for name in CAPTION_FILES[layout]:
            if (folder / name).is_file():
                return (folder / name).resolve()
    raise DatasetError(f"no {layout} caption file ({', '.join(CAPTION_FILES[layout])}) "
                       f"in {root} or its sub-folders")


def _spread_sample(records: list[_Record], size: int = 50) -> list[str]:
    """Up to `size` distinct image paths from across the records (one per sub-folder first: COCO's
    first lines are all train2014/ images, a user may have only val2014/)."""
    paths = list(dict.fromkeys(r.relpath for r in records))
    firsts = list(dict.fromkeys({r.folder: r.relpath for r in reversed(records)}.values()))
    return list(dict.fromkeys(firsts + paths))[:size]


def _group(records: list[_Record], image_dir: pathlib.Path,
           skipped: SkipReport) -> list[ImageCaptions]:
    """Checks images, drops duplicates and empty captions, groups captions by image (file order).
    An image is known by its file name (the feature cache's key): COCO's names are unique across
    its train and val folders."""
    sizes = _image_sizes(image_dir, sorted({r.folder for r in records}))
    kept: list[_Record] = []
    seen: set[tuple[str, str]] = set()
    for record in records:
        if record.relpath not in sizes:
            skipped.add(MISSING_IMAGE, record.where)
        elif sizes[record.relpath] == 0:
            skipped.add(UNREADABLE_IMAGE, record.where)
        elif (record.name, record.raw) in seen:
            skipped.add(DUPLICATE_LINE, record.where)
        else:
            seen.add((record.name, record.raw))
            kept.append(record)
    cleaned = clean_captions([r.raw for r in kept])  # one vectorised call for the whole file
    captions: dict[str, list[str]] = {}
    first: dict[str, _Record] = {}
    for record, caption in zip(kept, cleaned):
        if not caption:
            skipped.add(EMPTY_CAPTION, record.where)
            continue
        captions.setdefault(record.name, []).append(caption)
        first.setdefault(record.name, record)
    return [ImageCaptions(name=name, path=image_dir / first[name].relpath, captions=tuple(caps),
                          split=first[name].split, image_id=first[name].image_id)
            for name, caps in captions.items()]
