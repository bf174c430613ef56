"""Data-path benchmarks; prints one JSON object.

    python benchmarks/bench_data.py [--images 256] [--rounds 3] [--skip-extraction]

1. feature_extraction: images/s of the whole feature pipeline (JPEG files -> read -> decode ->
   ResNet50 -> shard files) against the bare encoder on the same images already decoded in memory,
   same batch size, random-init weights. Both are warmed up (traced) first and measured in
   rounds of rotating order, so load from other processes hits both alike; ratio =
   pipeline / bare, target >= 0.9. On a shared machine wall clock is noisy: the CPU-time ratio
   (images per CPU-second of this process) shows the work the pipeline adds regardless.
   Also: the bare encoder via tf.function against model.predict_on_batch.
2. input_pipeline: batches/s of training_dataset alone at Flickr30k scale (29,000 images x 5
   captions, random features, ~14 tokens per caption, batch 128), against the time of one training
   step of a plain Embedding(20013,256) + LSTM(512) + Dense(20013) Keras model at that batch size
   (jit_compile=False); headroom = batches the pipeline makes during one training step.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from data.feature_cache import _encode_function, extract_features  # noqa: E402
from data.images import decode_one  # noqa: E402
from data.pipeline import PipelineConfig, training_dataset  # noqa: E402
from model.encoder import EncoderConfig, build_encoder  # noqa: E402

BATCH = 32
WAITS: list[float] = []  # per pipeline run: share of its time spent waiting for decoded images
FLICKR_IMAGES, CAPTIONS_PER_IMAGE, VOCAB, FEATURE_DIM = 29_000, 5, 20_013, 2048
MEAN_WORDS = 12.3  # Flickr30k captions: ~12.3 words, so ~14.3 tokens with <start>/<end>


def flickr_like_jpegs(folder: pathlib.Path, count: int, seed: int = 0) -> list:
    """500x375 photo-like JPEGs (smooth shapes + sensor noise, quality 90: ~100 KB each)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    items = []
    for i in range(count):
        base = np.stack([np.sin(xx / rng.uniform(20, 90) + rng.uniform(0, 6)),
                         np.cos(yy / rng.uniform(20, 90) + rng.uniform(0, 6)),
                         np.sin((xx + yy) / rng.uniform(30, 120))], -1) * 90 + 128
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        items.append((path.name, path))
    return items


def time_bare(encode, images: tf.Tensor) -> tuple[float, float]:
    """(images per wall second, images per CPU second) of the encoder alone over in-memory
    preprocessed images."""
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(images), BATCH):
        np.asarray(encode(images[i:i + BATCH]))
    return _rates(len(images), start, cpu)


def time_pipeline(items, encoder, folder: pathlib.Path, run: int) -> tuple[float, float]:
    """The same for files -> cache, around the whole call (a fresh cache each time)."""
    start, cpu = time.perf_counter(), time.process_time()
    report = extract_features(items, encoder, folder / f"cache-{run}", encoder_id="random-seed0",
                              batch_size=BATCH, progress=False)
    rates = _rates(len(items), start, cpu)
    assert report.num_extracted == len(items), report
    WAITS.append(report.input_wait_seconds / (time.perf_counter() - start))
    return rates


def _rates(count: int, start: float, cpu: float) -> tuple[float, float]:
    # CPU time of this process (all threads) is what other jobs on a shared machine cannot
    # inflate: it shows the work the pipeline adds even when wall clock is noisy.
    return count / (time.perf_counter() - start), count / (time.process_time() - cpu)


def _cores_used(rates: tuple[float, float]) -> float:
    """CPU seconds per wall second: ~os.cpu_count() when the machine is ours alone."""
    return rates[0] / rates[1]


def bench_extraction(num_images: int, rounds: int) -> dict:
    encoder = build_encoder(EncoderConfig("random", seed=0))
    encode = _encode_function(encoder)  # the very function the pipeline calls
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        (folder / "images").mkdir()
        items = flickr_like_jpegs(folder / "images", num_images)
        mean_kb = np.mean([p.stat().st_size for _, p in items]) / 1024
        images = tf.stack([decode_one(tf.io.read_file(str(p)))[0] for _, p in items])
        # Warm-up: trace the encoder, the decode graph and the predict function once.
        cold = time_pipeline(items[:BATCH], encoder, folder, run=-1)[0]
        encoder.predict_on_batch(images[:BATCH])
        measures = {
            "bare": lambda run: time_bare(encode, images),
            "pipeline": lambda run: time_pipeline(items, encoder, folder, run),
            "predict_on_batch": lambda run: time_bare(encoder.predict_on_batch, images),
        }
        rates = {name: [] for name in measures}
        order = list(measures)
        for run in range(rounds):  # rotate the order so a drift in background load hits all
            for name in order[run % 3:] + order[:run % 3]:
                rates[name].append(measures[name](run))
    wall = {name: [r[0] for r in values] for name, values in rates.items()}
    cpu = {name: [r[1] for r in values] for name, values in rates.items()}
    ratios = [p / b for p, b in zip(wall["pipeline"], wall["bare"])]
    cpu_ratios = [p / b for p, b in zip(cpu["pipeline"], cpu["bare"])]
    return {
        "images": num_images, "image_size": "500x375 JPEG", "mean_file_kb": round(mean_kb, 1),
        "batch_size": BATCH, "weights": "random-seed0", "rounds": rounds,
        "bare_encoder_images_per_s": _rounded(wall["bare"]),
        "pipeline_images_per_s": _rounded(wall["pipeline"]),
        "ratio_per_round": _rounded(ratios, 3),
        "ratio_median": round(statistics.median(ratios), 3),
        "target": 0.9,
        "bare_encoder_images_per_cpu_s": _rounded(cpu["bare"]),
        "pipeline_images_per_cpu_s": _rounded(cpu["pipeline"]),
        "cpu_ratio_per_round": _rounded(cpu_ratios, 3),
        "cpu_ratio_median": round(statistics.median(cpu_ratios), 3),
        "cores_used_per_round": {name: _rounded([_cores_used(r) for r in values])
                                 for name, values in rates.items()},
        "pipeline_input_wait_share_per_round": _rounded(WAITS[1:], 3),
        "predict_on_batch_images_per_s": _rounded(wall["predict_on_batch"]),
        "predict_on_batch_images_per_cpu_s": _rounded(cpu["predict_on_batch"]),
        "tf_function_over_predict_on_batch_cpu": round(
            statistics.median(cpu["bare"]) / statistics.median(cpu["predict_on_batch"]), 3),
        "first_call_32_images_per_s_incl_tracing": round(cold, 2),
    }


