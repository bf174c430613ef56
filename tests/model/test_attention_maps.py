"""model/attention_maps.py: words paired with the right rows, heatmaps land where the map peaks on
images of any aspect ratio, strips have one titled tile per word, bad input gives clear errors."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from model.attention_maps import GAP, TITLE_HEIGHT, attention_strip, overlay, word_maps

GRID = 7


def one_hot_rows(cells, total=30) -> np.ndarray:
    """attention [total, 7, 7] whose row i puts all its weight on cells[i]; rows after are zero."""
    attention = np.zeros([total, GRID, GRID], np.float32)
    for i, (r, c) in enumerate(cells):
        attention[i, r, c] = 1.0
    return attention


def test_word_maps_pairs_words_with_rows_and_adds_end_only_when_there():
    attention = one_hot_rows([(0, 0), (1, 1), (2, 2), (3, 3)])
    pairs = word_maps("a red image", attention)
    assert [word for word, _ in pairs] == ["a", "red", "image", "<end>"]
    for (_, grid), row in zip(pairs, attention):
        np.testing.assert_array_equal(grid, row)
    # Row n is zero: the caption hit the decode limit (or the model gave no <end> map).
    assert [w for w, _ in word_maps("a red image", one_hot_rows([(0, 0)] * 3))] == ["a", "red", "image"]
    # Exactly as many rows as words: no row for <end>, and no error.
    assert len(word_maps("a red image", one_hot_rows([(0, 0)] * 3, total=3))) == 3
    assert word_maps("", np.zeros([30, GRID, GRID])) == []  # a bad image: no caption, all zeros


@pytest.mark.parametrize("attention, message", [
    (np.zeros([30, 49]), r"must be \[max_new_tokens, rows, columns\].*\[30, 49\]"),
    (np.zeros([2, 30, 7, 7]), r"got shape \[2, 30, 7, 7\]"),
    (np.zeros([2, 7, 7]), "caption has 3 words but attention has only 2 rows"),
    (np.full([30, 7, 7], np.nan), "NaN"),
])
def test_word_maps_errors(attention, message):
    with pytest.raises(ValueError, match=message):
        word_maps("a red image", attention)


def _bright_centre(image: Image.Image) -> tuple[float, float]:
    """(x, y) as fractions of width/height of the brightest region's centre of mass."""
    brightness = np.asarray(image, np.float32).sum(axis=-1)
    ys, xs = np.nonzero(brightness >= np.percentile(brightness, 99))
    return xs.mean() / image.width, ys.mean() / image.height


@pytest.mark.parametrize("size", [(400, 100), (90, 360), (224, 224)])  # (width, height)
@pytest.mark.parametrize("cell", [(0, 0), (1, 5), (6, 6), (3, 3)])
def test_overlay_peak_lands_on_the_cell_for_any_aspect(size, cell):
    grey = np.full([size[1], size[0], 3], 90, np.uint8)
    result = overlay(grey, one_hot_rows([cell])[0])
    assert result.size == size and result.mode == "RGB"
    x, y = _bright_centre(result)
    r, c = cell  # cell (r, c) spans rows r/7..(r+1)/7 and columns c/7..(c+1)/7 of the whole image
    assert c / GRID <= x <= (c + 1) / GRID and r / GRID <= y <= (r + 1) / GRID, (x, y)


def test_overlay_is_smooth_and_keeps_the_image_visible():
    photo = np.random.default_rng(0).integers(0, 255, [120, 160, 3], dtype=np.uint8)
    uniform = np.full([GRID, GRID], 1 / 49, np.float32)
    a, b = (np.asarray(overlay(Image.fromarray(photo), grid), np.float32)
            for grid in (uniform, uniform * 5))
    np.testing.assert_allclose(a, b, atol=1)  # normalised to the max: the scale does not matter
    assert np.corrcoef(a.sum(-1).ravel(), photo.sum(-1).ravel())[0, 1] > 0.9  # the photo shows through
    # Smooth: between two peak cells the heat falls off gradually, no 7x7 blocks.
    row = np.asarray(overlay(np.zeros([70, 700, 3], np.uint8), one_hot_rows([(3, 3)])[0]),
                     np.float32).sum(-1)[35]
    assert len(np.unique(np.round(row[300:400]))) > 20


