"""Training: presets and overrides give every setting, the command line's flags come from the
settings dataclasses; it learns the built-in data, resumes after a kill, runs under
MirroredStrategy, and its command line refuses bad input clearly."""
import csv
import hashlib
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from data.flags import settings_fields
from model.families import FAMILY_CLASSES
from model.run_dir import load_run, weights_digest
from model.scst import ValidationCider
from model.settings import (FAMILIES, OVERRIDES, PRESETS, SCST_RECIPE, SECTIONS, DecodeConfig,
                            EncoderConfig, ModelConfig, ScstConfig, TrainConfig)
from model.train import parse_args, run_config, train
from data.feature_cache import load_features
from data.sources import open_dataset
from data.splits import split_dataset
from tests.helpers import REPO


def run_cli(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "model.train", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout, env=env)


# --- presets, overrides and flags -----------------------------------------------------------

def test_presets_name_a_family_and_only_settings():
    assert set(FAMILY_CLASSES) == set(FAMILIES)
    for name, sections in PRESETS.items():
        assert sections["model"]["family"] in FAMILIES, name
        for section, fields in sections.items():
            known = {field.name for field in settings_fields(SECTIONS[section][0])}
            assert set(fields) <= known, (name, section, set(fields) - known)
        assert run_config(name).train.preset == name


def test_overrides_go_to_their_dataclass_over_the_preset():
    config = run_config("attention", epochs=3, seed=7, dropout=0.1, max_new_tokens=12,
                        encoder_weights="random", encoder_seed=4)
    assert (config.train.epochs, config.train.seed, config.train.preset) == (3, 7, "attention")
    assert config.train.learning_rate == PRESETS["attention"]["train"]["learning_rate"]
    assert config.model["dropout"] == 0.1 and config.model["family"] == "attention"
    assert config.model["attention_units"] == 128  # random weights: over the conv head's map
    assert config.model["encoder_top"] == "head"
    imagenet = run_config("attention", data="/flickr30k")
    assert imagenet.model["attention_units"] == 512 and imagenet.model["encoder_top"] == ""
    assert config.decode == DecodeConfig(max_new_tokens=12)
    assert config.encoder == EncoderConfig(weights="random", seed=4)
    assert config.model_config(50) == ModelConfig(vocab_size=50, **config.model)
    assert config.by_name()["dropout"] == 0.1 and set(config.by_name()) == set(OVERRIDES)
    # A field the preset sets may be overridden, the family too.
    assert run_config("pooled", family="attention").model_config(9).attention
    assert run_config("seed", clipnorm=2.0).train.clipnorm == 2.0
    # The encoder's default follows the data: no ImageNet weights for the built-in data.
    assert run_config().encoder.weights == "random"
    assert run_config(data="datasets/flickr30k").encoder.weights == "imagenet"


def test_every_setting_has_one_override_name():
    fields = sum(len(settings_fields(cls)) for cls, _ in SECTIONS.values())
    assert len(OVERRIDES) == fields  # no two settings share a name
    assert {"seed", "encoder_seed", "encoder_weights", "family", "max_new_tokens"} <= set(OVERRIDES)
    assert not {"vocab_size", "feature_dim", "feature_grid"} & set(OVERRIDES)  # the data's


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['epoch'\]; expected any of "
                                         r"\[.*'epochs'.*\]"):
        run_config(epoch=3)
    with pytest.raises(ValueError, match="unknown preset 'fast'; expected one of"):
        run_config("fast")
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        run_config(epochs=0)
    with pytest.raises(ValueError, match=r"TrainConfig.lr_schedule must be one of "
                                         r"\['constant', 'cosine'\], got 'linear'"):
        run_config(lr_schedule="linear")
    # mixed_precision names a policy; the bool of old settings files is refused.
    with pytest.raises(ValueError, match="TrainConfig.mixed_precision must be one of"):
        TrainConfig(mixed_precision=True)


RUN_ARGUMENTS = {"run_dir": "runs/builtin", "data": None, "cache_dir": None, "evaluate": True}


