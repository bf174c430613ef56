"""Training speed of the real Captioner + MaskedCaptionLoss at the original project's shapes
(seed preset, V 20,013, batch 128), random features, Flickr-like caption lengths:

    python -m benchmarks.bench_train            # pad-to-80 vs bucketed captions/s, GFLOP/s
    python -m benchmarks.bench_train --jit      # + jit_compile=True vs False at one batch shape
    python -m benchmarks.bench_train --full-scale [--steps N]   # one Flickr30k-sized epoch
    python -m benchmarks.bench_train --quick    # a smoke run of the first line
"""
import dataclasses
import resource
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from benchmarks._synthetic import synthetic_captions
from benchmarks._timing import machine, median, parse, report, round_robin, rounded
from data.pipeline import PipelineConfig, training_dataset
from model.base import MaskedCaptionLoss, ModelConfig
from model.presets import PRESETS, build_captioner


@dataclasses.dataclass
class TrainBenchConfig:
    vocab_size: int = 20_013       # the original's vocabulary (all captions, no min count)
    images: int = 29_000           # Flickr30k Karpathy train split
    captions_per_image: int = 5
    batch_size: int = 128
    pad_to: int = 80               # the original's padding
    mean_words: float = 14.0
    padded_batches: int = 2        # timed pad-to-80 batches per repetition
    bucketed_batches: int = 8      # timed bucketed batches per repetition (length quantiles)
    repeats: int = 3
    seed: int = 0


QUICK = {"images": 2_900, "repeats": 1, "padded_batches": 1, "bucketed_batches": 2}
MATMUL_FLOPS = 2 * 128 * 16 * 512 * 20_013  # [128*16, 512] x [512, 20013]: a T=16 batch's logits


def epoch(config: TrainBenchConfig, pad_to=None, data=None):
    """(training_dataset over synthetic captions, [(captions, T)] of every batch of its first
    epoch in order, the data). The shapes come from a twin over a 1-column feature matrix: the
    seeded shuffle gives the same order at no cost."""
    data = data or synthetic_captions(config.images, config.captions_per_image, config.vocab_size,
                                      config.mean_words, config.seed)
    features, rows, tokens = data
    pipeline = PipelineConfig(batch_size=config.batch_size, seed=config.seed, pad_to=pad_to)
    twin = training_dataset(np.zeros((len(features), 1), np.float32), rows, tokens, pipeline)
    return (training_dataset(features, rows, tokens, pipeline),
            None if pad_to else [tuple(int(d) for d in t.shape) for _, t in twin], data)


def quantile_batches(config: TrainBenchConfig, count: int):
    """(`count` full bucketed batches at evenly spaced quantiles of an epoch's padded lengths,
    so that a few batches stand for the epoch, the epoch's shapes, the data)."""
    dataset, shapes, data = epoch(config)
    full = sorted((t, i) for i, (b, t) in enumerate(shapes) if b == config.batch_size)
    picked = [full[int((j + 0.5) * len(full) / count)][1] for j in range(count)]
    found = {i: batch for i, batch in zip(range(max(picked) + 1), dataset) if i in picked}
    return [found[i] for i in picked], shapes, data


def seed_model(vocab_size: int, jit_compile=False):
    model_config = ModelConfig(vocab_size=vocab_size, **PRESETS["seed"]["model"])
    model = build_captioner(model_config)
    model.compile(optimizer=keras.optimizers.Adam(PRESETS["seed"]["train"]["learning_rate"]),
                  loss=MaskedCaptionLoss(), jit_compile=jit_compile)
    return model, model_config


def train_steps(model, batches):
    """A task: train_on_batch over each batch (it returns after the step)."""
    return lambda: [model.train_on_batch(inputs, targets) for inputs, targets in batches]


def flops_per_batch(m: ModelConfig, captions: int, steps: int) -> float:
    """Forward + backward (x3) matmul FLOPs, padded positions included: per token the LSTM's
    2(E+U)4U and the logits' 2UV, per caption h0's 2FU (elementwise work is < 1%)."""
    per_token = 2 * (m.embed_dim + m.units) * 4 * m.units + 2 * m.units * m.vocab_size
    return 3.0 * (captions * steps * per_token + captions * 2 * m.feature_dim * m.units)


