"""Training speed of the real Captioner + MaskedCaptionLoss (keras train_on_batch / fit,
jit_compile=False) at the original project's shapes, random 2048-d features and Flickr-like
caption lengths:

    python -m benchmarks.bench_train            # pad-to-80 vs bucketed captions/s, GFLOP/s (~7 min)
    python -m benchmarks.bench_train --jit      # + jit_compile=True vs False at one batch shape
    python -m benchmarks.bench_train --full-scale [--steps N]   # one Flickr30k-sized epoch
    python -m benchmarks.bench_train --quick    # a smoke run of the first line (~3 min)

Prints one JSON object and writes it to benchmarks/results/<name>.json (gitignored).

Modes, measured in the same process and interleaved repetition by repetition so that other
people's load on the 2 shared cores hits both alike:
  (a) pad_to=80: every caption padded to 80, the original's way (PipelineConfig(pad_to=80));
  (b) this project's pipeline: length-bucketed batches padded to their longest caption.
Batches come from the real training_dataset over 145,000 captions (Flickr30k's training size), so
the bucket mix is an epoch's. For (b) the timed batches are picked at evenly spaced quantiles of
the epoch's padded lengths, which makes a few batches stand for the whole epoch.
"""
import argparse
import dataclasses
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks._synthetic import synthetic_captions  # noqa: E402
from benchmarks._timing import machine, report, round_robin  # noqa: E402
from data.pipeline import PipelineConfig, training_dataset  # noqa: E402
from model.base import MaskedCaptionLoss, ModelConfig  # noqa: E402
from model.presets import build_captioner  # noqa: E402
from model.presets import PRESETS  # noqa: E402


@dataclasses.dataclass
class TrainBenchConfig:
    vocab_size: int = 20_013       # the original's vocabulary (all captions, no min count)
    images: int = 29_000           # Flickr30k Karpathy train split
    captions_per_image: int = 5
    batch_size: int = 128
    pad_to: int = 80               # the original's padding
    mean_words: float = 14.0       # benchmarks._synthetic.caption_words: lognormal, 5..38 words
    padded_batches: int = 2        # timed (a) batches per repetition (all the same shape)
    bucketed_batches: int = 8      # timed (b) batches per repetition (length quantiles)
    repeats: int = 3
    seed: int = 0


# A smoke run: a tenth of the captions, one repetition of one padded and two bucketed batches.
QUICK = {"images": 2_900, "repeats": 1, "padded_batches": 1, "bucketed_batches": 2}


def batch_shapes(rows, tokens, pipeline: PipelineConfig, images: int):
    """[(captions, T)] of every batch of one epoch, in the order a *fresh* training_dataset with
    this config yields them (seeded shuffle: a twin dataset's first epoch is the same). Runs on a
    1-column feature matrix, so it costs neither time nor memory."""
    twin = training_dataset(np.zeros((images, 1), np.float32), rows, tokens, pipeline)
    return [tuple(int(d) for d in targets.shape) for _, targets in twin]


def flops_per_batch(model: ModelConfig, captions: int, steps: int) -> float:
    """Forward + backward FLOPs of one training batch of `captions` rows padded to `steps`:

      per token  (every real or padded position is computed):
        LSTM     2 * (E + U) * 4U      input and recurrent matmuls of the four gates
        logits   2 * U * V             output projection
      per caption:
        h0       2 * F * U             Dense(features -> units)
      x 3 for forward + backward (the backward pass costs two matmuls per forward matmul).
    Elementwise work (gates, softmax, loss, Adam) is left out: it is < 1% here."""
    e, u, v, f = model.embed_dim, model.units, model.vocab_size, model.feature_dim
    per_token = 2 * (e + u) * 4 * u + 2 * u * v
    return 3.0 * (captions * steps * per_token + captions * 2 * f * u)


MATMUL_FLOPS = 2 * 128 * 16 * 512 * 20_013


def matmul_task():
    """A plain float32 matmul [128*16, 512] x [512, 20013] (the logits matmul of a T=16 batch),
    traced: timed next to the training steps, it says what this machine gives right now."""
    a = tf.random.normal([128 * 16, 512])
    b = tf.random.normal([512, 20_013])
    run = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    run()
    return lambda: run().numpy()