def test_flags_given_and_only_those_become_overrides():
    assert parse_args([]) == RUN_ARGUMENTS
    args = parse_args([
        "--data", "d", "--run-dir", "r", "--cache-dir", "c", "--preset", "seed", "--epochs", "3",
        "--batch-size", "16", "--learning-rate", "0.01", "--lr-schedule", "cosine",
        "--clipnorm", "1.5", "--label-smoothing", "0.2", "--dropout", "0.1",
        "--no-image-init-cell", "--attention-regularizer", "1", "--min-count", "2",
        "--patience", "3", "--seed", "5", "--encoder-weights", "random", "--mixed-precision",
        "--xla", "--distribute", "none", "--deterministic", "--worker-timeout", "60",
        "--max-caption-tokens", "20", "--max-new-tokens", "12", "--no-eval",
        "--init-from", "runs/x", "--scst", "--scst-samples", "4"])
    assert args == {
        "data": "d", "run_dir": "r", "cache_dir": "c", "evaluate": False, "preset": "seed",
        "epochs": 3, "batch_size": 16, "learning_rate": 0.01, "lr_schedule": "cosine",
        "clipnorm": 1.5, "label_smoothing": 0.2, "dropout": 0.1, "image_init_cell": False,
        "attention_regularizer": 1.0, "min_count": 2, "patience": 3, "seed": 5,
        "encoder_weights": "random", "mixed_precision": "float16", "jit_compile": True,
        "distribute": "none", "deterministic": True, "worker_timeout_seconds": 60.0,
        "max_caption_tokens": 20, "max_new_tokens": 12, "init_from": "runs/x", "scst": True,
        "scst_samples": 4}
    overrides = {k: v for k, v in args.items()
                 if k not in RUN_ARGUMENTS and k not in ("preset", "init_from", "scst")}
    config = run_config(args["preset"], data=args["data"], **overrides)
    assert config.train.jit_compile and config.train.mixed_precision == "float16"
    assert config.model["image_init_cell"] is False and config.decode.max_new_tokens == 12
    assert parse_args(["--mixed-precision", "bfloat16"])["mixed_precision"] == "bfloat16"
    assert parse_args(["--clipnorm", "none"])["clipnorm"] is None
    assert parse_args(["--image-init-cell"])["image_init_cell"] is True
    assert parse_args(["--family", "attention"])["family"] == "attention"
    # A later stage's own folder, beside the run it starts from: never runs/builtin.
    assert parse_args(["--init-from", "runs/x/", "--scst"])["run_dir"] == "runs/x-self-critical"
    assert parse_args(["--init-from", "runs/x"])["run_dir"] == "runs/x-cross-entropy"


# --- a later stage: --init-from RUN [--scst] ---------------------------------------------------

def test_a_later_stage_starts_from_the_runs_settings(untrained_run):
    saved = json.loads((untrained_run / "settings.json").read_text())
    config = run_config(init_from=str(untrained_run), scst=True, epochs=2, scst_samples=3)
    assert config.train.scst and config.train.init_from == str(untrained_run)
    assert config.train.stage == "self-critical"
    assert (config.train.preset, config.train.min_count) == ("pooled", 2)  # the run's
    assert config.train.epochs == 2 and config.scst == ScstConfig(samples=3)  # the overrides
    assert config.train.learning_rate == SCST_RECIPE["learning_rate"] == 5e-5  # the stage's
    assert config.train.batch_size == SCST_RECIPE["batch_size"]
    assert config.model == {name: saved["model"][name] for name in config.model}
    assert config.encoder == EncoderConfig(**saved["encoder"])
    # Cross-entropy from a run: the run's own recipe.
    again = run_config(init_from=str(untrained_run))
    assert not again.train.scst and again.train.stage == "cross-entropy"
    assert again.train.learning_rate == saved["train"]["learning_rate"]


