"""Data-path benchmarks (one JSON object):

    python -m benchmarks.bench_data [--images 256] [--rounds 3] [--skip-extraction]
                                    [--skip-spatial] [--skip-input-pipeline] [--quick]

feature_extraction  files -> cache (read, decode, ResNet50, shards) vs the bare encoder on the same
                    images decoded in memory: images/s and images per CPU-second, target >= 0.9.
spatial_extraction  the same pipeline storing 7x7x2048 float16 maps vs pooled 2048 float32:
                    seconds and bytes per image, projected to Flickr30k's 31,783 images.
input_pipeline      training_dataset batches/s at Flickr30k scale vs one training step of a plain
                    Embedding + LSTM(512) + Dense(20013) model: the headroom.
"""
import dataclasses
import itertools
import pathlib
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from benchmarks._synthetic import photo_jpegs, synthetic_captions
from benchmarks._timing import (machine, median, paired, parse, report, round_robin,
                                rounded)
from data.feature_cache import FLICKR30K_IMAGES, encode_function, extract_features
from data.images import decode_one
from data.pipeline import PipelineConfig, training_dataset
from model.encoder import EncoderConfig, build_encoder

BATCH = 32
FLICKR_IMAGES, VOCAB = 29_000, 20_013


@dataclasses.dataclass
class DataBenchConfig:
    images: int = 256
    rounds: int = 3
    skip_extraction: bool = False
    skip_spatial: bool = False
    skip_input_pipeline: bool = False


def bench_extraction(num_images: int, rounds: int, bare: bool, spatial: bool) -> dict:
    """{feature_extraction, spatial_extraction}: one round robin of the bare encoder, the pooled
    files -> cache pipeline and the spatial one (neighbours are the compared pairs)."""
    config = EncoderConfig("random", seed=0)
    kinds = {"pipeline": (build_encoder(config), "float32")}
    if spatial:
        kinds["spatial"] = (build_encoder(config, spatial=True), "float16")
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp) / "images"
        folder.mkdir()
        items = []
        for i, data in enumerate(photo_jpegs(num_images)):
            (folder / f"{i:05d}.jpg").write_bytes(data)
            items.append((f"{i:05d}.jpg", folder / f"{i:05d}.jpg"))
        runs, reports = itertools.count(), {name: [] for name in kinds}

        def pipeline(name, items=items):  # files -> cache, a fresh cache each time
            encoder, dtype = kinds[name]
            found = extract_features(items, encoder, folder.parent / f"cache-{next(runs)}",
                                     encoder_id="random-seed0", batch_size=BATCH,
                                     progress=False, feature_dtype=dtype)
            assert found.num_extracted == len(items), found
            reports[name].append(found)

        tasks = {}
        if bare:
            encode = encode_function(kinds["pipeline"][0])  # the very function the pipeline calls
            images = tf.stack([decode_one(tf.io.read_file(str(p)))[0] for _, p in items])
            tasks["bare"] = lambda: [np.asarray(encode(images[i:i + BATCH]))
                                     for i in range(0, num_images, BATCH)]
        cold = {}  # warm-up: trace each encoder and the decode graph once
        for name in kinds:
            started = time.perf_counter()
            pipeline(name, items[:BATCH])
            cold[name] = BATCH / (time.perf_counter() - started)
            reports[name].clear()
        tasks.update({name: (lambda name=name: pipeline(name)) for name in kinds})
        wall, cpu = round_robin(tasks, rounds, warmup=0, desc="extraction rounds")
        mean_kb = np.mean([p.stat().st_size for _, p in items]) / 1024
    result = {}
    if bare:
        rate = {k: [num_images / s for s in v] for k, v in wall.items()}
        cpu_rate = {k: [num_images / s for s in v] for k, v in cpu.items()}
        ratios, cpu_ratios = paired(wall, "bare", "pipeline"), paired(cpu, "bare", "pipeline")
        result["feature_extraction"] = {
            "images": num_images, "image_size": "500x375 JPEG", "mean_file_kb": round(mean_kb, 1),
            "batch_size": BATCH, "weights": "random-seed0", "rounds": rounds,
            "bare_encoder_images_per_s": rounded(rate["bare"], 2),
            "pipeline_images_per_s": rounded(rate["pipeline"], 2),
            "ratio_per_round": rounded(ratios), "ratio_median": round(median(ratios), 3),
            "target": 0.9,
            "bare_encoder_images_per_cpu_s": rounded(cpu_rate["bare"], 2),
            "pipeline_images_per_cpu_s": rounded(cpu_rate["pipeline"], 2),
            "cpu_ratio_per_round": rounded(cpu_ratios),
            "cpu_ratio_median": round(median(cpu_ratios), 3),
            # CPU seconds per wall second: ~os.cpu_count() when the machine is ours alone
            "cores_used_per_round": {k: rounded([c / w for c, w in zip(cpu[k], wall[k])], 2)
                                     for k in wall},
            "pipeline_input_wait_share_per_round": rounded(
                [r.input_wait_seconds / s for r, s in zip(reports["pipeline"], wall["pipeline"])]),
            "first_call_32_images_per_s_incl_tracing": round(cold["pipeline"], 2),
        }
    if spatial:
        row = {"images": num_images, "batch_size": BATCH, "weights": "random-seed0",
               "rounds": rounds}
        for name, key in (("pipeline", "pooled"), ("spatial", "spatial")):
            seconds, per_image = median(wall[name]) / num_images, reports[name][-1].bytes_per_image
            row[key] = {
                "storage": f"{kinds[name][1]} {list(kinds[name][0].output_shape[1:])}",
                "seconds_per_image": round(seconds, 4),
                "seconds_per_image_per_round": rounded([w / num_images for w in wall[name]], 4),
                "cpu_seconds_per_image": round(median(cpu[name]) / num_images, 4),
                "bytes_per_image": round(per_image, 1),
                "flickr30k_gb": round(per_image * FLICKR30K_IMAGES / 1e9, 3),
                "flickr30k_hours": round(seconds * FLICKR30K_IMAGES / 3600, 2)}
        row["spatial_over_pooled_seconds_per_round"] = rounded(paired(wall, "spatial", "pipeline"))
        row["spatial_over_pooled_cpu_seconds"] = round(
            median(cpu["spatial"]) / median(cpu["pipeline"]), 3)
        row["spatial_over_pooled_bytes"] = round(
            row["spatial"]["bytes_per_image"] / row["pooled"]["bytes_per_image"], 1)
        row["flickr30k_images"] = FLICKR30K_IMAGES
        result["spatial_extraction"] = row
    return result