def test_overlay_accepts_greyscale_and_zero_maps():
    grey = np.full([50, 80], 200, np.uint8)
    unchanged = overlay(grey, np.zeros([GRID, GRID]))  # nothing looked at: the image as it is
    assert unchanged.size == (80, 50) and np.all(np.asarray(unchanged) == 200)
    assert overlay(Image.fromarray(grey).convert("L"), np.eye(GRID)).mode == "RGB"


@pytest.mark.parametrize("image, grid, message", [
    (np.zeros([10, 10, 3], np.float32), np.ones([7, 7]), "uint8 array"),
    (np.zeros([10, 10, 4], np.uint8), np.ones([7, 7]), r"uint8 \[10, 10, 4\]"),
    (np.zeros([10, 10, 3], np.uint8), np.ones([30, 7, 7]), "must be 2-D"),
    (np.zeros([10, 10, 3], np.uint8), np.full([7, 7], np.nan), "finite and non-negative"),
    (np.zeros([10, 10, 3], np.uint8), -np.ones([7, 7]), "finite and non-negative"),
])
def test_overlay_errors(image, grid, message):
    with pytest.raises(ValueError, match=message):
        overlay(image, grid)


def test_strip_has_one_titled_tile_per_word_and_wraps():
    image = Image.new("RGB", (300, 150), (30, 30, 220))
    caption = "a picture that is mostly blue"
    attention = one_hot_rows([(k % 7, k % 7) for k in range(7)])  # 6 words + <end>
    strip = attention_strip(image, caption, attention, tile_side=100, columns=4)
    tile_w, tile_h = 100, 50  # the thumbnail keeps the 2:1 aspect
    assert strip.size == (4 * (tile_w + GAP) - GAP, 2 * (TITLE_HEIGHT + tile_h + GAP) - GAP)
    pixels = np.asarray(strip)
    tiles = [(k % 4 * (tile_w + GAP), k // 4 * (TITLE_HEIGHT + tile_h + GAP)) for k in range(8)]
    for k, (left, top) in enumerate(tiles):
        title = pixels[top:top + TITLE_HEIGHT, left:left + tile_w]
        body = pixels[top + TITLE_HEIGHT:top + TITLE_HEIGHT + tile_h, left:left + tile_w]
        if k < 7:  # a word above a heatmap whose brightest spot is the word's cell
            assert (title.sum(-1) < 200).sum() > 10, f"tile {k} has no title text"
            ys, xs = np.unravel_index(body.astype(int).sum(-1).argmax(), body.shape[:2])
            assert int(ys / tile_h * 7) == k % 7 and int(xs / tile_w * 7) == k % 7
        else:  # the 8th place of the second row stays empty
            assert np.all(body == 255) and np.all(title == 255)


def test_strip_long_words_and_single_row():
    strip = attention_strip(Image.new("RGB", (64, 64)), "supercalifragilisticexpialidocious dog",
                            one_hot_rows([(0, 0), (1, 1)]), tile_side=64)
    assert strip.size == (2 * 64 + GAP, TITLE_HEIGHT + 64)


@pytest.mark.parametrize("caption, attention, kwargs, message", [
    ("", np.zeros([30, 7, 7]), {}, "no words"),
    ("a red image", np.zeros([2, 7, 7]), {}, "only 2 rows"),
    ("a red image", np.zeros([30, 7, 7]), {"columns": 0}, "columns and font_size at least 1"),
    ("a red image", np.zeros([30, 7, 7]), {"tile_side": 4}, "tile_side must be at least 8"),
])
def test_strip_errors(caption, attention, kwargs, message):
    with pytest.raises(ValueError, match=message):
        attention_strip(Image.new("RGB", (64, 64)), caption, attention, **kwargs)


def test_no_tensorflow_imported():
    # The Gradio page uses this module and must not pay for (or need) TensorFlow.
    code = "import sys, model.attention_maps; print('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