def test_a_later_stage_refuses_to_change_what_it_keeps(untrained_run, small_builtin, tmp_path):
    with pytest.raises(ValueError, match=r"units=256: a run started from .* keeps its units "
                                         r"\(512\)"):
        run_config(init_from=str(untrained_run), units=256)
    with pytest.raises(ValueError, match=r"preset='attention': .* keeps its preset \('pooled'\)"):
        run_config("attention", init_from=str(untrained_run))
    with pytest.raises(ValueError, match=r"trains on its data \(.*\); leave --data out"):
        run_config(init_from=str(untrained_run), data=str(tmp_path))
    assert run_config(init_from=str(untrained_run), data=str(small_builtin), units=512,
                      dropout=0.1).model["dropout"] == 0.1  # the same data and size: fine
    with pytest.raises(ValueError, match="scst: a self-critical stage starts from a trained run"):
        run_config(scst=True)
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        run_config(init_from=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="is the run it starts from"):
        train(untrained_run, init_from=str(untrained_run), scst=True, verbose=0)


def test_bad_flags_are_refused_by_argparse(capsys):
    for argv, expected in ((["--mixed-precision", "float8"], "--mixed-precision: invalid choice"),
                           (["--epochs", "many"], "--epochs: invalid int value: 'many'"),
                           (["--clipnorm", "big"], "--clipnorm: invalid float value: 'big'")):
        with pytest.raises(SystemExit) as exit_:
            parse_args(argv)
        assert exit_.value.code == 2 and expected in capsys.readouterr().err, argv


def test_help_lists_every_flag_and_preset(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--data", "--run-dir", "--cache-dir", "--preset", "--epochs", "--batch-size",
                 "--learning-rate", "--lr-schedule", "--clipnorm", "--label-smoothing",
                 "--dropout", "--image-init-cell, --no-image-init-cell", "--attention-regularizer",
                 "--min-count", "--patience", "--seed", "--encoder-weights",
                 "--mixed-precision [{float16,bfloat16}]", "--xla", "--distribute",
                 "--deterministic", "--worker-timeout", "--max-caption-tokens",
                 "--max-new-tokens", "--no-eval", "--family", "--init-from RUN_DIR",
                 "--scst, --no-scst", "--scst-samples"):
        assert flag in text, flag
    assert "(default: 0.002)" in text  # the attention preset's learning rate, not the dataclass's
    for name in PRESETS:
        assert f"\n  {name} " in text, name
    assert "--scst then sets:" in text and "learning_rate=5e-05" in text


@pytest.mark.slow
def test_model_learns_the_builtin_data(trained_run):
    """The trained model clearly beats captioning every image with the most frequent training
    caption: CIDEr-D at least twice the baseline's, greedy and beam (the model scores ~3x).
    CIDEr-D weighs the n-grams that tell one image's references from the others', which a model
    reading colour, shape and count gets and a constant caption cannot. BLEU-4 also rewards the
    phrases all built-in captions share, and on 30 test images it cannot carry a fixed margin:
    the "most frequent" caption is a tie between two of 1,200 nearly all distinct captions (the
    first scores BLEU-4 0.21, the other 0), and the model's BLEU-4 ranges over ~0.38-0.55 with
    the training seed; another CPU's floating-point rounding acts like another seed."""
    test = trained_run.summary["test"]
    baseline = test["majority_baseline"]
    for method in ("greedy", "beam"):
        assert test[method]["cider_d"] > 2 * baseline["cider_d"], (method, test[method], baseline)
        assert test[method]["bleu4"] > baseline["bleu4"], (method, test[method], baseline)
    assert test["images"] == 30


@pytest.mark.slow
def test_attention_model_learns_and_reads_the_images(trained_attention_run):
    """Not a caption-quality bar: on 240 training images the attention family over frozen maps
    overfits after a few epochs and scores near the majority baseline (the preset's quality is
    measured on the demo's 1,500 images by benchmarks/bench_quality.py). What must hold: it
    learns (validation loss well below its first epoch's) and its captions depend on the image."""
    with (trained_attention_run.run / "history.csv").open() as f:
        val_losses = [float(row["val_loss"]) for row in csv.DictReader(f)]
    assert min(val_losses) < 0.8 * val_losses[0], val_losses
    report = json.loads((trained_attention_run.run / "evaluation" / "report.json").read_text())
    captions = [sample["prediction"] for sample in report["samples"]]
    assert len(set(captions)) >= 3, captions  # not one caption for every image