def seed_model(vocab_size: int, jit_compile=False):
    model_config = ModelConfig(vocab_size=vocab_size, **PRESETS["seed"]["model"])
    model = build_captioner(model_config)
    model.compile(optimizer=keras.optimizers.Adam(PRESETS["seed"]["train"]["learning_rate"]),
                  loss=MaskedCaptionLoss(), jit_compile=jit_compile)
    return model, model_config


def take_batches(dataset, wanted_indices):
    """The batches at these positions of the dataset's first epoch."""
    wanted, found = set(wanted_indices), {}
    for index, batch in enumerate(dataset):
        if index in wanted:
            found[index] = batch
        if len(found) == len(wanted):
            break
    return [found[i] for i in wanted_indices]


def train_steps(model, batches):
    """A task: one train_on_batch over each batch (train_on_batch returns after the step)."""
    def call():
        for inputs, targets in batches:
            model.train_on_batch(inputs, targets)
    return call


def mode_summary(name, model_config, batches, seconds_per_repeat, matmul):
    captions = sum(int(t.shape[0]) for _, t in batches)
    padded = sum(int(t.shape[0]) * int(t.shape[1]) for _, t in batches)
    real = sum(int(tf.math.count_nonzero(t)) for _, t in batches)
    flops = sum(flops_per_batch(model_config, int(t.shape[0]), int(t.shape[1])) for _, t in batches)
    seconds = statistics.median(seconds_per_repeat)
    per_token = flops / padded
    useful = per_token * real  # FLOPs spent on real (non-<pad>) target positions
    return {
        "mode": name,
        "timed_batches": len(batches),
        "batch_steps": [int(t.shape[1]) for _, t in batches],
        "captions": captions,
        "mean_padded_steps": round(padded / captions, 2),
        "mean_real_steps": round(real / captions, 2),
        "seconds_per_repeat": [round(s, 3) for s in seconds_per_repeat],
        "seconds_median": round(seconds, 3),
        "captions_per_s": round(captions / seconds, 2),
        "seconds_per_batch": round(seconds / len(batches), 3),
        "gflops_per_s": round(flops / seconds / 1e9, 2),
        "useful_gflops_per_s": round(useful / seconds / 1e9, 2),
        "fraction_of_matmul_gflops": round(flops / seconds / 1e9 / matmul, 3),
    }


