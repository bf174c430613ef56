"""The project's one atomic file write, and the file facts every stage shares (which files are
images, where the built-in dataset lives). No TensorFlow here: the REST client and the Gradio page
import it too.

Every writer whose file someone else may read while it is being written (feature-cache shards and
manifest, the run folder's JSON, the evaluation report, plots, export settings) goes through
`atomic_write`: the bytes go to a hidden temp file in the same folder, are flushed to disk, and the
temp file is renamed over the target in one step. A reader (or a process that crashed mid-write)
sees the old file or the new one, never half of one.

It lives in data/, the first stage, so that every later stage (model/, export/, serving/) can use it
without an import pointing backwards.
"""
import os
import pathlib
from typing import BinaryIO, Callable

TEMP_SUFFIX = ".partial"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")  # what data.images decodes
BUILTIN_ROOT = pathlib.Path("datasets/builtin")  # data/builtin.py generates it on first use
BUILTIN_IMAGES = BUILTIN_ROOT / "Images"
CACHE_ROOT = pathlib.Path("cache")  # feature caches: cache/<data>-<encoder>[-kind] (model/features.py)


def atomic_write(path, content: bytes | str | Callable[[BinaryIO], None]) -> pathlib.Path:
    """Writes `content` (bytes, text as UTF-8, or a function writing to a binary handle) to `path`
    atomically; creates the parent folder. Returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        with open(temp, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode("utf-8") if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def remove_partial_files(folder) -> int:
    """Deletes temp files that a killed writer left in `folder`; returns how many. Only call it
    when no other writer can be active there (e.g. under a lock)."""
    removed = 0
    for temp in pathlib.Path(folder).glob(f".*{TEMP_SUFFIX}"):
        temp.unlink(missing_ok=True)
        removed += 1
    return removed