def test_run_folder_has_everything(trained_run):
    run = trained_run.run
    for name in ("settings.json", "vocab.txt", "vocab.json", "best.weights.h5", "history.csv",
                 "loss_curve.png", "summary.json", "evaluation/report.json",
                 "evaluation/samples.png"):
        assert (run / name).is_file(), name
    assert not (run / "backup").exists()  # BackupAndRestore deletes it when the run finishes
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] >= 1 and summary["best_val_loss"] > 0
    assert summary["settings"]["train"]["preset"] == "pooled"
    assert summary["settings"]["model"]["family"] == "pooled"
    with (run / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["epochs"]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert summary["optimizer_steps"] == summary["epochs"] * summary["steps_per_epoch"]
    seconds = [float(row["epoch_seconds"]) for row in rows]  # EpochTimer, logged by CSVLogger
    assert all(s > 0 for s in seconds)
    assert summary["median_epoch_seconds"] == pytest.approx(float(np.median(seconds)))


@pytest.mark.slow
def test_attention_run_trains_on_spatial_features(trained_attention_run):
    run, summary = trained_attention_run.run, trained_attention_run.summary
    settings = summary["settings"]
    assert settings["train"]["preset"] == "attention" and settings["model"]["family"] == "attention"
    assert settings["model"]["feature_grid"] == 7 and settings["model"]["feature_dim"] == 2048
    assert settings["data"]["feature_cache"] == str(trained_attention_run.cache)
    assert (run / "evaluation" / "samples.png").is_file()
    with (run / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert summary["test"]["greedy"]["num_images"] > 0


def test_weights_digest_names_the_file_content(tmp_path):
    weights = tmp_path / "best.weights.h5"
    weights.write_bytes(b"weights" * 1000)
    assert weights_digest(weights) == hashlib.sha256(b"weights" * 1000).hexdigest()[:16]




def kill_after_two_epochs(args, history) -> int:
    """Starts `python -m model.train *args`, SIGKILLs it once two epochs are in `history`;
    returns how many epochs were logged by then."""
    process = subprocess.Popen([sys.executable, "-m", "model.train", *args], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if history.is_file() and len(history.read_text().strip().splitlines()) >= 3:
            break  # header + 2 finished epochs
        time.sleep(0.5)
    assert process.poll() is None, "training ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    return len(history.read_text().strip().splitlines()) - 1


def assert_resumed(history, epochs: int) -> None:
    """Resumed where it was: epochs are never repeated from 0 and end at the last."""
    with history.open() as f:
        logged = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert logged[-1] == epochs - 1 and logged[0] == 0
    assert sorted(set(logged)) == list(range(epochs))
    assert len(logged) <= epochs + 1  # at most the interrupted epoch logged twice


@pytest.mark.slow
def test_self_critical_stage_resumes_after_kill_and_writes_a_normal_run(trained_run, tmp_path):
    from export.artifact import export_settings
    from export.saved_model import export_run
    run = tmp_path / "scst"
    args = ["--init-from", str(trained_run.run), "--scst", "--run-dir", str(run),
            "--epochs", "3", "--patience", "3", "--batch-size", "60"]  # 4 steps an epoch
    history = run / "history.csv"
    assert 2 <= kill_after_two_epochs(args, history) < 3
    assert (run / "backup").exists()  # what the same command resumes from
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_resumed(history, 3)
    assert "self-critical  epochs: " in result.stdout

    summary = json.loads((run / "summary.json").read_text())
    settings = summary["settings"]
    assert settings["stage"] == {
        "name": "self-critical", "init_from": {
            "run": str(trained_run.run.resolve()), "stage": "cross-entropy",
            "weights_digest": weights_digest(trained_run.run / "best.weights.h5")}}
    assert settings["train"]["scst"] and settings["train"]["learning_rate"] == 5e-5
    assert settings["data"]["feature_cache"] == str(trained_run.cache)  # the run's features
    assert (run / "vocab.txt").read_text() == (trained_run.run / "vocab.txt").read_text()
    with history.open() as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {"epoch", "epoch_seconds", "loss", "reward", "val_cider_d"}
    assert len(rows) == summary["epochs"] == 3
    for name in ("reward_curve.png", "summary.json", "evaluation/report.json",
                 "evaluation/captions_greedy.json", "evaluation/captions_beam.json"):
        assert (run / name).is_file(), name
    assert not (run / "backup").exists()
    # The checkpoint holds the best validation CIDEr-D: an epoch's, or the starting weights'.
    epochs = [float(row["val_cider_d"]) for row in rows]
    assert summary["best_val_cider_d"] == max(epochs)
    best = max(summary["start_val_cider_d"], *epochs)
    finished = load_run(run)
    val = split_dataset(open_dataset(trained_run.data))["val"]
    names, matrix = load_features(trained_run.cache, [image.name for image in val])
    validation = ValidationCider(matrix, [list(image.captions) for image in val],
                                 finished.vocabulary.tokens, finished.decode_config)
    assert validation.score(finished.load_captioner()) == pytest.approx(best, abs=1e-6)
    assert summary["test"]["greedy"]["meteor"] > 0 and "attributes" in summary["test"]["beam"]
    # Exported as any run is.
    version = export_run(run, tmp_path / "models", "auto")
    assert export_settings(version)["weights_digest"] == weights_digest(run / "best.weights.h5")


MIRRORED = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from model.train import train
summary = train(sys.argv[1], "pooled", data=sys.argv[2], cache_dir=sys.argv[3], verbose=0, evaluate=False,
                encoder_weights="random", epochs=1, batch_size=64, min_count=2,
                distribute="mirrored")
print("REPLICAS", summary["replicas"], "LOSS", summary["final_loss"])
"""


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(small_builtin, feature_caches, tmp_path):
    result = subprocess.run([sys.executable, "-c", MIRRORED, str(tmp_path / "run"),
                             str(small_builtin), str(feature_caches("pooled"))], cwd=REPO, text=True,
                            capture_output=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("REPLICAS")][-1]
    replicas, loss = int(line.split()[1]), float(line.split()[3])
    assert replicas == 2 and 0 < loss < 10


MIXED = """
import keras, tensorflow as tf, numpy as np
keras.mixed_precision.set_global_policy("mixed_float16")
from model.base import MaskedCaptionLoss
from model.families import build_captioner
from model.settings import ModelConfig
from model.decoding import greedy_search
m = build_captioner(ModelConfig(vocab_size=20, normalize_features=True))
m.compile(optimizer=keras.optimizers.Adam(1e-3), loss=MaskedCaptionLoss(0.1))
x = {"features": np.random.rand(4, 2048).astype("float32"), "tokens": np.array([[1, 5, 6, 0]] * 4)}
y = np.array([[5, 6, 2, 0]] * 4)
print("LOSS", m.train_on_batch(x, y), m.lstm.cell.kernel.dtype, m.optimizer.__class__.__name__)
ids, lp = greedy_search(m.step, m.initial_state(tf.constant(x["features"])), 4, 5)
print("DECODED", ids.shape, lp.dtype)
"""


@pytest.mark.slow
def test_mixed_precision_trains_and_decodes():
    result = subprocess.run([sys.executable, "-c", MIXED], cwd=REPO, text=True,
                            capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LossScaleOptimizer" in result.stdout and "float32" in result.stdout
    assert "DECODED (4," in result.stdout


def test_cli_refuses_bad_flags_by_name(tmp_path, capsys):
    from model.train import main
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "nonsense"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert main(["--epochs", "0", "--run-dir", str(tmp_path / "r")]) == 2
    assert "epochs" in capsys.readouterr().err


@pytest.mark.slow  # its own interpreter: what a user sees from the command
def test_cli_missing_data_is_a_clear_error(tmp_path):
    result = run_cli("--data", str(tmp_path / "nowhere"), "--run-dir", str(tmp_path / "r"))
    assert result.returncode == 2
    assert "nowhere" in result.stderr and "Traceback" not in result.stderr
