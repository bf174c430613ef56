"""`--data` for every command: a Flickr30k/Flickr8k/COCO folder in any known layout, a prepared
TFDS data dir (flickr30k_captions, or TFDS's own coco_captions), or nothing for the built-in
generated dataset."""
import hashlib
import json
import os
import shutil
from pathlib import Path

from tqdm import tqdm

from data.builtin import ensure_builtin
from data.files import BUILTIN_ROOT
from data.layouts import CaptionDataset, load_dataset

TFDS_EXPORT_ROOT = Path("datasets/from-tfds")


def is_tfds_dir(path: Path) -> bool:
    from data.tfds_coco import is_coco_tfds_dir
    from data.tfds_flickr30k.flickr30k_captions import NAME
    return ((path / "dataset_info.json").is_file() or (path / NAME).is_dir()
            or is_coco_tfds_dir(path))


def open_dataset(data=None) -> CaptionDataset:
    """Reads `data` (a folder) or, when it is None/empty, the built-in dataset (generated on
    first use in BUILTIN_ROOT)."""
    if not data:
        return load_dataset(ensure_builtin(BUILTIN_ROOT))
    path = Path(data)
    if path.is_dir() and is_tfds_dir(path):
        return load_dataset(materialize_tfds(path))
    return load_dataset(path)


def materialize_tfds(data_dir: Path, out_root: Path = TFDS_EXPORT_ROOT) -> Path:
    """Writes a prepared TFDS dataset once as image files + Karpathy JSON (its splits kept), so
    that features are cached per image file like every other source. Returns the folder:
    Images/ + dataset_flickr30k.json for flickr30k_captions; for coco_captions COCO's own
    train2014/ + val2014/ + dataset_coco.json with each image's COCO id (cocoid)."""
    from data.tfds_coco import SPLITS as COCO_SPLITS, coco_records, is_coco_tfds_dir
    coco = is_coco_tfds_dir(data_dir)
    key = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:10]
    folder = out_root / f"{data_dir.resolve().name}-{key}"
    json_name, dataset = ("dataset_coco.json", "coco") if coco else ("dataset_flickr30k.json",
                                                                    "flickr30k")
    if (folder / json_name).is_file():
        return folder
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    images = []
    for split in COCO_SPLITS if coco else ("train", "val", "test"):
        for name, image_id, encoded, captions in tqdm(
                coco_records(data_dir, split) if coco else _flickr_records(data_dir, split),
                desc=f"TFDS {split}", unit="img"):
            name = Path(name).name
            # COCO's file names say their release: COCO_train2014_... in train2014/
            subfolder = ("train2014" if "train2014" in name else "val2014") if coco else "Images"
            (tmp / subfolder).mkdir(exist_ok=True)
            (tmp / subfolder / name).write_bytes(encoded)
            entry = {"filename": name, "split": split, "sentences": [{"raw": c} for c in captions]}
            if coco:
                entry.update(filepath=subfolder, cocoid=image_id)
            images.append(entry)
    (tmp / json_name).write_text(json.dumps({"images": images, "dataset": dataset}))
    os.replace(tmp, folder)
    return folder


def _flickr_records(data_dir: Path, split: str):
    """flickr30k_captions' records in coco_records' shape (no image ids)."""
    from data.tfds_flickr30k.flickr30k_captions import tfds_records
    for name, encoded, captions in tfds_records(data_dir, split):
        yield name, None, encoded, captions
