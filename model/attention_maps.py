"""Per-word attention maps made visible: pair a caption's words with the served `attention` rows,
lay a map over its image as a heatmap, and draw a strip of one small overlay per word.

numpy, PIL and matplotlib's colormaps only (no TensorFlow, no pyplot): the Gradio page, the
client's CLI, the evaluation's samples.png and the notebook all use it.

The served output (see the export's contract): float32 [max_new_tokens, 7, 7] per image; row i is
where the model looked for word i of the caption, row n (n words) the step that produced <end>,
zeros after. Cell [r, c] covers row band r and column band c of the WHOLE image (the model sees it
resized to 224x224 without cropping), so a map is stretched over the image whatever its aspect.
"""
import os

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

END = "<end>"
COLORMAP = "inferno"  # perceptual; dark where the model did not look, bright where it did
ALPHA = 0.7  # weight of the heatmap over the image where the map peaks (0 where it is 0)
TILE_SIDE = 160  # pixels of a strip tile's longer image side
STRIP_COLUMNS = 6  # tiles per strip row before it wraps
FONT_SIZE = 15  # pixels of the word above each tile
GAP = 6  # pixels between tiles


def _title_height(font_size: int) -> int:
    return round(font_size * 1.7)  # room above each tile for its word


TITLE_HEIGHT = _title_height(FONT_SIZE)


def _checked_attention(attention) -> np.ndarray:
    attention = np.asarray(attention, dtype=np.float32)
    if attention.ndim != 3 or 0 in attention.shape:
        raise ValueError(f"attention must be [max_new_tokens, rows, columns] (e.g. [30, 7, 7]), "
                         f"got shape {list(attention.shape)}")
    if not np.all(np.isfinite(attention)):
        raise ValueError("attention has NaN or infinite values")
    return attention


def word_maps(caption: str, attention) -> list[tuple[str, np.ndarray]]:
    """[(word, map [rows, columns])] for each word of caption.split(), then ("<end>", map) if the
    row after the last word is non-zero (the caption ended before the decode limit).

    Raises ValueError for an attention that is not 3-D, has NaN/inf, or has fewer rows than words.
    """
    attention = _checked_attention(attention)
    words = caption.split()
    if len(words) > len(attention):
        raise ValueError(f"caption has {len(words)} words but attention has only {len(attention)} "
                         f"rows (one per word is needed)")
    pairs = list(zip(words, attention))
    if len(attention) > len(words) and np.any(attention[len(words)]):
        pairs.append((END, attention[len(words)]))
    return pairs


def _rgb_image(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"image must be a PIL image or a uint8 array [h, w, 3] (or [h, w]), got "
                         f"{array.dtype} {list(array.shape)}")
    return Image.fromarray(array).convert("RGB")


def overlay(image, attention_map) -> Image.Image:
    """The map (any [h, w] grid) smoothly upsampled over the whole image, normalised to its
    maximum, coloured with COLORMAP and blended onto the image in proportion to the attention:
    where the model looked the heat shows, elsewhere the image keeps its own colours (which the
    caption's colour words are about). Same size as the image.

    image: a PIL image or a uint8 array [h, w, 3] / [h, w]. An all-zero map leaves the image as it
    is (nothing looked at). Raises ValueError for a map that is not 2-D, not finite or negative.
    """
    rgb = _rgb_image(image)
    grid = np.asarray(attention_map, dtype=np.float32)
    if grid.ndim != 2 or 0 in grid.shape:
        raise ValueError(f"attention_map must be 2-D [rows, columns], got shape {list(grid.shape)}")
    if not np.all(np.isfinite(grid)) or np.any(grid < 0):
        raise ValueError("attention_map must be finite and non-negative (a softmax over the cells)")
    # PIL's resize maps cell centres to (c + 0.5) * width / columns: the grid covers the whole image.
    upsampled = np.asarray(Image.fromarray(grid).resize(rgb.size, Image.Resampling.BICUBIC))
    upsampled = np.clip(upsampled, 0, None)  # bicubic overshoots a little below zero near peaks
    peak = upsampled.max()
    normalised = upsampled / peak if peak > 0 else upsampled
    heat = colormaps[COLORMAP](normalised)[..., :3] * 255
    weight = ALPHA * normalised[..., None]
    blended = (1 - weight) * np.asarray(rgb, np.float32) + weight * heat
    return Image.fromarray(np.round(blended).astype(np.uint8))


def _fitted(draw: ImageDraw.ImageDraw, word: str, font, width: int) -> str:
    """The word, cut with an ellipsis if it is wider than the tile."""
    if draw.textlength(word, font=font) <= width:
        return word
    while len(word) > 1 and draw.textlength(word + "…", font=font) > width:
        word = word[:-1]
    return word + "…"


def attention_strip(image, caption: str, attention, tile_side: int = TILE_SIDE,
                    columns: int = STRIP_COLUMNS, font_size: int = FONT_SIZE) -> Image.Image:
    """One small overlay per word of the caption (plus <end> when its map is there), each titled
    with its word, in rows of at most `columns` tiles. White background, RGB. tile_side is the
    longer side of each tile's image in pixels; font_size the words' height in pixels (raise it
    when the strip will be shown scaled down).

    Raises ValueError for bad attention (see word_maps), a bad image, a caption with no words, or
    tile_side below 8, columns or font_size below 1.
    """
    if tile_side < 8 or columns < 1 or font_size < 1:
        raise ValueError(f"tile_side must be at least 8, columns and font_size at least 1, got "
                         f"{tile_side}, {columns}, {font_size}")
    pairs = word_maps(caption, attention)
    if not pairs:
        raise ValueError("the caption has no words, so there are no attention maps to show")
    thumbnail = _rgb_image(image)
    thumbnail.thumbnail((tile_side, tile_side))  # keeps the aspect ratio: tiles are the image's shape
    width, height = thumbnail.size
    title = _title_height(font_size)
    columns = min(columns, len(pairs))
    rows = -(-len(pairs) // columns)
    strip = Image.new("RGB", (columns * (width + GAP) - GAP, rows * (title + height + GAP) - GAP), "white")
    draw, font = ImageDraw.Draw(strip), ImageFont.load_default(size=font_size)
    for k, (word, grid) in enumerate(pairs):
        left = (k % columns) * (width + GAP)
        top = (k // columns) * (title + height + GAP)
        draw.text((left + width / 2, top + title / 2), _fitted(draw, word, font, width),
                  fill="black", font=font, anchor="mm")
        strip.paste(overlay(thumbnail, grid), (left, top + title))
    return strip


def strip_of_file(path, caption: str, attention, **options) -> tuple[Image.Image | None, str]:
    """(attention_strip of the image file, "") or (None, why not): a file PIL cannot read, or
    maps that do not fit the caption. For the page and the client's CLI, which must not fail on
    one image."""
    try:
        with Image.open(path) as image:
            return attention_strip(image, caption, attention, **options), ""
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return None, f"no attention maps for {os.path.basename(path)}: {e}"
