"""PNG pictures of a run: the loss curve (a self-critical run's reward curve) and a grid of sample
captions.

Drawn with matplotlib's object API on the Agg canvas (no pyplot): nothing touches a display or
the global backend, so this works on headless training machines and inside tests.
"""
import math
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from data.files import atomic_write
from model.attention_maps import attention_strip, word_maps
from model.history import read_history

MAX_TILES = 12  # a grid beyond this is unreadable; callers pass a handful of samples anyway

# Sample grid geometry, in inches and points.
TILE_WIDTH = 3.9
IMAGE_HEIGHT = 2.8
PAD = 0.12
TITLE_HEIGHT = 0.5
FONT_SIZE = 8.5
LINE_HEIGHT = FONT_SIZE * 1.4 / 72  # inches per text line
WRAP_BOLD, WRAP_NORMAL = 48, 58     # characters per line that fit TILE_WIDTH at FONT_SIZE
MAX_LINES_PER_CAPTION = 3
THUMBNAIL_SIDE = 512
PLACEHOLDER_GREY = 216  # RGB level of the tile drawn for a missing or unreadable image
STRIP_HEIGHT = 1.9  # inches under each image for its per-word attention strip (attention models)
STRIP_COLUMNS = 6  # word heatmaps per strip row
STRIP_TILE_SIDE = 120  # pixels of each word heatmap before the figure scales the strip down
STRIP_FONT = 26  # pixels of each word above its heatmap: about FONT_SIZE once scaled down


def _save(fig: Figure, out_png, dpi: int) -> None:
    """Writes the PNG atomically: readers never see half an image."""
    atomic_write(out_png, lambda handle: fig.savefig(handle, format="png", dpi=dpi))


# ---------------------------------------------------------------------------------------- loss curve

def loss_curve_png(history_csv, out_png) -> None:
    """Train vs validation loss per epoch from a Keras CSVLogger file, best epoch marked.

    The best epoch is the lowest val_loss (the one ModelCheckpoint keeps); without a val_loss
    column, the lowest training loss. Raises ValueError if the CSV has no 'loss' column or no rows.
    """
    history = read_history(history_csv)
    has_val = "val_loss" in history and not np.all(np.isnan(history["val_loss"]))
    title = ("Training and validation loss" if has_val
             else "Training loss (no validation logged)")
    _curve_png(history, [("loss", "training loss"), ("val_loss", "validation loss")],
               "val_loss" if has_val else "loss", "min", "loss", title, out_png)


def reward_curve_png(history_csv, out_png) -> None:
    """A self-critical run's curves: the mean CIDEr-D reward of the sampled training captions and
    the validation CIDEr-D of the greedy captions, best epoch (highest validation CIDEr-D)
    marked."""
    history = read_history(history_csv)
    for name in ("reward", "val_cider_d"):
        if name not in history:
            raise ValueError(f"{history_csv} has no {name!r} column: not a self-critical run")
    _curve_png(history, [("reward", "training reward (sampled captions)"),
                         ("val_cider_d", "validation CIDEr-D (greedy)")],
               "val_cider_d", "max", "CIDEr-D", "Self-critical training", out_png)


def _curve_png(history, series, best_on, mode, ylabel, title, out_png) -> None:
    """One line per (column, label) of `series` that was logged, the best epoch by `best_on`
    ringed."""
    epochs = history["epoch"]
    best = int(np.nanargmin(history[best_on]) if mode == "min" else np.nanargmax(history[best_on]))
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for (name, label), style, colour in zip(series, ("o-", "s-"), ("tab:blue", "tab:orange")):
        if name in history and not np.all(np.isnan(history[name])):
            ax.plot(epochs, history[name], style, label=label, color=colour)
    ax.axvline(epochs[best], color="grey", linestyle="--", linewidth=1)
    # A ring, not a filled marker, so the point it marks stays visible.
    ax.plot(epochs[best], history[best_on][best], "o", markersize=16, markerfacecolor="none",
            markeredgecolor="tab:red", markeredgewidth=2, zorder=3,
            label=f"best epoch {epochs[best]:g} ({best_on} {history[best_on][best]:.4f})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(x=0.05, y=0.12)  # keep markers off the frame
    if len(epochs) == 1:  # one point: give it some room instead of a zero-width axis
        ax.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
        ax.set_xticks(epochs)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, out_png, dpi=120)


# --------------------------------------------------------------------------------------- sample grid

def _load_thumbnail(image_path) -> tuple[np.ndarray | None, str]:
    """(RGB array, "") or (None, why it could not be shown)."""
    if not image_path:
        return None, "no image path"
    try:
        with Image.open(image_path) as image:
            image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decode at reduced size
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            return np.asarray(image), ""
    except FileNotFoundError:
        return None, "file not found"
    except Exception as error:  # noqa: BLE001 - PIL raises many types on bad files; a plot must not crash
        return None, f"unreadable image ({type(error).__name__})"


def _wrapped(text: str, width: int, prefix: str = "") -> list[str]:
    lines = textwrap.wrap(prefix + text, width, subsequent_indent=" " * len(prefix)) or [prefix]
    if len(lines) > MAX_LINES_PER_CAPTION:
        lines = lines[:MAX_LINES_PER_CAPTION]
        lines[-1] = lines[-1][:width - 1].rstrip() + "…"
    return lines


