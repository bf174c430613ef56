"""`python -m data.inspect` as a user runs it: text, --json, errors, and the built-in default."""
import json
import os
import subprocess
import sys

import pytest

from data import inspect as inspect_cli
from data.builtin import generate_builtin
from data.splits import split_sizes
from tests.helpers import REPO



def run(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "data.inspect", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """Built-in layout plus two bad lines in captions.txt, read as the Kaggle layout."""
    root = tmp_path_factory.mktemp("inspect") / "kaggle"
    generate_builtin(root, num_images=40, seed=0)
    (root / "dataset_flickr30k.json").unlink()
    with open(root / "captions.txt", "a", encoding="utf-8") as f:
        f.write("nowhere.jpg,A red circle.\nscene_00001.jpg\n")
    return root


@pytest.mark.slow
def test_text_report(dataset_dir, tmp_path):
    result = run(dataset_dir, "--min-count", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "layout:     kaggle_captions_txt" in out
    assert "images:     40" in out and "captions:   200 (5-5 per image" in out
    assert "skipped 2 lines: 1 missing image, 1 wrong number of fields" in out
    assert "captions.txt:202" in out and "captions.txt:203" in out
    assert "(sha1 split)" in out and "vocabulary:" in out and "min count 3" in out


def test_json_report(dataset_dir, capsys):
    # In this process: test_text_report (slow) runs the command in its own interpreter.
    assert inspect_cli.main([str(dataset_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "kaggle_captions_txt"
    assert (report["images"], report["captions"]) == (40, 200)
    assert report["skipped"]["counts"] == {"missing image": 1, "wrong number of fields": 1}
    assert report["skipped"]["total"] == 2
    sizes = {k: v["images"] for k, v in report["splits"].items()}
    assert tuple(sizes.values()) == split_sizes(40) and list(sizes) == ["train", "val", "test"]
    assert report["split_mode"] == "sha1"
    vocabulary = report["vocabulary"]
    assert vocabulary["min_count"] == 5 and vocabulary["size"] > 4
    assert 0.5 < vocabulary["coverage"] <= 1.0


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    # main() is what `python -m data.inspect` exits with; errors return 2 instead of raising.
    assert inspect_cli.main([str(tmp_path / "missing")]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: dataset folder {tmp_path / 'missing'} does not exist\n"
    assert captured.out == ""
    (tmp_path / "empty").mkdir()
    assert inspect_cli.main([str(tmp_path / "empty")]) == 2
    error = capsys.readouterr().err
    assert "no caption file found in" in error and "captions.txt" in error
    (tmp_path / "Images").mkdir()
    (tmp_path / "captions.txt").write_text("image,caption\na.jpg,A dog\n")
    assert inspect_cli.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: no images found")


@pytest.mark.slow
def test_builtin_default(tmp_path, monkeypatch, capsys):
    # No DIR: the built-in dataset, generated under ./datasets/builtin on first use.
    monkeypatch.chdir(tmp_path)
    assert inspect_cli.main(["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "karpathy_json" and report["images"] == 1500
    assert report["split_mode"] == "karpathy"
    assert {k: v["images"] for k, v in report["splits"].items()} == {
        "train": 1200, "val": 150, "test": 150}
    assert (tmp_path / "datasets" / "builtin" / "builtin.json").is_file()
