"""The seed preset's model (random weights, random features) at the original project's shapes:
training with Flickr-like caption lengths (V 20,013, batch 128), and greedy decoding:

    python -m benchmarks.bench_train            # pad-to-80 vs bucketed captions/s, GFLOP/s
    python -m benchmarks.bench_train --jit      # + jit_compile=True vs False at one batch shape
    python -m benchmarks.bench_train --full-scale [--steps N]   # one Flickr30k-sized epoch, and
                                                                # a COCO-sized one projected
    python -m benchmarks.bench_train --decode   # greedy decoding ms/step, batch 1 and 32

--decode: decode_features in a tf.function, as model/evaluate.py runs it, at V 20,013 and 7,500;
<end> gets a -1e4 bias, so every caption runs exactly --decode-steps steps.
"""
import dataclasses
import math
import resource
import sys
import time

if __name__ == "__main__":  # a command: TensorFlow's start-up noise is hidden before anything loads it
    from data.quiet import quiet_command
    quiet_command()

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from benchmarks._synthetic import FEATURE_DIM, synthetic_captions
from benchmarks._timing import machine, median, parse, report, round_robin, rounded
from data.pipeline import PipelineConfig, training_dataset
from data.vocabulary import END_ID
from model.base import MaskedCaptionLoss
from model.decoding import decode_features
from model.families import build_captioner
from model.settings import PRESETS, DecodeConfig, ModelConfig


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
    decode_steps: int = 40         # the original decoded up to 40 tokens
    decode_repeats: int = 40       # at batch 1; at batch 32 an eighth (at least 2)


# COCO's Karpathy train split (train + restval) at 5 captions an image, for the projection of a
# COCO-sized epoch from a measured one.
COCO_TRAIN_IMAGES, COCO_CAPTIONS_PER_IMAGE = 113_287, 5

QUICK = {"images": 2_900, "repeats": 1, "padded_batches": 1, "bucketed_batches": 2,
         "decode_repeats": 8}
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
    model = build_captioner(ModelConfig(vocab_size=vocab_size, **PRESETS["seed"]["model"]))
    model.compile(optimizer=keras.optimizers.Adam(PRESETS["seed"]["train"]["learning_rate"]),
                  loss=MaskedCaptionLoss(), jit_compile=jit_compile)
    return model


def train_steps(model, batches):
    """A task: train_on_batch over each batch (it returns after the step)."""
    return lambda: [model.train_on_batch(inputs, targets) for inputs, targets in batches]


def mode_summary(batches, seconds_per_repeat, matmul_gflops, m: ModelConfig) -> dict:
    """Captions/s and achieved GFLOP/s: forward + backward (x3) matmul FLOPs, per token the LSTM's
    2(E+U)4U and the logits' 2UV, per caption h0's 2FU (elementwise work is < 1%)."""
    per_token = 2 * (m.embed_dim + m.units) * 4 * m.units + 2 * m.units * m.vocab_size
    captions = sum(int(t.shape[0]) for _, t in batches)
    padded = sum(int(t.shape[0]) * int(t.shape[1]) for _, t in batches)
    real = sum(int(tf.math.count_nonzero(t)) for _, t in batches)  # non-<pad> targets
    flops = 3.0 * (padded * per_token + captions * 2 * m.feature_dim * m.units)
    gflops = flops / median(seconds_per_repeat) / 1e9
    return {"batch_steps": [int(t.shape[1]) for _, t in batches],
            "seconds_per_repeat": rounded(seconds_per_repeat),
            "captions_per_s": round(captions / median(seconds_per_repeat), 2),
            "gflops_per_s": round(gflops, 2), "useful_gflops_per_s": round(gflops * real / padded, 2),
            "fraction_of_matmul_gflops": round(gflops / matmul_gflops, 3)}


