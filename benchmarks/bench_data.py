"""Data-path benchmarks; prints one JSON object.

    python benchmarks/bench_data.py [--images 256] [--rounds 3] [--skip-extraction]
                                    [--skip-spatial] [--skip-input-pipeline]
    python benchmarks/bench_data.py --quick       # 64 images, 2 rounds (~4 min)

1. feature_extraction: images/s of the whole feature pipeline (JPEG files -> read -> decode ->
   ResNet50 -> shard files) against the bare encoder on the same images already decoded in memory,
   same batch size, random-init weights, photo-like JPEGs (benchmarks/_synthetic.py). Both are
   warmed up (traced) first and measured round-robin, so load from other processes hits both
   alike; ratio =
   pipeline / bare, target >= 0.9. On a shared machine wall clock is noisy: the CPU-time ratio
   (images per CPU-second of this process) shows the work the pipeline adds regardless.
   Also: the bare encoder via tf.function against model.predict_on_batch.
2. spatial_extraction: the same files -> cache pipeline storing ResNet50's 7x7x2048 maps
   (float16) against storing the pooled 2048-d vectors (float32), same images, same weights,
   measured round-robin in one run: seconds per image (wall and CPU of this process), bytes per
   image measured on the shard files written, and both projected to Flickr30k's 31,783 images
   (GB on disk, hours on this machine at the measured wall-clock rate).
3. input_pipeline: batches/s of training_dataset alone at Flickr30k scale (29,000 images x 5
   captions, random features, benchmarks/_synthetic.py's caption lengths, batch 128), against
   the time of one training step of a plain Embedding(20013,256) + LSTM(512) + Dense(20013)
   Keras model at that batch size (jit_compile=False); headroom = batches the pipeline makes during one training step.
"""
from __future__ import annotations

import argparse
import itertools
import os
import pathlib
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks._synthetic import photo_jpegs, synthetic_captions  # noqa: E402
from benchmarks._timing import machine, report, round_robin  # noqa: E402
from data.feature_cache import FLICKR30K_IMAGES, _encode_function, extract_features  # noqa: E402
from data.images import decode_one  # noqa: E402
from data.pipeline import PipelineConfig, training_dataset  # noqa: E402
from model.encoder import EncoderConfig, build_encoder  # noqa: E402

BATCH = 32
FLICKR_IMAGES, VOCAB = 29_000, 20_013


def write_images(folder: pathlib.Path, images: list[bytes]) -> list:
    """(name, path) items for extract_features."""
    folder.mkdir()
    items = []
    for i, data in enumerate(images):
        path = folder / f"{i:05d}.jpg"
        path.write_bytes(data)
        items.append((path.name, path))
    return items


def encode_all(encode, images: tf.Tensor):
    """A task: the encoder alone over in-memory preprocessed images, BATCH at a time."""
    def call():
        for i in range(0, len(images), BATCH):
            np.asarray(encode(images[i:i + BATCH]))
    return call


def bench_extraction(num_images: int, rounds: int) -> dict:
    encoder = build_encoder(EncoderConfig("random", seed=0))
    encode = _encode_function(encoder)  # the very function the pipeline calls
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        items = write_images(folder / "images", photo_jpegs(num_images))
        mean_kb = np.mean([p.stat().st_size for _, p in items]) / 1024
        images = tf.stack([decode_one(tf.io.read_file(str(p)))[0] for _, p in items])
        runs, waits = itertools.count(), []  # waits: seconds the encoder waited for images

        def pipeline(items=items):  # files -> cache, a fresh cache each time
            report = extract_features(items, encoder, folder / f"cache-{next(runs)}",
                                      encoder_id="random-seed0", batch_size=BATCH, progress=False)
            assert report.num_extracted == len(items), report
            waits.append(report.input_wait_seconds)

        # Warm-up: trace the encoder, the decode graph and the predict function once.
        cold = time.perf_counter()
        pipeline(items[:BATCH])
        cold = BATCH / (time.perf_counter() - cold)
        waits.clear()
        encoder.predict_on_batch(images[:BATCH])
        wall, cpu = round_robin({"bare": encode_all(encode, images), "pipeline": pipeline,
                                 "predict_on_batch": encode_all(encoder.predict_on_batch, images)},
                                rounds, warmup=0, desc="extraction rounds")
    # images per wall second and per CPU second of this process (see round_robin)
    wall = {name: [num_images / s for s in seconds] for name, seconds in wall.items()}
    cpu = {name: [num_images / s for s in seconds] for name, seconds in cpu.items()}
    ratios = [p / b for p, b in zip(wall["pipeline"], wall["bare"])]
    cpu_ratios = [p / b for p, b in zip(cpu["pipeline"], cpu["bare"])]
    pipeline_seconds = [num_images / rate for rate in wall["pipeline"]]
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
        # CPU seconds per wall second: ~os.cpu_count() when the machine is ours alone
        "cores_used_per_round": {name: _rounded([w / c for w, c in zip(wall[name], cpu[name])])
                                 for name in wall},
        "pipeline_input_wait_share_per_round": _rounded(
            [w / s for w, s in zip(waits, pipeline_seconds)], 3),
        "predict_on_batch_images_per_s": _rounded(wall["predict_on_batch"]),
        "predict_on_batch_images_per_cpu_s": _rounded(cpu["predict_on_batch"]),
        "tf_function_over_predict_on_batch_cpu": round(
            statistics.median(cpu["bare"]) / statistics.median(cpu["predict_on_batch"]), 3),
        "first_call_32_images_per_s_incl_tracing": round(cold, 2),
    }