def flickr_like_captions(seed: int = 0):
    rng = np.random.default_rng(seed)
    num = FLICKR_IMAGES * CAPTIONS_PER_IMAGE
    # Gamma-distributed word counts: mean ~12.3, long right tail like real captions.
    words = np.clip(np.round(rng.gamma(4.0, MEAN_WORDS / 4.0, num)), 1, 78).astype(int)
    ids = rng.integers(4, VOCAB, int(words.sum()), dtype=np.int64).tolist()
    tokens, at = [], 0
    for n in words:
        tokens.append([1, *ids[at:at + n], 2])
        at += n
    rows = np.repeat(np.arange(FLICKR_IMAGES), CAPTIONS_PER_IMAGE)
    return rows, tokens


def lstm_model() -> keras.Model:
    tokens = keras.Input((None,), dtype="int32")
    hidden = keras.layers.LSTM(512, return_sequences=True)(
        keras.layers.Embedding(VOCAB, 256, mask_zero=True)(tokens))
    model = keras.Model(tokens, keras.layers.Dense(VOCAB)(hidden))
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)
    return model


def bench_input_pipeline(rounds: int) -> dict:
    rng = np.random.default_rng(1)
    features = rng.random((FLICKR_IMAGES, FEATURE_DIM), dtype=np.float32)
    rows, tokens = flickr_like_captions()
    start = time.perf_counter()
    dataset = training_dataset(features, rows, tokens, PipelineConfig(batch_size=128))
    build_seconds = time.perf_counter() - start
    widths, per_second = [], []
    for _ in range(rounds):  # each round is one full epoch
        start, count = time.perf_counter(), 0
        for inputs, targets in dataset:
            count += 1
            widths.append(int(targets.shape[1]))
        per_second.append(count / (time.perf_counter() - start))

    model = lstm_model()
    samples = [batch for batch, _ in zip(dataset, range(6))]
    for inputs, targets in samples[:3]:  # warm-up, including one trace per width
        model.train_on_batch(inputs["tokens"], targets)
    step_seconds = []
    for inputs, targets in samples[3:]:
        model.train_on_batch(inputs["tokens"], targets)  # trace this width first
        start = time.perf_counter()
        model.train_on_batch(inputs["tokens"], targets)
        step_seconds.append(time.perf_counter() - start)
    mean_width = float(np.mean(widths))
    padded = tf.zeros([128, 80], tf.int32)
    model.train_on_batch(padded, padded)
    start = time.perf_counter()
    model.train_on_batch(padded, padded)
    padded_step = time.perf_counter() - start
    step = statistics.median(step_seconds)
    batches_per_s = statistics.median(per_second)
    return {
        "captions": len(tokens), "images": FLICKR_IMAGES, "batch_size": 128,
        "mean_tokens_per_caption": round(float(np.mean([len(t) for t in tokens])), 2),
        "mean_batch_width": round(mean_width, 2),
        "mean_caption_steps": round(float(np.mean([len(t) - 1 for t in tokens])), 2),
        "build_seconds": round(build_seconds, 2),
        "pipeline_batches_per_s_per_epoch": _rounded(per_second),
        "pipeline_batches_per_s": round(batches_per_s, 1),
        "train_step_seconds": _rounded(step_seconds, 3),
        "train_step_seconds_median": round(step, 3),
        "headroom_ratio": round(batches_per_s * step, 1),
        "train_step_seconds_padded_to_80": round(padded_step, 3),
        "padding_to_80_slowdown": round(padded_step / step, 2),
    }


def _rounded(values, digits=2):
    return [round(v, digits) for v in values]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-extraction", action="store_true")
    parser.add_argument("--skip-input-pipeline", action="store_true")
    args = parser.parse_args(argv)
    result = {"machine": {"cpus": os.cpu_count(), "tensorflow": tf.__version__,
                          "keras": keras.__version__, "python": platform.python_version(),
                          "load_average_at_start": os.getloadavg()}}
    if not args.skip_extraction:
        result["feature_extraction"] = bench_extraction(args.images, args.rounds)
    if not args.skip_input_pipeline:
        result["input_pipeline"] = bench_input_pipeline(args.rounds)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