def bench_modes(config: TrainBenchConfig, jit: bool) -> dict:
    """pad_to=80 (the original's way) vs length-bucketed batches padded to their longest caption,
    from the real training_dataset, timed round-robin beside a plain matmul (what the machine
    gives right now)."""
    started = machine()
    bucketed, shapes, data = quantile_batches(config, config.bucketed_batches)
    padded = list(epoch(config, config.pad_to, data)[0].take(config.padded_batches))
    model = seed_model(config.vocab_size)
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
    gflops = median(MATMUL_FLOPS / s / 1e9 for s in wall["matmul"])
    pad = mode_summary(padded, padded_s, gflops, model.config)
    buck = mode_summary(bucketed, bucketed_s, gflops, model.config)
    captions = [sum(int(t.shape[0]) for _, t in batches) for batches in (padded, bucketed)]
    ratios = [captions[1] / b / (captions[0] / a) for a, b in zip(padded_s, bucketed_s)]
    result = {
        "benchmark": "bench_train", "machine": started, "settings": dataclasses.asdict(config),
        "model": dataclasses.asdict(model.config), "jit_compile": False,
        "matmul_gflops_per_s_median": round(gflops, 1), "pad_to_80": pad, "bucketed": buck,
        "speedup_bucketed_over_pad_to_80": round(buck["captions_per_s"] / pad["captions_per_s"], 2),
        "speedup_per_repeat": rounded(ratios, 2), "peak_rss_mb": peak_rss_mb()}
    if jit:
        result["jit"] = bench_jit(config, bucketed[len(bucketed) // 2], len(set(shapes)))
    return result


def bench_jit(config: TrainBenchConfig, batch, distinct_shapes: int) -> dict:
    """jit_compile=True vs False on the median-length bucketed batch; XLA compiles once per
    distinct batch shape, so the first call (tracing + compilation) is reported too."""
    first_call, tasks = {}, {}
    for name, jit in (("jit_compile_false", False), ("jit_compile_true", True)):
        model = seed_model(config.vocab_size, jit_compile=jit)
        started = time.perf_counter()
        model.train_on_batch(*batch)
        first_call[name] = round(time.perf_counter() - started, 2)
        tasks[name] = train_steps(model, [batch])
    wall = round_robin(tasks, config.repeats + 2, warmup=0, desc="jit vs no jit")[0]
    step = {name: median(seconds) for name, seconds in wall.items()}
    return {**{name: {"first_call_s": first_call[name], "seconds_per_step": round(step[name], 3)}
               for name in wall}, "batch_shape": [int(d) for d in batch[1].shape],
            "speedup_jit_over_no_jit": round(step["jit_compile_false"] / step["jit_compile_true"], 2),
            "distinct_batch_shapes_per_epoch": distinct_shapes}


def bench_full_scale(config: TrainBenchConfig, steps: int | None) -> dict:
    """One epoch (by default 29,000 images x 5 captions, V 7,500) through the real
    training_dataset and keras fit. With `steps`, only the first `steps` batches are trained and
    the epoch is extrapolated by padded tokens (the twin gives every batch's shape)."""
    started = machine()
    dataset, shapes, _ = epoch(config)
    model = seed_model(config.vocab_size)
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
    tokens = [b * t for b, t in shapes]
    first_step, steady = ends[1] - ends[0], ends[-1] - ends[1]
    extrapolated = total < len(shapes)
    epoch_seconds = (first_step + steady * sum(tokens[1:]) / sum(tokens[1:total])
                     if extrapolated else ends[-1] - ends[0])
    return {"benchmark": "bench_train_full_scale", "machine": started,
            "model": dataclasses.asdict(model.config), "images": config.images,
            "epoch_batches": len(shapes), "measured_steps": total, "extrapolated": extrapolated,
            "steady_seconds_per_step": round(steady / max(1, total - 1), 3),
            "captions_per_s": round(sum(b for b, _ in shapes[1:total]) / steady, 1),
            "minutes_per_epoch": round(epoch_seconds / 60, 1), "peak_rss_mb": peak_rss_mb(),
            "coco_projection": coco_projection(len(shapes), sum(b for b, _ in shapes),
                                               epoch_seconds, first_step)}


def coco_projection(epoch_batches: int, epoch_captions: int, epoch_seconds: float,
                    first_step_seconds: float) -> dict:
    """A COCO-sized epoch (113,287 images x 5 captions) at a measured (or extrapolated) epoch's
    cost: as many steps as its batches per caption give (the same batch size and length buckets),
    its first step, then its mean seconds per later step (over the epoch's mix of lengths)."""
    captions = COCO_TRAIN_IMAGES * COCO_CAPTIONS_PER_IMAGE
    steps = math.ceil(epoch_batches * captions / epoch_captions)
    per_step = (epoch_seconds - first_step_seconds) / max(1, epoch_batches - 1)
    seconds = first_step_seconds + per_step * (steps - 1)
    return {"images": COCO_TRAIN_IMAGES, "captions": captions, "steps_per_epoch": steps,
            "seconds_per_step": round(per_step, 3), "minutes_per_epoch": round(seconds / 60, 1)}


def bench_decode(config: TrainBenchConfig) -> dict:
    result = {"benchmark": "bench_decode", "machine": machine(), "settings": dataclasses.asdict(config)}
    for vocab_size in (config.vocab_size, 7_500):  # the original's; min count 5 on Flickr30k
        tf.random.set_seed(config.seed)
        model = seed_model(vocab_size)
        bias = model.to_logits.bias.numpy()
        bias[END_ID] = -1e4  # <end> never wins
        model.to_logits.bias.assign(bias)
        decode = tf.function(lambda features, model=model: decode_features(
            model, features, DecodeConfig(max_new_tokens=config.decode_steps), "greedy"),
            input_signature=[tf.TensorSpec([None, FEATURE_DIM], tf.float32)])
        # Nodes in the greedy while-loop body: the graph ops the executor runs per step.
        library = decode.get_concrete_function().graph.as_graph_def().library.function
        row = result[f"vocab_{vocab_size}"] = {
            "ops_per_step": max(len(f.node_def) for f in library if "while_body" in f.signature.name),
            "logits_kernel_mb": round(512 * vocab_size * 4 / 2 ** 20, 1)}
        for batch in (1, 32):
            features = tf.random.normal([batch, FEATURE_DIM], seed=config.seed)
            repeats = config.decode_repeats if batch == 1 else max(2, config.decode_repeats // 8)
            seconds = round_robin({"decode": lambda: decode(features)[0].numpy()}, repeats,
                                  desc=f"V={vocab_size} batch {batch}")[0]["decode"]
            steps = decode(features)[0].shape[1]
            if steps != config.decode_steps:
                raise RuntimeError(f"the decoder ran {steps} steps, not {config.decode_steps}")
            per_step = [1000 * s / steps for s in seconds]
            row[f"batch_{batch}"] = {"ms_per_step": round(median(per_step), 3),
                                     "ms_per_step_min": round(min(per_step), 3),
                                     "captions_per_s": round(batch / median(seconds), 1)}
        row["captions_per_s_ratio_batch_32_over_batch_1"] = round(
            row["batch_32"]["captions_per_s"] / row["batch_1"]["captions_per_s"], 2)
    return result


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def main(argv=None):
    config, args = parse(__doc__, TrainBenchConfig, QUICK, argv,
                         jit={"action": "store_true", "help": "add a jit_compile=True vs False row"},
                         full_scale={"action": "store_true", "help": "one Flickr30k-sized epoch"},
                         decode={"action": "store_true", "help": "greedy decoding ms/step"},
                         steps={"type": int, "help": "--full-scale: train only the first N steps "
                                                     "and extrapolate the epoch (said in the JSON)"})
    if args.steps is not None and args.steps < 2:
        raise SystemExit(f"--steps must be >= 2, got {args.steps}")
    if args.decode:
        report("bench_decode", bench_decode(config))
    elif args.full_scale:  # vocabulary 7,500 unless --vocab-size
        config = config if args.vocab_size else dataclasses.replace(config, vocab_size=7_500)
        report("bench_train_full_scale", bench_full_scale(config, args.steps))
    else:
        report("bench_train", bench_modes(config, args.jit))


if __name__ == "__main__":
    main()
