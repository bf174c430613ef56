"""`--data` for every command: a Flickr30k/Flickr8k folder in any known layout, or nothing for
the built-in generated dataset."""
from pathlib import Path

from data.builtin import ensure_builtin
from data.layouts import CaptionDataset, load_dataset

BUILTIN_ROOT = Path("datasets/builtin")


def open_dataset(data=None) -> CaptionDataset:
    """Reads `data` (a folder) or, when it is None/empty, the built-in dataset (generated on
    first use under datasets/builtin)."""
    if not data:
        return load_dataset(ensure_builtin(BUILTIN_ROOT))
    return load_dataset(Path(data))
