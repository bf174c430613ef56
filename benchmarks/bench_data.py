"""Data-path benchmarks (one JSON object):

    python -m benchmarks.bench_data [--images 256] [--rounds 3] [--skip-extraction]
                                    [--skip-spatial] [--skip-input-pipeline] [--quick]

feature_extraction  files -> cache vs the bare encoder on the same images decoded in memory.
spatial_extraction  the same pipeline storing 7x7x2048 float16 maps vs pooled 2048 float32.
input_pipeline      training_dataset batches/s at Flickr30k scale vs one training step.
"""
import dataclasses
import itertools
import pathlib
import tempfile
import time

if __name__ == "__main__":  # a command: TensorFlow's start-up noise is hidden before anything loads it
    from data.quiet import quiet_command
    quiet_command()

import keras
import numpy as np
import tensorflow as tf

from benchmarks._synthetic import photo_jpegs, synthetic_captions
from benchmarks._timing import machine, median, paired, parse, report, round_robin, rounded
from data.feature_cache import FLICKR30K_IMAGES, encode_function, extract_features
from data.images import decode_one
from data.pipeline import PipelineConfig, training_dataset
from model.encoder import build_encoder
from model.settings import EncoderConfig

BATCH, VOCAB = 32, 20_013


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
        kinds["spatial"] = (build_encoder(config, "spatial"), "float16")
    with tempfile.TemporaryDirectory() as tmp:
        items = [(f"{i:05d}.jpg", pathlib.Path(tmp) / f"{i:05d}.jpg") for i in range(num_images)]
        for (_, path), data in zip(items, photo_jpegs(num_images)):
            path.write_bytes(data)
        runs, reports = itertools.count(), {name: [] for name in kinds}

        def pipeline(name, items=items):  # files -> cache, a fresh cache each time
            encoder, dtype = kinds[name]
            found = extract_features(items, encoder, pathlib.Path(tmp) / f"cache-{next(runs)}",
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
        for name in kinds:  # warm-up: trace each encoder and the decode graph once
            pipeline(name, items[:BATCH])
            reports[name].clear()
        tasks.update({name: (lambda name=name: pipeline(name)) for name in kinds})
        wall, cpu = round_robin(tasks, rounds, warmup=0, desc="extraction rounds")
    result = {}
    if bare:
        result["feature_extraction"] = {
            "images": num_images, "batch_size": BATCH, "rounds": rounds,
            "bare_encoder_images_per_s": round(num_images / median(wall["bare"]), 2),
            "pipeline_images_per_s": round(num_images / median(wall["pipeline"]), 2),
            "ratio_per_round": rounded(paired(wall, "bare", "pipeline")),
            "cpu_ratio_median": round(median(paired(cpu, "bare", "pipeline")), 3),
            "pipeline_input_wait_share_per_round": rounded(
                [r.input_wait_seconds / s for r, s in zip(reports["pipeline"], wall["pipeline"])])}
    if spatial:
        row = {"images": num_images, "batch_size": BATCH, "rounds": rounds}
        for name, key in (("pipeline", "pooled"), ("spatial", "spatial")):
            seconds, per_image = median(wall[name]) / num_images, reports[name][-1].bytes_per_image
            row[key] = {"storage": f"{kinds[name][1]} {list(kinds[name][0].output_shape[1:])}",
                        "seconds_per_image": round(seconds, 4),
                        "bytes_per_image": round(per_image, 1),
                        "flickr30k_gb": round(per_image * FLICKR30K_IMAGES / 1e9, 3),
                        "flickr30k_hours": round(seconds * FLICKR30K_IMAGES / 3600, 2)}
        row["spatial_over_pooled_seconds_per_round"] = rounded(paired(wall, "spatial", "pipeline"))
        row["spatial_over_pooled_cpu_seconds"] = round(
            median(cpu["spatial"]) / median(cpu["pipeline"]), 3)
        result["spatial_extraction"] = row
    return result


def train_step_seconds(model, tokens, targets) -> float:
    model.train_on_batch(tokens, targets)  # traces this width first
    started = time.perf_counter()
    model.train_on_batch(tokens, targets)
    return time.perf_counter() - started


def bench_input_pipeline(rounds: int) -> dict:
    """Each round is one full epoch of training_dataset (29,000 images x 5 synthetic captions),
    beside the step of a plain Embedding + LSTM(512) + Dense(20013) model: the headroom."""
    features, rows, tokens = synthetic_captions(29_000, vocab_size=VOCAB)
    dataset = training_dataset(features, rows, tokens, PipelineConfig(batch_size=128))
    per_second = []
    for _ in range(rounds):
        started = time.perf_counter()
        per_second.append(sum(1 for _ in dataset) / (time.perf_counter() - started))
    inputs = keras.Input((None,), dtype="int32")
    hidden = keras.layers.LSTM(512, return_sequences=True)(
        keras.layers.Embedding(VOCAB, 256, mask_zero=True)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(VOCAB)(hidden))
    model.compile(keras.optimizers.Adam(1e-3), jit_compile=False,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    samples = [batch for batch, _ in zip(dataset, range(6))]
    for inputs, targets in samples[:3]:  # warm-up, including one trace per width
        model.train_on_batch(inputs["tokens"], targets)
    step = median(train_step_seconds(model, inputs["tokens"], targets)
                  for inputs, targets in samples[3:])
    padded = tf.zeros([128, 80], tf.int32)
    return {"captions": len(tokens), "batch_size": 128,
            "pipeline_batches_per_s": round(median(per_second), 1),
            "train_step_seconds_median": round(step, 3),
            "headroom_ratio": round(median(per_second) * step, 1),
            "padding_to_80_slowdown": round(train_step_seconds(model, padded, padded) / step, 2)}


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