def bench_modes(config: TrainBenchConfig, jit: bool) -> dict:
    started = machine()  # the load average before the run
    features, rows, tokens = synthetic_captions(config.images, config.captions_per_image,
                                                config.vocab_size, config.mean_words, config.seed)
    words = np.array([len(t) - 2 for t in tokens])
    padded_cfg = PipelineConfig(batch_size=config.batch_size, seed=config.seed, pad_to=config.pad_to)
    bucketed_cfg = PipelineConfig(batch_size=config.batch_size, seed=config.seed)

    # (b): batches at evenly spaced quantiles of the epoch's padded lengths, full batches only.
    shapes = batch_shapes(rows, tokens, bucketed_cfg, config.images)
    full = sorted((t, i) for i, (b, t) in enumerate(shapes) if b == config.batch_size)
    k = config.bucketed_batches
    picked = [full[int((j + 0.5) * len(full) / k)][1] for j in range(k)]
    epoch_captions = sum(b for b, _ in shapes)
    epoch_steps = sum(b * t for b, t in shapes) / epoch_captions

    bucketed = take_batches(training_dataset(features, rows, tokens, bucketed_cfg), picked)
    padded = take_batches(training_dataset(features, rows, tokens, padded_cfg),
                          list(range(config.padded_batches)))
    model, model_config = seed_model(config.vocab_size)

    # Warm-up: the first shape traces, the second a shape-relaxed [None, None] function that
    # every later shape reuses (reduce_retracing); a third shape checks there is no retrace.
    for inputs, targets in [padded[0], bucketed[0], bucketed[-1]]:
        model.train_on_batch(inputs, targets)

    # Within a repetition the modes alternate in chunks of similar length (one padded batch,
    # then its share of the bucketed batches), so a burst of outside load hits both.
    chunks = np.array_split(np.arange(len(bucketed)), len(padded))
    tasks = {"matmul": matmul_task()}
    for i, chunk in enumerate(chunks):
        tasks[f"pad_to_80_{i}"] = train_steps(model, [padded[i]])
        tasks[f"bucketed_{i}"] = train_steps(model, [bucketed[j] for j in chunk])
    wall = round_robin(tasks, config.repeats, warmup=0)[0]
    padded_s, bucketed_s = ([sum(wall[f"{mode}_{i}"][rep] for i in range(len(chunks)))
                             for rep in range(config.repeats)]
                            for mode in ("pad_to_80", "bucketed"))
    matmul = [MATMUL_FLOPS / seconds / 1e9 for seconds in wall["matmul"]]
    matmul_median = statistics.median(matmul)

    a = mode_summary("pad_to_80", model_config, padded, padded_s, matmul_median)
    b = mode_summary("bucketed", model_config, bucketed, bucketed_s, matmul_median)
    ratios = [(b["captions"] / sb) / (a["captions"] / sa) for sa, sb in zip(padded_s, bucketed_s)]
    result = {
        "benchmark": "bench_train",
        "machine": started,
        "settings": dataclasses.asdict(config),
        "model": dataclasses.asdict(model_config),
        "jit_compile": False,
        "data": {"captions": len(tokens), "mean_words": round(float(words.mean()), 2),
                 "words_min_max": [int(words.min()), int(words.max())],
                 "epoch_batches": len(shapes), "epoch_mean_padded_steps_bucketed": round(epoch_steps, 2),
                 "epoch_distinct_batch_steps_bucketed": len({t for _, t in shapes})},
        "matmul_gflops_per_s": [round(g, 1) for g in matmul],
        "matmul_gflops_per_s_median": round(matmul_median, 1),
        "pad_to_80": a,
        "bucketed": b,
        "speedup_bucketed_over_pad_to_80": round(b["captions_per_s"] / a["captions_per_s"], 2),
        "speedup_per_repeat": [round(r, 2) for r in ratios],
        "target_speedup": 4.0,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    del model
    if jit:
        result["jit"] = bench_jit(config, bucketed[len(bucketed) // 2],
                                  result["data"]["epoch_distinct_batch_steps_bucketed"])
    return result


def bench_jit(config: TrainBenchConfig, batch, distinct_shapes: int) -> dict:
    """jit_compile=True vs False on one bucketed batch (the median length): XLA compiles once per
    distinct batch shape, so the first call's cost is reported too."""
    inputs, targets = batch
    first_call, tasks = {}, {}
    for jit, name in ((False, "jit_compile_false"), (True, "jit_compile_true")):
        model, _ = seed_model(config.vocab_size, jit_compile=jit)
        start = time.perf_counter()
        model.train_on_batch(inputs, targets)
        first_call[name] = round(time.perf_counter() - start, 2)
        tasks[name] = train_steps(model, [batch])
    wall = round_robin(tasks, config.repeats + 2, warmup=0, desc="jit vs no jit")[0]
    row = {}
    for name, steps in wall.items():
        row[name] = {"first_call_s": first_call[name],
                     "seconds_per_step": [round(s, 3) for s in steps],
                     "seconds_per_step_median": round(statistics.median(steps), 3),
                     "captions_per_s": round(int(targets.shape[0]) / statistics.median(steps), 2)}
    row["batch_shape"] = [int(d) for d in targets.shape]
    row["speedup_jit_over_no_jit"] = round(row["jit_compile_false"]["seconds_per_step_median"]
                                           / row["jit_compile_true"]["seconds_per_step_median"], 2)
    row["distinct_batch_shapes_per_epoch"] = distinct_shapes
    row["note"] = ("with jit_compile=True each distinct batch shape compiles once per process "
                   "(first_call_s includes tracing + compilation)")
    return row


class ProgressAndTimes(keras.callbacks.Callback):
    """tqdm bar over the epoch; wall-clock time at the end of every step (a step's call returns
    after its work is done, so these are step boundaries)."""

    def __init__(self, total):
        super().__init__()
        self.bar = tqdm(total=total, desc="epoch", unit="step", file=sys.stderr)
        self.ends = []

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())
        self.bar.update(1)

    def on_train_end(self, logs=None):
        self.bar.close()


def bench_full_scale(steps: int | None) -> dict:
    """One epoch over Flickr30k-sized data (29,000 images x 5 captions, vocabulary 7,500) through
    the real training_dataset and keras fit. With `steps`, only the first `steps` batches are
    trained and the epoch is extrapolated by padded tokens (the twin dataset gives every batch's
    shape of that same epoch)."""
    started = machine()
    config = TrainBenchConfig(vocab_size=7_500)
    features, rows, tokens = synthetic_captions(config.images, config.captions_per_image,
                                                config.vocab_size, config.mean_words, config.seed)
    pipeline = PipelineConfig(batch_size=config.batch_size, seed=config.seed)
    shapes = batch_shapes(rows, tokens, pipeline, config.images)
    dataset = training_dataset(features, rows, tokens, pipeline)
    model, model_config = seed_model(config.vocab_size)
    total = len(shapes) if steps is None else min(steps, len(shapes))
    progress = ProgressAndTimes(total)
    model.fit(dataset, epochs=1, steps_per_epoch=total if steps else None, verbose=0,
              callbacks=[progress])
    ends = progress.ends
    if len(ends) != total:
        raise RuntimeError(f"fit ran {len(ends)} steps, expected {total}")
    tokens_of = [b * t for b, t in shapes]
    wall = ends[-1] - progress.start
    first_step = ends[0] - progress.start          # includes tracing
    steady = ends[-1] - ends[0]                    # steps 2..total
    steady_tokens = sum(tokens_of[1:total])
    epoch_tokens = sum(tokens_of)
    extrapolated = total < len(shapes)
    epoch_seconds = first_step + steady * (epoch_tokens - tokens_of[0]) / steady_tokens
    return {
        "benchmark": "bench_train_full_scale",
        "machine": started,
        "model": dataclasses.asdict(model_config),
        "jit_compile": False,
        "data": {"images": config.images, "captions": len(tokens),
                 "mean_words": round(float(np.mean([len(t) - 2 for t in tokens])), 2),
                 "epoch_batches": len(shapes),
                 "epoch_mean_padded_steps": round(epoch_tokens / len(tokens), 2)},
        "measured_steps": total,
        "extrapolated": extrapolated,
        "extrapolation": ("seconds_per_epoch = first step + steady seconds x (epoch padded "
                          "tokens / padded tokens of the measured steps 2..N)") if extrapolated
                         else None,
        "measured_seconds": round(wall, 1),
        "first_step_seconds_incl_tracing": round(first_step, 2),
        "steady_seconds_per_step": round(steady / max(1, total - 1), 3),
        "captions_per_s": round(sum(b for b, _ in shapes[1:total]) / steady, 1),
        "seconds_per_epoch": round(epoch_seconds if extrapolated else wall, 1),
        "minutes_per_epoch": round((epoch_seconds if extrapolated else wall) / 60, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "target_peak_rss_mb": 4096,
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jit", action="store_true", help="add a jit_compile=True vs False row")
    p.add_argument("--full-scale", action="store_true",
                   help="one Flickr30k-sized epoch (vocabulary 7,500): seconds and peak memory")
    p.add_argument("--steps", type=int, help="--full-scale: train only the first N steps and "
                                             "extrapolate the epoch (said so in the JSON)")
    p.add_argument("--repeats", type=int, default=TrainBenchConfig.repeats)
    p.add_argument("--quick", action="store_true", help="a smoke run: " + str(QUICK))
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 2:
        p.error(f"--steps must be >= 2, got {args.steps}")
    if args.full_scale:
        report("bench_train_full_scale", bench_full_scale(args.steps))
    else:
        config = TrainBenchConfig(**{"repeats": args.repeats, **(QUICK if args.quick else {})})
        report("bench_train", bench_modes(config, args.jit))


if __name__ == "__main__":
    main()
