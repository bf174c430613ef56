"""model/history.py: the one reader of history.csv, on files as CSVLogger writes them (including a
resumed run's appended rows and a run killed before its first epoch ended)."""
import math

import pytest

from model.history import best_logged, history_summary, read_history


def write(path, text):
    path.write_text(text)
    return path


def test_read_history_counts_epochs_from_one(tmp_path):
    history = read_history(write(tmp_path / "h.csv", "epoch,loss,val_loss\n0,3.0,2.5\n1,2.0,NA\n"))
    assert history["epoch"].tolist() == [1, 2]
    assert history["loss"].tolist() == [3.0, 2.0]
    assert history["val_loss"][0] == 2.5 and math.isnan(history["val_loss"][1])


def test_summary_of_a_resumed_run(tmp_path):
    csv = write(tmp_path / "h.csv", "epoch,loss,val_loss\n0,3.0,2.5\n1,2.0,1.5\n1,2.1,1.6\n2,1.9,1.7\n")
    assert history_summary(csv) == {"epochs": 4, "final_loss": 1.9, "best_epoch": 2,
                                    "best_val_loss": 1.5, "final_val_loss": 1.7}
    assert best_logged(csv) == 1.5


def test_best_value_before_the_first_epoch(tmp_path):
    assert best_logged(tmp_path / "missing.csv") is None
    assert best_logged(write(tmp_path / "h.csv", "epoch,loss,val_loss\n")) is None
    assert best_logged(write(tmp_path / "t.csv", "epoch,loss\n0,3.0\n")) is None


def test_self_critical_history_is_best_at_its_highest_cider(tmp_path):
    csv = write(tmp_path / "h.csv", "epoch,loss,reward,val_cider_d,epoch_seconds\n"
                "0,-0.01,2.1,2.30,40\n1,-0.02,2.4,2.55,30\n2,0.01,2.5,2.50,31\n")
    assert history_summary(csv, "val_cider_d", "max") == {
        "epochs": 3, "final_loss": 0.01, "best_epoch": 2, "best_val_cider_d": 2.55,
        "final_val_cider_d": 2.50, "median_epoch_seconds": 31.0}
    assert best_logged(csv, "val_cider_d", "max") == 2.55
    assert read_history(csv)["reward"].tolist() == [2.1, 2.4, 2.5]
    with pytest.raises(ValueError, match="mode must be 'min' or 'max', got 'best'"):
        best_logged(csv, "val_cider_d", "best")


def test_not_a_history_file(tmp_path):
    with pytest.raises(ValueError, match="no 'loss' column"):
        read_history(write(tmp_path / "h.csv", "a,b\n1,2\n"))
