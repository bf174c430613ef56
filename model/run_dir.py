"""What a training run leaves in its folder, and how later stages (evaluation, export) read it.

    runs/<name>/
      settings.json       every setting of the run (data, encoder, model, training, decoding)
      vocab.txt, vocab.json
      best.weights.h5     ModelCheckpoint: best epoch by validation loss (a self-critical run:
                          by validation CIDEr-D; it starts as the weights of the run it began from)
      backup/             BackupAndRestore: lets a killed run resume (removed when it finishes)
      history.csv         CSVLogger, appended across resumes
      loss_curve.png      train vs validation loss (reward_curve.png: a self-critical run's
                          training reward and validation CIDEr-D)
      tensorboard/
      evaluation/         report.json, captions_<method>.json (COCO results), samples.png
      summary.json        settings, epochs, best epoch, losses, optimizer steps, BLEU
      workers/worker-<i>/ multi-worker runs only: worker i's own copies (weights, history, backup);
                          the chief (worker 0) alone writes everything above
"""
import dataclasses
import hashlib
import json
from pathlib import Path

from data.files import atomic_write
from data.vocabulary import Vocabulary
from model.families import build_captioner
from model.settings import DecodeConfig, EncoderConfig, ModelConfig


@dataclasses.dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def settings(self): return self.root / "settings.json"
    @property
    def weights(self): return self.root / "best.weights.h5"
    @property
    def backup(self): return self.root / "backup"
    @property
    def history(self): return self.root / "history.csv"
    @property
    def loss_curve(self): return self.root / "loss_curve.png"
    @property
    def reward_curve(self): return self.root / "reward_curve.png"
    @property
    def tensorboard(self): return self.root / "tensorboard"
    @property
    def evaluation(self): return self.root / "evaluation"
    @property
    def summary(self): return self.root / "summary.json"
    @property
    def vocab_file(self): return self.root / "vocab.txt"


def write_json(path, payload) -> None:
    """JSON of a run's settings or summary, written atomically: a reader never sees half a file."""
    atomic_write(path, json.dumps(payload, indent=2, default=str))


def weights_digest(weights_file) -> str:
    """The first 16 hex digits of the file's SHA-256: names the exact weights a SavedModel was
    exported from (export_settings.json "weights_digest"), so an export of them can be reused."""
    digest = hashlib.sha256()
    with open(weights_file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


@dataclasses.dataclass
class TrainedRun:
    paths: RunPaths
    settings: dict
    model_config: ModelConfig
    encoder_config: EncoderConfig
    decode_config: DecodeConfig
    vocabulary: Vocabulary

    def load_captioner(self):
        captioner = build_captioner(self.model_config)
        captioner.load_weights(self.paths.weights)
        return captioner


def load_run(run_dir) -> TrainedRun:
    """Reads a finished (or at least once-checkpointed) run; clear errors for what is missing."""
    paths = RunPaths(Path(run_dir))
    if not paths.root.is_dir():
        raise FileNotFoundError(f"run folder {paths.root} does not exist; train first "
                                f"(python -m model.train --run-dir {paths.root})")
    for needed in (paths.settings, paths.weights, paths.vocab_file):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} is missing: {paths.root} is not a trained run "
                                    "(expected settings.json, vocab.txt and best.weights.h5)")
    settings = json.loads(paths.settings.read_text())
    return TrainedRun(paths, settings, saved_config(paths, settings, "model", ModelConfig),
                      saved_config(paths, settings, "encoder", EncoderConfig),
                      saved_config(paths, settings, "decode", DecodeConfig),
                      Vocabulary.load(paths.root))


def saved_config(paths: RunPaths, settings: dict, section: str, cls):
    """settings[section] as a `cls`; a clear error for fields `cls` does not have."""
    saved = settings.get(section, {})
    expected = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(saved) - expected)
    if unknown:
        raise ValueError(f"{paths.settings}: {section} settings {unknown} are not fields of "
                         f"{cls.__name__} (expected among {sorted(expected)}); train the run "
                         "again with this version")
    return cls(**saved)
