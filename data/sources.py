"""`--data` for every command: a Flickr30k/Flickr8k folder in any known layout, a prepared TFDS
data dir (flickr30k_captions), or nothing for the built-in generated dataset."""
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
    from data.tfds_flickr30k.flickr30k_captions import NAME
    return (path / "dataset_info.json").is_file() or (path / NAME).is_dir()


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
    that features are cached per image file like every other source. Returns the folder."""
    from data.tfds_flickr30k.flickr30k_captions import tfds_records
    key = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:10]
    folder = out_root / f"{data_dir.resolve().name}-{key}"
    if (folder / "dataset_flickr30k.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "Images").mkdir(parents=True)
    images = []
    for split in ("train", "val", "test"):
        for name, encoded, captions in tqdm(tfds_records(data_dir, split), desc=f"TFDS {split}",
                                            unit="img"):
            (tmp / "Images" / Path(name).name).write_bytes(encoded)
            images.append({"filename": Path(name).name, "split": split,
                           "sentences": [{"raw": c} for c in captions]})
    (tmp / "dataset_flickr30k.json").write_text(json.dumps({"images": images,
                                                            "dataset": "flickr30k"}))
    os.replace(tmp, folder)
    return folder