def _caption_lines(sample: dict) -> list[tuple[str, dict]]:
    """The text under one tile as (line, font properties) pairs, top to bottom."""
    prediction = str(sample["prediction"]).strip() or "(empty caption)"
    lines = [(line, {"weight": "bold"}) for line in _wrapped(prediction, WRAP_BOLD)]
    if sample.get("beam") is not None:
        lines += [(line, {"style": "italic"}) for line in _wrapped(str(sample["beam"]), WRAP_NORMAL, "beam: ")]
    name = Path(sample["image_path"]).name if sample.get("image_path") else "no image"
    lines.append((f"references ({name}):", {"color": "dimgrey"}))
    for reference in sample.get("references") or []:
        lines += [(line, {"color": "dimgrey"}) for line in _wrapped(reference, WRAP_NORMAL, "• ")]
    return lines


def _check_samples(samples: list[dict], columns: int) -> None:
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    if not samples:
        raise ValueError("sample_grid_png needs at least one sample, got none")
    for i, sample in enumerate(samples):
        if not isinstance(sample, dict) or "prediction" not in sample:
            raise ValueError(f"samples[{i}] must be a dict with at least 'prediction' (and "
                             f"'image_path', 'references', optional 'beam'), got {sample!r}")
        if sample.get("attention") is not None:
            try:
                word_maps(str(sample["prediction"]), sample["attention"])
            except ValueError as error:
                raise ValueError(f"samples[{i}]['attention'] does not fit its prediction: {error}") from None


def _draw_strip(ax, pixels, sample: dict) -> None:
    """The sample's per-word attention strip in ax (or why there is none)."""
    ax.set_axis_off()
    ax.set_anchor("NW")  # right under the image, in line with the caption text below
    if pixels is None:
        ax.text(0.5, 0.5, "no image to show the attention maps on", transform=ax.transAxes,
                ha="center", va="center", fontsize=FONT_SIZE, color="dimgrey")
    elif not str(sample["prediction"]).split():
        ax.text(0.5, 0.5, "empty caption: no attention maps", transform=ax.transAxes,
                ha="center", va="center", fontsize=FONT_SIZE, color="dimgrey")
    else:
        ax.imshow(attention_strip(pixels, str(sample["prediction"]), sample["attention"],
                                  tile_side=STRIP_TILE_SIDE, columns=STRIP_COLUMNS,
                                  font_size=STRIP_FONT))


def sample_grid_png(samples: list[dict], out_png, columns: int = 3) -> None:
    """A grid of images, each with its predicted caption (bold), optional beam caption and references.

    samples: [{"image_path": str, "references": [str, ...], "prediction": str, "beam": str (optional),
    "attention": float array [max_new_tokens, 7, 7] (optional: an attention model's maps for
    `prediction`)}]. A sample with attention also shows, under its image, one small heatmap per word
    of its prediction (model.attention_maps.attention_strip); without any, the grid is as it was.
    Shows at most MAX_TILES samples. A missing or corrupt image becomes a grey placeholder tile.
    """
    _check_samples(samples, columns)
    shown = samples[:MAX_TILES]
    columns = min(columns, len(shown))
    rows = math.ceil(len(shown) / columns)
    texts = [_caption_lines(sample) for sample in shown]
    text_height = max(len(lines) for lines in texts) * LINE_HEIGHT + PAD
    strip_height = STRIP_HEIGHT if any(s.get("attention") is not None for s in shown) else 0.0
    tile_height = IMAGE_HEIGHT + strip_height + text_height
    width, height = columns * TILE_WIDTH, TITLE_HEIGHT + rows * tile_height

    fig = Figure(figsize=(width, height))
    inches = fig.dpi_scale_trans  # place everything in inches from the bottom-left corner
    fig.text(width / 2, height - TITLE_HEIGHT / 2, f"Sample captions ({len(shown)} of {len(samples)})",
             transform=inches, ha="center", va="center", fontsize=13, weight="bold")
    for k, (sample, lines) in enumerate(zip(shown, texts)):
        left = (k % columns) * TILE_WIDTH + PAD
        top = height - TITLE_HEIGHT - (k // columns) * tile_height
        ax = fig.add_axes([left / width, (top - IMAGE_HEIGHT + PAD) / height,
                           (TILE_WIDTH - 2 * PAD) / width, (IMAGE_HEIGHT - 2 * PAD) / height])
        ax.set_axis_off()
        pixels, problem = _load_thumbnail(sample.get("image_path"))
        if pixels is None:
            ax.imshow(np.full((3, 4, 3), PLACEHOLDER_GREY, np.uint8))  # a 4:3 grey tile
            ax.text(0.5, 0.5, f"image unavailable\n{problem}", transform=ax.transAxes,
                    ha="center", va="center", fontsize=10, color="dimgrey")
        else:
            ax.imshow(pixels)
        if sample.get("attention") is not None:
            _draw_strip(fig.add_axes([left / width, (top - IMAGE_HEIGHT - strip_height) / height,
                                      (TILE_WIDTH - 2 * PAD) / width, strip_height / height]),
                        pixels, sample)
        for i, (line, font) in enumerate(lines):
            fig.text(left, top - IMAGE_HEIGHT - strip_height - i * LINE_HEIGHT, line, transform=inches,
                     ha="left", va="top", fontsize=FONT_SIZE, **font)
    _save(fig, out_png, dpi=100)
