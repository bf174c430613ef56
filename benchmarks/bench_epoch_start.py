"""What an epoch costs when keras fit reads a finite dataset (a new iterator every epoch, as Keras
makes it) against one endless stream with steps_per_epoch (what model/train.py gives it):

    python -m benchmarks.bench_epoch_start            # 1,200 images, 4 epochs, 2 rounds
    python -m benchmarks.bench_epoch_start --quick    # 300 images, 3 epochs, 1 round

The attention preset's model with random weights (the conv head over conv4 maps) on random conv4
maps (float16, as cached) with 5 random captions an image: image-major batches bucketed by length
(data.pipeline.image_major_dataset), validation on 150 more images every epoch as train() runs
it. Per way: seconds of each epoch after the first (the first traces) and of its first step;
the ways alternate round by round, each with a new model from the same seed.
"""
import dataclasses
import time

if __name__ == "__main__":  # a command: TensorFlow's start-up noise is hidden before anything loads it
    from data.quiet import quiet_command
    quiet_command()

import keras
import numpy as np

from benchmarks._synthetic import synthetic_captions
from benchmarks._timing import machine, median, parse, report, rounded
from data.pipeline import PipelineConfig, image_major_dataset
from model.base import MaskedCaptionLoss
from model.encoder import CONV4_SHAPE
from model.families import build_captioner
from model.settings import PRESETS, RANDOM_WEIGHTS, ModelConfig


@dataclasses.dataclass
class EpochStartBenchConfig:
    images: int = 1_200          # the built-in data's training split
    val_images: int = 150
    epochs: int = 4              # per fit; the first is left out (tracing)
    rounds: int = 2
    vocab_size: int = 60         # about the built-in data's
    batch_size: int = 128
    seed: int = 0


QUICK = {"images": 300, "epochs": 3, "rounds": 1}
WAYS = ("finite", "endless")


def synthetic(images: int, config: EpochStartBenchConfig, seed: int):
    """(float16 conv4 maps [images, 14, 14, 1024], feature row of each caption, token lists):
    the captions of benchmarks._synthetic, at about the built-in data's length."""
    _, rows, tokens = synthetic_captions(images, 5, config.vocab_size, mean_words=12.0, seed=seed)
    rng = np.random.default_rng(seed)
    maps = rng.standard_normal([images, *CONV4_SHAPE], dtype=np.float32).astype(np.float16)
    return maps, rows, tokens


class StepTimer(keras.callbacks.Callback):
    """Seconds of each epoch and of its first step."""

    def __init__(self):
        super().__init__()
        self.epochs, self.first_steps = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            self.first_steps.append(time.perf_counter() - self.start)

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(time.perf_counter() - self.start)


def fit_once(way: str, train, validation, config: EpochStartBenchConfig) -> StepTimer:
    keras.utils.set_random_seed(config.seed)
    model_config = ModelConfig(vocab_size=config.vocab_size,
                               **{**PRESETS["attention"]["model"],
                                  **RANDOM_WEIGHTS["attention"]["model"]})
    captioner = build_captioner(model_config)
    captioner.compile(optimizer=keras.optimizers.Adam(1e-3), loss=MaskedCaptionLoss())
    timer, steps = StepTimer(), int(train.cardinality())
    data, steps_per_epoch = (train, None) if way == "finite" else (train.repeat(), steps)
    captioner.fit(data, steps_per_epoch=steps_per_epoch, validation_data=validation,
                  epochs=config.epochs, shuffle=False, callbacks=[timer], verbose=0)
    return timer


def run_benchmark(config: EpochStartBenchConfig) -> dict:
    started = machine()
    pipeline = PipelineConfig(batch_size=config.batch_size, seed=config.seed)
    train = image_major_dataset(*synthetic(config.images, config, config.seed), pipeline)
    validation = image_major_dataset(*synthetic(config.val_images, config, config.seed + 1),
                                     pipeline, shuffle=False)
    epochs = {way: [] for way in WAYS}
    first_steps = {way: [] for way in WAYS}
    for round_index in range(config.rounds):
        for way in WAYS if round_index % 2 == 0 else WAYS[::-1]:
            timer = fit_once(way, train, validation, config)
            epochs[way] += timer.epochs[1:]
            first_steps[way] += timer.first_steps[1:]
    result = {"benchmark": "epoch start: finite dataset vs one endless stream",
              "machine": started, "config": dataclasses.asdict(config),
              "batches_per_epoch": int(train.cardinality())}
    for way in WAYS:
        result[way] = {"epoch_seconds": rounded(epochs[way], 2),
                       "median_epoch_seconds": round(median(epochs[way]), 2),
                       "first_step_seconds": rounded(first_steps[way], 2),
                       "median_first_step_seconds": round(median(first_steps[way]), 2)}
    result["finite_vs_endless_epoch_ratio"] = round(
        result["finite"]["median_epoch_seconds"] / result["endless"]["median_epoch_seconds"], 3)
    result["first_step_seconds_saved"] = round(
        result["finite"]["median_first_step_seconds"]
        - result["endless"]["median_first_step_seconds"], 2)
    return result


def main(argv=None):
    config, _ = parse(__doc__, EpochStartBenchConfig, QUICK, argv)
    report("bench_epoch_start", run_benchmark(config))


if __name__ == "__main__":
    main()
