"""model/plots.py draws what a run logged (each curve's values by epoch, the best epoch ringed,
read back from the figure it saves) into real, valid PNGs from real files, and survives bad images."""
import numpy as np
import pytest
from PIL import Image

from data.files import TEMP_SUFFIX
from model.plots import (IMAGE_HEIGHT, MAX_TILES, PLACEHOLDER_GREY, STRIP_HEIGHT, TITLE_HEIGHT,
                         loss_curve_png, reward_curve_png, sample_grid_png)

REFERENCES = ["A black dog is running through the grass.",
              "A dog runs across a grassy field.",
              "The black dog is running in the green grass, chasing a ball thrown by its owner "
              "who is standing near a wooden fence at the edge of a very large park.",
              "A dog with a red collar runs on the lawn.",
              "A black dog runs outside."]


def _open_png(path) -> Image.Image:
    """Opens the file as a PNG, checks it fully decodes and has a sensible size."""
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        assert 300 <= image.width <= 5000 and 200 <= image.height <= 5000, image.size
        assert not list(path.parent.glob(f".*{TEMP_SUFFIX}"))  # the atomic write left nothing behind
        return image.convert("RGB")


def _write_csv(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def drawn(monkeypatch):
    """The figures model/plots.py saves, kept as they are handed to the PNG writer: what the
    tests read the plotted lines, labels and title from (the PNG is still written)."""
    import model.plots
    figures, save = [], model.plots._save
    monkeypatch.setattr(model.plots, "_save",
                        lambda fig, out, dpi: (figures.append(fig), save(fig, out, dpi)))
    return figures


def _plotted(fig) -> dict:
    """{legend label: (x values, y values)} of the figure's one axes, with its title and labels."""
    [ax] = fig.axes
    lines = {line.get_label(): (np.asarray(line.get_xdata(), float).tolist(),
                                np.asarray(line.get_ydata(), float).tolist())
             for line in ax.get_lines()}
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    return {"title": ax.get_title(), "ylabel": ax.get_ylabel(), "xlabel": ax.get_xlabel(),
            "legend": legend, "lines": lines}


def test_loss_curve_from_csvlogger_file(tmp_path, drawn):
    history = _write_csv(tmp_path / "history.csv",
                         "epoch,loss,masked_accuracy,val_loss,val_masked_accuracy\n"
                         "0,3.9365,0.21,3.40,0.25\n1,3.1909,0.30,3.10,0.30\n2,2.9069,0.33,2.95,0.32\n"
                         "3,2.7046,0.35,2.93,0.33\n4,2.5412,0.37,2.97,0.33\n")
    loss_curve_png(history, tmp_path / "out" / "loss_curve.png")
    _open_png(tmp_path / "out" / "loss_curve.png")
    [fig] = drawn
    plot = _plotted(fig)
    assert (plot["title"], plot["xlabel"], plot["ylabel"]) == ("Training and validation loss",
                                                               "epoch", "loss")
    epochs = [1.0, 2.0, 3.0, 4.0, 5.0]  # counted from 1, as Keras prints them (the CSV's from 0)
    assert plot["lines"]["training loss"] == (epochs, [3.9365, 3.1909, 2.9069, 2.7046, 2.5412])
    assert plot["lines"]["validation loss"] == (epochs, [3.40, 3.10, 2.95, 2.93, 2.97])
    # The best epoch is the lowest validation loss (what the checkpoint keeps), not the last one.
    best = "best epoch 4 (val_loss 2.9300)"
    assert plot["lines"][best] == ([4.0], [2.93]) and best in plot["legend"]
    assert ([4.0, 4.0], [0.0, 1.0]) in plot["lines"].values()  # the dashed line at that epoch


def test_loss_curve_with_one_epoch(tmp_path, drawn):
    history = _write_csv(tmp_path / "history.csv", "epoch,loss,val_loss\n0,3.9,3.5\n")
    loss_curve_png(history, tmp_path / "loss_curve.png")
    _open_png(tmp_path / "loss_curve.png")
    plot = _plotted(drawn[0])
    assert plot["lines"]["training loss"] == ([1.0], [3.9])
    assert plot["lines"]["best epoch 1 (val_loss 3.5000)"] == ([1.0], [3.5])
    assert drawn[0].axes[0].get_xlim() == (0.5, 1.5)  # room around the one point


def test_loss_curve_without_validation_values(tmp_path, drawn):
    # No val_loss column at all, and a val_loss column where an epoch skipped validation ("NA").
    no_val = _write_csv(tmp_path / "no_val.csv", "epoch,loss\n0,3.9\n1,3.2\n")
    loss_curve_png(no_val, tmp_path / "no_val.png")
    _open_png(tmp_path / "no_val.png")
    plot = _plotted(drawn[0])
    assert plot["title"] == "Training loss (no validation logged)"
    assert plot["lines"]["training loss"] == ([1.0, 2.0], [3.9, 3.2])
    assert "validation loss" not in plot["lines"]
    assert plot["lines"]["best epoch 2 (loss 3.2000)"] == ([2.0], [3.2])  # by the training loss
    some_val = _write_csv(tmp_path / "some_val.csv", "epoch,loss,val_loss\n0,3.9,NA\n1,3.2,3.3\n")
    loss_curve_png(some_val, tmp_path / "some_val.png")
    _open_png(tmp_path / "some_val.png")
    plot = _plotted(drawn[1])
    assert plot["title"] == "Training and validation loss"
    xs, ys = plot["lines"]["validation loss"]
    assert xs == [1.0, 2.0] and np.isnan(ys[0]) and ys[1] == 3.3  # a gap where none was logged
    assert "best epoch 2 (val_loss 3.3000)" in plot["lines"]


def test_reward_curve_of_a_self_critical_run(tmp_path, drawn):
    history = _write_csv(tmp_path / "history.csv", "epoch,epoch_seconds,loss,reward,val_cider_d\n"
                         "0,60.1,-0.38,1.80,2.45\n1,55.0,-0.35,1.95,2.51\n2,54.2,-0.30,2.02,2.49\n")
    reward_curve_png(history, tmp_path / "reward_curve.png")
    _open_png(tmp_path / "reward_curve.png")
    plot = _plotted(drawn[0])
    assert (plot["title"], plot["ylabel"]) == ("Self-critical training", "CIDEr-D")
    assert plot["lines"]["training reward (sampled captions)"] == ([1.0, 2.0, 3.0], [1.80, 1.95, 2.02])
    assert plot["lines"]["validation CIDEr-D (greedy)"] == ([1.0, 2.0, 3.0], [2.45, 2.51, 2.49])
    assert plot["lines"]["best epoch 2 (val_cider_d 2.5100)"] == ([2.0], [2.51])  # the highest
    cross_entropy = _write_csv(tmp_path / "ce.csv", "epoch,loss,val_loss\n0,3.9,3.5\n")
    with pytest.raises(ValueError, match="no 'reward' column: not a self-critical run"):
        reward_curve_png(cross_entropy, tmp_path / "ce.png")


def test_loss_curve_errors_are_clear(tmp_path):
    wrong = _write_csv(tmp_path / "wrong.csv", "epoch,accuracy\n0,0.5\n")
    with pytest.raises(ValueError, match=r"wrong.csv has no 'loss' column \(columns: \['epoch', 'accuracy'\]\)"):
        loss_curve_png(wrong, tmp_path / "wrong.png")
    header_only = _write_csv(tmp_path / "header.csv", "epoch,loss,val_loss\n")
    with pytest.raises(ValueError, match="no epochs yet"):
        loss_curve_png(header_only, tmp_path / "header.png")
    diverged = _write_csv(tmp_path / "nan.csv", "epoch,loss,val_loss\n0,nan,nan\n")
    with pytest.raises(ValueError, match="no numeric 'loss' value"):
        loss_curve_png(diverged, tmp_path / "nan.png")
    assert not (tmp_path / "wrong.png").exists()


@pytest.fixture
def image_files(tmp_path):
    rng = np.random.default_rng(0)
    jpeg, png = tmp_path / "photo.jpg", tmp_path / "tall.png"
    Image.fromarray(rng.integers(0, 255, (300, 500, 3), dtype=np.uint8)).save(jpeg)
    Image.fromarray(rng.integers(0, 255, (400, 200), dtype=np.uint8)).save(png)  # greyscale
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(jpeg.read_bytes()[:200])  # a JPEG header and nothing else
    return {"jpeg": jpeg, "png": png, "corrupt": corrupt, "missing": tmp_path / "missing.jpg"}


def _sample(path, prediction="a black dog is running through the grass", **extra):
    return {"image_path": str(path) if path else None, "references": REFERENCES,
            "prediction": prediction, **extra}


def test_sample_grid(image_files, tmp_path):
    samples = [_sample(image_files["jpeg"], beam="a black dog runs through the green grass"),
               _sample(image_files["png"], prediction="a dog " * 40),  # very long: wrapped and cut
               _sample(image_files["corrupt"]),
               _sample(image_files["missing"]),
               _sample(None, references=[])]
    out = tmp_path / "grid.png"
    sample_grid_png(samples, out)
    grid = np.asarray(_open_png(out))
    assert grid.shape[1] > grid.shape[0] / 2  # 3 columns, 2 rows: not a thin strip


def test_corrupt_image_becomes_a_placeholder(image_files, tmp_path):
    sample_grid_png([_sample(image_files["corrupt"])], tmp_path / "corrupt.png")
    sample_grid_png([_sample(image_files["jpeg"])], tmp_path / "fine.png")
    grey = [np.all(np.asarray(_open_png(tmp_path / name)) == PLACEHOLDER_GREY, axis=-1).sum()
            for name in ("corrupt.png", "fine.png")]
    assert grey[0] > 50_000 and grey[1] < 1_000  # a big grey tile only where the image was bad


def test_sample_grid_caps_the_number_of_tiles(image_files, tmp_path):
    samples = [_sample(image_files["jpeg"]) for _ in range(MAX_TILES + 8)]
    sample_grid_png(samples[:MAX_TILES], tmp_path / "cap.png")
    sample_grid_png(samples, tmp_path / "over.png")
    assert _open_png(tmp_path / "over.png").size == _open_png(tmp_path / "cap.png").size


def test_sample_grid_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="at least one sample"):
        sample_grid_png([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="columns must be at least 1"):
        sample_grid_png([_sample(None)], tmp_path / "x.png", columns=0)
    with pytest.raises(ValueError, match=r"samples\[0\] must be a dict with at least 'prediction'"):
        sample_grid_png([{"image_path": "a.jpg"}], tmp_path / "x.png")


def _peaked(cell, words=8) -> np.ndarray:  # _sample's prediction has 8 words
    """attention [30, 7, 7] with every word's row (and <end>'s) on one cell."""
    attention = np.zeros([30, 7, 7], np.float32)
    attention[:words + 1, cell[0], cell[1]] = 1.0
    return attention


def test_sample_grid_shows_attention_strips_under_the_image(image_files, tmp_path):
    def grid(cell, name):
        samples = [_sample(image_files["jpeg"], attention=_peaked(cell)), _sample(image_files["png"])]
        sample_grid_png(samples, tmp_path / name)
        return np.asarray(_open_png(tmp_path / name), np.float32).sum(axis=-1)
    top_left, bottom_right = grid((0, 0), "tl.png"), grid((6, 6), "br.png")
    sample_grid_png([_sample(image_files["jpeg"]), _sample(image_files["png"])], tmp_path / "pooled.png")
    pooled = np.asarray(_open_png(tmp_path / "pooled.png"))
    assert top_left.shape[0] == pooled.shape[0] + STRIP_HEIGHT * 100  # the strip's room, at 100 dpi
    # The maps differ only in the strip band under the first image, where the map's peak moved.
    rows, columns = np.nonzero(np.abs(top_left - bottom_right) > 30)
    strip_top = (TITLE_HEIGHT + IMAGE_HEIGHT) * 100
    assert len(rows) > 100 and rows.min() >= strip_top - 2 and rows.max() <= strip_top + STRIP_HEIGHT * 100
    assert columns.max() < pooled.shape[1] / 2  # first tile only; the second sample has no strip
    # Each word's heatmap is bright where its map peaks: top-left of every tile vs bottom-right.
    hot_tl, hot_br = np.nonzero(top_left - bottom_right > 30), np.nonzero(bottom_right - top_left > 30)
    assert hot_tl[0].mean() < hot_br[0].mean() and hot_tl[1].mean() < hot_br[1].mean()


def test_sample_grid_without_attention_is_unchanged(image_files, tmp_path):
    samples = [_sample(image_files["jpeg"]), _sample(image_files["png"], beam="a dog")]
    sample_grid_png(samples, tmp_path / "plain.png")
    sample_grid_png([dict(s, attention=None) for s in samples], tmp_path / "none.png")
    np.testing.assert_array_equal(np.asarray(_open_png(tmp_path / "plain.png")),
                                  np.asarray(_open_png(tmp_path / "none.png")))


def test_sample_grid_attention_for_missing_images_and_bad_maps(image_files, tmp_path):
    sample_grid_png([_sample(image_files["missing"], attention=_peaked((3, 3))),
                     _sample(image_files["jpeg"], prediction="", attention=np.zeros([30, 7, 7]))],
                    tmp_path / "missing.png")
    _open_png(tmp_path / "missing.png")
    with pytest.raises(ValueError, match=r"samples\[0\]\['attention'\] does not fit its prediction: "
                                         "caption has 8 words but attention has only 3 rows"):
        sample_grid_png([_sample(image_files["jpeg"], attention=np.zeros([3, 7, 7]))], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"samples\[0\]\['attention'\].*got shape \[30, 49\]"):
        sample_grid_png([_sample(image_files["jpeg"], attention=np.zeros([30, 49]))], tmp_path / "x.png")