def mode_summary(name, model_config, batches, seconds_per_repeat, matmul):
    captions = sum(int(t.shape[0]) for _, t in batches)
    padded = sum(int(t.shape[0]) * int(t.shape[1]) for _, t in batches)
    real = sum(int(tf.math.count_nonzero(t)) for _, t in batches)
    flops = sum(flops_per_batch(model_config, *map(int, t.shape)) for _, t in batches)
    seconds = median(seconds_per_repeat)
    return {"mode": name, "timed_batches": len(batches), "captions": captions,
            "batch_steps": [int(t.shape[1]) for _, t in batches],
            "mean_padded_steps": round(padded / captions, 2),
            "mean_real_steps": round(real / captions, 2),
            "seconds_per_repeat": rounded(seconds_per_repeat), "seconds_median": round(seconds, 3),
            "captions_per_s": round(captions / seconds, 2),
            "seconds_per_batch": round(seconds / len(batches), 3),
            "gflops_per_s": round(flops / seconds / 1e9, 2),
            "useful_gflops_per_s": round(flops / padded * real / seconds / 1e9, 2),  # non-<pad>
            "fraction_of_matmul_gflops": round(flops / seconds / 1e9 / matmul, 3)}


def bench_modes(config: TrainBenchConfig, jit: bool) -> dict:
    """pad_to=80 (the original's way) vs length-bucketed batches padded to their longest caption,
    from the real training_dataset, timed round-robin beside a plain matmul (what the machine
    gives right now)."""
    started = machine()
    bucketed, shapes, data = quantile_batches(config, config.bucketed_batches)
    padded = list(epoch(config, config.pad_to, data)[0].take(config.padded_batches))
    words = np.array([len(t) - 2 for t in data[2]])
    model, model_config = seed_model(config.vocab_size)
    # Warm-up: the first shape traces, the second a shape-relaxed [None, None] function every
    # later shape reuses (reduce_retracing); the third checks there is no retrace.
    for inputs, targets in [padded[0], bucketed[0], bucketed[-1]]:
        model.train_on_batch(inputs, targets)
    a, b = tf.random.normal([128 * 16, 512]), tf.random.normal([512, 20_013])
    matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    matmul()
    # The modes alternate in chunks of similar length (one padded batch, then its share of the
    # bucketed ones), so a burst of outside load hits both.
    chunks = np.array_split(np.arange(len(bucketed)), len(padded))
    tasks = {"matmul": lambda: matmul().numpy()}
    for i, chunk in enumerate(chunks):
        tasks[f"pad_to_80_{i}"] = train_steps(model, [padded[i]])
        tasks[f"bucketed_{i}"] = train_steps(model, [bucketed[j] for j in chunk])
    wall = round_robin(tasks, config.repeats, warmup=0)[0]
    padded_s, bucketed_s = ([sum(wall[f"{mode}_{i}"][rep] for i in range(len(chunks)))
                             for rep in range(config.repeats)] for mode in ("pad_to_80", "bucketed"))
    gflops = [MATMUL_FLOPS / s / 1e9 for s in wall["matmul"]]
    pad = mode_summary("pad_to_80", model_config, padded, padded_s, median(gflops))
    buck = mode_summary("bucketed", model_config, bucketed, bucketed_s, median(gflops))
    ratios = [buck["captions"] / b / (pad["captions"] / a) for a, b in zip(padded_s, bucketed_s)]
    distinct = len({t for _, t in shapes})
    result = {
        "benchmark": "bench_train", "machine": started, "settings": dataclasses.asdict(config),
        "model": dataclasses.asdict(model_config), "jit_compile": False,
        "data": {"captions": len(words), "mean_words": round(float(words.mean()), 2),
                 "words_min_max": [int(words.min()), int(words.max())],
                 "epoch_batches": len(shapes), "epoch_mean_padded_steps_bucketed": round(
                     sum(b * t for b, t in shapes) / sum(b for b, _ in shapes), 2),
                 "epoch_distinct_batch_steps_bucketed": distinct},
        "matmul_gflops_per_s": rounded(gflops, 1),
        "matmul_gflops_per_s_median": round(median(gflops), 1),
        "pad_to_80": pad, "bucketed": buck,
        "speedup_bucketed_over_pad_to_80": round(buck["captions_per_s"] / pad["captions_per_s"], 2),
        "speedup_per_repeat": rounded(ratios, 2), "target_speedup": 4.0,
        "peak_rss_mb": peak_rss_mb()}
    del model
    if jit:
        result["jit"] = bench_jit(config, bucketed[len(bucketed) // 2], distinct)
    return result


def bench_jit(config: TrainBenchConfig, batch, distinct_shapes: int) -> dict:
    """jit_compile=True vs False on the median-length bucketed batch; XLA compiles once per
    distinct batch shape, so the first call is reported too."""
    first_call, tasks = {}, {}
    for jit, name in ((False, "jit_compile_false"), (True, "jit_compile_true")):
        model = seed_model(config.vocab_size, jit_compile=jit)[0]
        started = time.perf_counter()
        model.train_on_batch(*batch)
        first_call[name] = round(time.perf_counter() - started, 2)
        tasks[name] = train_steps(model, [batch])
    wall = round_robin(tasks, config.repeats + 2, warmup=0, desc="jit vs no jit")[0]
    row = {name: {"first_call_s": first_call[name], "seconds_per_step": rounded(steps),
                  "seconds_per_step_median": round(median(steps), 3),
                  "captions_per_s": round(int(batch[1].shape[0]) / median(steps), 2)}
           for name, steps in wall.items()}
    return {**row, "batch_shape": [int(d) for d in batch[1].shape],
            "speedup_jit_over_no_jit": round(row["jit_compile_false"]["seconds_per_step_median"]
                                             / row["jit_compile_true"]["seconds_per_step_median"], 2),
            "distinct_batch_shapes_per_epoch": distinct_shapes,
            "note": "first_call_s includes tracing (+ XLA compilation, once per batch shape)"}


def bench_full_scale(config: TrainBenchConfig, steps: int | None) -> dict:
    """One epoch (by default 29,000 images x 5 captions, V 7,500) through the real
    training_dataset and keras fit. With `steps`, only the first `steps` batches are trained and
    the epoch is extrapolated by padded tokens (the twin gives every batch's shape)."""
    started = machine()
    dataset, shapes, (_, _, tokens) = epoch(config)
    model, model_config = seed_model(config.vocab_size)
    total = len(shapes) if steps is None else min(steps, len(shapes))
    ends, bar = [], tqdm(total=total, desc="epoch", unit="step", file=sys.stderr)
    step_ends = keras.callbacks.LambdaCallback(  # ends[0]: the start; a step returns when done
        on_train_begin=lambda logs: ends.append(time.perf_counter()),
        on_train_batch_end=lambda batch, logs: (ends.append(time.perf_counter()), bar.update()))
    model.fit(dataset, epochs=1, steps_per_epoch=total if steps else None, verbose=0,
              callbacks=[step_ends])
    bar.close()
    if len(ends) != total + 1:
        raise RuntimeError(f"fit ran {len(ends) - 1} steps, expected {total}")
    tokens_of = [b * t for b, t in shapes]
    wall, first_step, steady = ends[-1] - ends[0], ends[1] - ends[0], ends[-1] - ends[1]
    extrapolated = total < len(shapes)
    epoch_seconds = (first_step + steady * (sum(tokens_of) - tokens_of[0]) / sum(tokens_of[1:total])
                     if extrapolated else wall)
    return {
        "benchmark": "bench_train_full_scale", "machine": started,
        "model": dataclasses.asdict(model_config), "jit_compile": False,
        "data": {"images": config.images, "captions": len(tokens),
                 "mean_words": round(float(np.mean([len(t) - 2 for t in tokens])), 2),
                 "epoch_batches": len(shapes),
                 "epoch_mean_padded_steps": round(sum(tokens_of) / len(tokens), 2)},
        "measured_steps": total, "extrapolated": extrapolated,
        "extrapolation": ("seconds_per_epoch = first step + steady seconds x (epoch padded "
                          "tokens / padded tokens of the measured steps 2..N)") if extrapolated
                         else None,
        "measured_seconds": round(wall, 1), "first_step_seconds_incl_tracing": round(first_step, 2),
        "steady_seconds_per_step": round(steady / max(1, total - 1), 3),
        "captions_per_s": round(sum(b for b, _ in shapes[1:total]) / steady, 1),
        "seconds_per_epoch": round(epoch_seconds, 1),
        "minutes_per_epoch": round(epoch_seconds / 60, 1),
        "peak_rss_mb": peak_rss_mb(), "target_peak_rss_mb": 4096}


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def main(argv=None):
    config, args = parse(__doc__, TrainBenchConfig, QUICK, argv,
                         jit={"action": "store_true", "help": "add a jit_compile=True vs False row"},
                         full_scale={"action": "store_true", "help": "one Flickr30k-sized epoch"},
                         steps={"type": int, "help": "--full-scale: train only the first N steps "
                                                     "and extrapolate the epoch (said in the JSON)"})
    if args.steps is not None and args.steps < 2:
        raise SystemExit(f"--steps must be >= 2, got {args.steps}")
    if args.full_scale:  # vocabulary 7,500 unless --vocab-size
        config = config if args.vocab_size else dataclasses.replace(config, vocab_size=7_500)
        report("bench_train_full_scale", bench_full_scale(config, args.steps))
    else:
        report("bench_train", bench_modes(config, args.jit))


if __name__ == "__main__":
    main()
