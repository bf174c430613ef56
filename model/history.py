"""The one reader of a run's history.csv (written by keras.callbacks.CSVLogger, appended across
resumes): the loss curve, the run summary and a resumed run's best validation loss all read it
here, whichever value a stage's checkpoints watch. No TensorFlow import, so plotting stays light."""
import csv
import math
from pathlib import Path

import numpy as np


def _number(text) -> float:
    """A CSVLogger cell as a float; empty or "NA" (an epoch without validation) becomes NaN."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def read_history(history_csv) -> dict[str, np.ndarray]:
    """{"epoch", "loss", and every other logged column ("val_loss", "epoch_seconds", "reward",
    "val_cider_d", ...)} as float arrays, one entry per logged epoch.

    Epochs are 1-based, as Keras prints them ("Epoch 1/N"; CSVLogger writes 0). Raises ValueError
    if the file has no 'loss' column, no rows, or no numeric loss.
    """
    path = Path(history_csv)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        rows = [{k.strip(): v for k, v in row.items() if k} for row in reader]
    if "loss" not in columns:
        raise ValueError(f"{path} has no 'loss' column (columns: {columns or 'none'}); expected the "
                         "CSV written by keras.callbacks.CSVLogger, with columns epoch, loss, val_loss")
    if not rows:
        raise ValueError(f"{path} has a header but no epochs yet")
    history = {name: np.array([_number(row.get(name)) for row in rows]) for name in columns}
    if np.all(np.isnan(history["loss"])):
        raise ValueError(f"{path} has no numeric 'loss' value in any of its {len(rows)} rows")
    history["epoch"] = history["epoch"] + 1 if "epoch" in history else np.arange(1, len(rows) + 1)
    return history


def _logged(history: dict, name: str) -> bool:
    return name in history and not np.all(np.isnan(history[name]))


def best_epoch_index(history: dict, monitor: str = "val_loss", mode: str = "min") -> int | None:
    """The row of the best `monitor` value (lowest for mode "min", highest for "max"), as
    ModelCheckpoint keeps it; None when it was never logged."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    if not _logged(history, monitor):
        return None
    return int(np.nanargmin(history[monitor]) if mode == "min" else np.nanargmax(history[monitor]))


def best_logged(history_csv, monitor: str = "val_loss", mode: str = "min") -> float | None:
    """The best `monitor` value logged so far; None before the first finished epoch (no file,
    or a header only) or when it was never logged."""
    path = Path(history_csv)
    if not path.is_file():
        return None
    try:
        history = read_history(path)
    except ValueError:  # killed before its first epoch ended
        return None
    best = best_epoch_index(history, monitor, mode)
    return None if best is None else float(history[monitor][best])


def history_summary(history_csv, monitor: str = "val_loss", mode: str = "min") -> dict:
    """Epochs, best epoch (by `monitor`), best and final values: what a run's summary.json
    holds ("best_val_loss", "final_val_loss"; "best_val_cider_d" ... for a self-critical run)."""
    history = read_history(history_csv)
    summary = {"epochs": len(history["loss"]), "final_loss": float(history["loss"][-1])}
    best = best_epoch_index(history, monitor, mode)
    if best is not None:
        summary.update({"best_epoch": int(history["epoch"][best]),
                        f"best_{monitor}": float(history[monitor][best]),
                        f"final_{monitor}": float(history[monitor][-1])})
    if _logged(history, "epoch_seconds"):
        # The median: the first epoch also traces the graphs, and a resumed run's first epoch
        # the restore.
        summary["median_epoch_seconds"] = float(np.nanmedian(history["epoch_seconds"]))
    return summary