def bench_spatial_extraction(num_images: int, rounds: int) -> dict:
    config = EncoderConfig("random", seed=0)
    kinds = {"pooled": (build_encoder(config), "float32"),
             "spatial": (build_encoder(config, spatial=True), "float16")}
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        items = write_images(folder / "images", photo_jpegs(num_images))
        runs, sizes = itertools.count(), {name: [] for name in kinds}

        def pipeline(name, items=items):  # files -> cache, a fresh cache each time
            encoder, dtype = kinds[name]
            report = extract_features(items, encoder, folder / f"cache-{next(runs)}",
                                      encoder_id="random-seed0", batch_size=BATCH,
                                      progress=False, feature_dtype=dtype)
            assert report.num_extracted == len(items), report
            sizes[name].append(report.bytes_per_image)

        for name in kinds:  # warm-up: trace each encoder and the decode graph once
            pipeline(name, items[:BATCH])
        wall, cpu = round_robin({name: (lambda name=name: pipeline(name)) for name in kinds},
                                rounds, warmup=0, desc="pooled vs spatial rounds")
    result = {"images": num_images, "batch_size": BATCH, "weights": "random-seed0",
              "rounds": rounds}
    for name in kinds:
        seconds = statistics.median(wall[name]) / num_images
        per_image = sizes[name][-1]  # the timed runs' caches (the warm-up's has fewer images)
        result[name] = {
            "storage": f"{kinds[name][1]} {list(kinds[name][0].output_shape[1:])}",
            "seconds_per_image": round(seconds, 4),
            "seconds_per_image_per_round": _rounded([w / num_images for w in wall[name]], 4),
            "cpu_seconds_per_image": round(statistics.median(cpu[name]) / num_images, 4),
            "bytes_per_image": round(per_image, 1),
            "flickr30k_gb": round(per_image * FLICKR30K_IMAGES / 1e9, 3),
            "flickr30k_hours": round(seconds * FLICKR30K_IMAGES / 3600, 2),
        }
    ratios = [s / p for s, p in zip(wall["spatial"], wall["pooled"])]
    result["spatial_over_pooled_seconds_per_round"] = _rounded(ratios, 3)
    result["spatial_over_pooled_cpu_seconds"] = round(
        statistics.median(cpu["spatial"]) / statistics.median(cpu["pooled"]), 3)
    result["spatial_over_pooled_bytes"] = round(
        result["spatial"]["bytes_per_image"] / result["pooled"]["bytes_per_image"], 1)
    result["flickr30k_images"] = FLICKR30K_IMAGES
    return result


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
    features, rows, tokens = synthetic_captions(FLICKR_IMAGES, vocab_size=VOCAB)
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
    parser.add_argument("--skip-spatial", action="store_true")
    parser.add_argument("--skip-input-pipeline", action="store_true")
    parser.add_argument("--quick", action="store_true", help="64 images, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.rounds = 64, 2
    result = {"benchmark": "bench_data", "machine": machine()}
    if not args.skip_extraction:
        result["feature_extraction"] = bench_extraction(args.images, args.rounds)
    if not args.skip_spatial:
        result["spatial_extraction"] = bench_spatial_extraction(args.images, args.rounds)
    if not args.skip_input_pipeline:
        result["input_pipeline"] = bench_input_pipeline(args.rounds)
    report("bench_data", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
