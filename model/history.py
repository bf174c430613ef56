"""The one reader of a run's history.csv (written by keras.callbacks.CSVLogger, appended across
resumes): the loss curve, the run summary and a resumed run's best validation loss all read it
here. No TensorFlow import, so plotting stays light."""
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
    """{"epoch", "loss", and "val_loss" / "epoch_seconds" when logged} as float arrays, one entry
    per logged epoch.

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
    history = {name: np.array([_number(row.get(name)) for row in rows])
               for name in ("epoch", "loss", "val_loss", "epoch_seconds") if name in columns}
    if np.all(np.isnan(history["loss"])):
        raise ValueError(f"{path} has no numeric 'loss' value in any of its {len(rows)} rows")
    history["epoch"] = history["epoch"] + 1 if "epoch" in history else np.arange(1, len(rows) + 1)
    return history


def _has_val_loss(history: dict) -> bool:
    return "val_loss" in history and not np.all(np.isnan(history["val_loss"]))


def best_val_loss(history_csv) -> float | None:
    """The lowest val_loss logged so far; None before the first finished epoch (no file, or a
    header only) or when no validation was logged."""
    path = Path(history_csv)
    if not path.is_file():
        return None
    try:
        history = read_history(path)
    except ValueError:  # killed before its first epoch ended
        return None
    return float(np.nanmin(history["val_loss"])) if _has_val_loss(history) else None


def history_summary(history_csv) -> dict:
    """Epochs, best epoch (by val_loss), best and final losses: what a run's summary.json holds."""
    history = read_history(history_csv)
    summary = {"epochs": len(history["loss"]), "final_loss": float(history["loss"][-1])}
    if _has_val_loss(history):
        best = int(np.nanargmin(history["val_loss"]))
        summary.update(best_epoch=int(history["epoch"][best]),
                       best_val_loss=float(history["val_loss"][best]),
                       final_val_loss=float(history["val_loss"][-1]))
    if "epoch_seconds" in history and not np.all(np.isnan(history["epoch_seconds"])):
        # The median: the first epoch also traces the graphs, and a resumed run's first epoch
        # the restore.
        summary["median_epoch_seconds"] = float(np.nanmedian(history["epoch_seconds"]))
    return summary