def train_step_seconds(model, tokens, targets) -> float:
    model.train_on_batch(tokens, targets)  # traces this width first
    started = time.perf_counter()
    model.train_on_batch(tokens, targets)
    return time.perf_counter() - started


def bench_input_pipeline(rounds: int) -> dict:
    """Each round is one full epoch of training_dataset (29,000 images x 5 synthetic captions)."""
    features, rows, tokens = synthetic_captions(FLICKR_IMAGES, vocab_size=VOCAB)
    started = time.perf_counter()
    dataset = training_dataset(features, rows, tokens, PipelineConfig(batch_size=128))
    build_seconds = time.perf_counter() - started
    widths, per_second = [], []
    for _ in range(rounds):
        started, count = time.perf_counter(), 0
        for inputs, targets in dataset:
            count += 1
            widths.append(int(targets.shape[1]))
        per_second.append(count / (time.perf_counter() - started))
    inputs = keras.Input((None,), dtype="int32")
    hidden = keras.layers.LSTM(512, return_sequences=True)(
        keras.layers.Embedding(VOCAB, 256, mask_zero=True)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(VOCAB)(hidden))
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=False,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    samples = [batch for batch, _ in zip(dataset, range(6))]
    for inputs, targets in samples[:3]:  # warm-up, including one trace per width
        model.train_on_batch(inputs["tokens"], targets)
    steps = [train_step_seconds(model, inputs["tokens"], targets) for inputs, targets in samples[3:]]
    padded = tf.zeros([128, 80], tf.int32)
    padded_step, step, batches_per_s = (train_step_seconds(model, padded, padded), median(steps),
                                        median(per_second))
    return {
        "captions": len(tokens), "images": FLICKR_IMAGES, "batch_size": 128,
        "mean_tokens_per_caption": round(float(np.mean([len(t) for t in tokens])), 2),
        "mean_batch_width": round(float(np.mean(widths)), 2),
        "mean_caption_steps": round(float(np.mean([len(t) - 1 for t in tokens])), 2),
        "build_seconds": round(build_seconds, 2),
        "pipeline_batches_per_s_per_epoch": rounded(per_second, 2),
        "pipeline_batches_per_s": round(batches_per_s, 1),
        "train_step_seconds": rounded(steps), "train_step_seconds_median": round(step, 3),
        "headroom_ratio": round(batches_per_s * step, 1),
        "train_step_seconds_padded_to_80": round(padded_step, 3),
        "padding_to_80_slowdown": round(padded_step / step, 2),
    }


def main(argv=None):
    config = parse(__doc__, DataBenchConfig, {"images": 64, "rounds": 2}, argv)[0]
    result = {"benchmark": "bench_data", "machine": machine(), "settings": dataclasses.asdict(config)}
    if not (config.skip_extraction and config.skip_spatial):
        result.update(bench_extraction(config.images, config.rounds, not config.skip_extraction,
                                       not config.skip_spatial))
    if not config.skip_input_pipeline:
        result["input_pipeline"] = bench_input_pipeline(config.rounds)
    report("bench_data", result)


if __name__ == "__main__":
    main()
