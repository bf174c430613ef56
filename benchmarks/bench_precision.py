"""float32 vs 16-bit arithmetic, every comparison inside one run (JSON; docs/precision.md):

    python -m benchmarks.bench_precision           # the demo's built-in data; run time: docs/benchmarks.md
    python -m benchmarks.bench_precision --quick   # 300 images (bench_export's model)
    python -m benchmarks.bench_precision --parts serving exports attribution training

serving: the server's --mixed_precision=bfloat16 session rewrite vs float32; exports: the
float16/bfloat16 exports' captions; attribution: one part at a time in bfloat16; training:
mixed_bfloat16 captions/s and best validation loss.
"""
import dataclasses
import json
import multiprocessing
import time
from pathlib import Path

# A command (and the training child it spawns, which runs this file as __mp_main__): TensorFlow's
# start-up noise is hidden before anything loads it.
if __name__ in ("__main__", "__mp_main__"):
    from data.quiet import quiet_command
    quiet_command()

import numpy as np

from benchmarks._synthetic import photo_jpegs
from benchmarks._timing import latency, machine, median, paired, parse, report, round_robin, rounded
from benchmarks._trained_model import BenchmarkModelConfig, ensure_benchmark_model, train_benchmark_run
from benchmarks.bench_train import TrainBenchConfig, quantile_batches, seed_model, train_steps
from data.sources import open_dataset
from data.splits import split_dataset
from export.artifact import SessionModel, latest_version, session_config
from export.precision import mixed_policy
from export.saved_model import ExportConfig, export_run
from model.metrics import caption_scores

PARTS = ("serving", "exports", "attribution", "training")


@dataclasses.dataclass
class PrecisionBenchConfig:
    num_images: int = 1500     # the demo's built-in dataset (1,200 / 150 / 150)
    epochs: int = 12           # the demo's
    batch_size: int = 128      # the pooled preset's
    serving_batch: int = 32
    repeats: int = 5           # round-robin repetitions at batch 32
    latency_calls: int = 30    # per mode, alternating
    train_images: int = 29_000  # synthetic captions for training_speed (x5 captions)
    train_batches: int = 6     # bucketed batches per repetition and mode
    train_repeats: int = 3
    workdir: str = "benchmarks/work/precision"


QUICK = dict(num_images=300, epochs=10, batch_size=64, repeats=2, latency_calls=10,
             train_images=5_800, train_batches=3, train_repeats=2, workdir="benchmarks/work")


def greedy_captions(model: SessionModel, images, batch: int) -> list[str]:
    results = [r for start in range(0, len(images), batch) for r in model.caption(
        [i.path.read_bytes() for i in images[start:start + batch]])]
    assert all(r.ok for r in results), [r.error for r in results]
    return [r.caption for r in results]


def quality(images, captions: list[str], float32_captions: list[str] | None = None) -> dict:
    """BLEU-4 and CIDEr-D against the references; the share of captions identical to float32's."""
    scores = caption_scores([list(i.captions) for i in images], captions)
    row = {"bleu4": round(scores["bleu4"], 4), "cider_d": round(scores["cider_d"], 4),
           "images": len(images)}
    if float32_captions is not None:
        row["identical_to_float32"] = round(float(np.mean(
            [a == b for a, b in zip(captions, float32_captions)])), 4)
    return row


def bench_server_bfloat16(version_dir: Path, images, config: PrecisionBenchConfig) -> dict:
    models = {"float32": SessionModel(version_dir, session_config("")),
              "server_bfloat16": SessionModel(version_dir, session_config("bfloat16"))}
    photos = photo_jpegs(config.serving_batch)  # bench_export's Flickr-sized JPEGs
    times = round_robin({name: (lambda m=m: m.caption(photos)) for name, m in models.items()},
                        config.repeats, warmup=2)[0]
    speedups = paired(times, "float32", "server_bfloat16")
    captions = {name: greedy_captions(m, images, config.serving_batch) for name, m in models.items()}
    result = {
        "images_per_s_batch32": {k: round(config.serving_batch / median(t), 2)
                                 for k, t in times.items()},
        "speedup_batch32": round(median(speedups), 3),  # of paired float32 / bfloat16 times
        "speedup_per_repetition": rounded(speedups),
        "batch1": latency({name: (lambda image, m=m: m.caption([image]))
                           for name, m in models.items()}, photos, config.latency_calls),
        "test_split": {name: quality(images, c, captions["float32"]) for name, c in captions.items()}}
    for model in models.values():
        model.close()
    return result


def bench_exports(run_dir: Path, float32_dir: Path, work: Path, images,
                  config: PrecisionBenchConfig) -> dict:
    dirs = {"float32": float32_dir}
    for precision in ("float16", "bfloat16"):
        base = work / "models" / f"captioner-{precision}"
        if not base.is_dir() or not any(p.name.isdigit() for p in base.iterdir()):
            export_run(run_dir, base, "auto", ExportConfig(precision=precision))
        dirs[precision] = latest_version(base)
    captions, elapsed = {}, {}
    for precision, version_dir in dirs.items():
        model, started = SessionModel(version_dir), time.perf_counter()
        captions[precision] = greedy_captions(model, images, config.serving_batch)
        elapsed[precision] = round(time.perf_counter() - started, 1)
        model.close()
    return {precision: {**quality(images, c, captions["float32"]),
                        "seconds_for_test_split": elapsed[precision], "export": str(dirs[precision])}
            for precision, c in captions.items()}


def bench_attribution(run_dir: Path, images) -> dict:
    """Greedy captions in process with one part in bfloat16 at a time: the ResNet50 trunk (float32
    pooling), the decoder (LSTM state and gates), or the logits rounded to bfloat16 before the
    log-softmax (what the server's rewrite does to them)."""
    import types

    import tensorflow as tf

    from data.images import decode_batch
    from export.precision import build_export_encoder, load_export_captioner
    from model.encoder import build_encoder
    from model.decoding import caption_features
    from model.run_dir import load_run

    run = load_run(run_dir)
    pixels, _ = decode_batch(tf.constant([i.path.read_bytes() for i in images]))
    encoders = {"float32": build_encoder(run.encoder_config),
                "bfloat16": build_export_encoder(run.encoder_config, "bfloat16")}
    features = {p: np.concatenate([np.asarray(e.predict_on_batch(pixels[s:s + 32]), np.float32)
                                   for s in range(0, len(images), 32)])
                for p, e in encoders.items()}
    decoders = {p: load_export_captioner(run, p) for p in ("float32", "bfloat16")}

    def rounded_logits_step(tokens, state):
        logits, state = decoders["float32"].step(tokens, state)
        return tf.cast(tf.cast(logits, tf.bfloat16), tf.float32), state

    rounded_logits = types.SimpleNamespace(initial_state=decoders["float32"].initial_state,
                                           step=rounded_logits_step)
    variants = {"all_float32": ("float32", decoders["float32"]),
                "bf16_resnet50_trunk": ("bfloat16", decoders["float32"]),
                "bf16_decoder_lstm_state": ("float32", decoders["bfloat16"]),
                "bf16_rounded_logits_before_log_softmax": ("float32", rounded_logits),
                "bf16_all_but_logits": ("bfloat16", decoders["bfloat16"])}
    captions = {name: caption_features(decoder, run.vocabulary.tokens, features[f],
                                       run.decode_config, "greedy", progress=False)[0]
                for name, (f, decoder) in variants.items()}
    norm = decoders["float32"].feature_norm  # standardised as the captioner sees them
    mean, std = np.asarray(norm.mean), np.asarray(norm.std)
    z = {p: ((f - mean) / std)[:, std > 1e-5] for p, f in features.items()}  # features that vary
    return {"identical_to_all_float32": {
                name: round(float(np.mean([a == b for a, b in zip(c, captions["all_float32"])])), 4)
                for name, c in captions.items()},
            "bleu4": {name: round(caption_scores([list(i.captions) for i in images], c)["bleu4"], 4)
                      for name, c in captions.items()},
            "feature_rms_error_in_std_units_bf16_trunk": round(float(np.sqrt(np.mean(
                (z["bfloat16"] - z["float32"]) ** 2))), 4)}


def bench_training_speed(config: PrecisionBenchConfig) -> dict:
    bench = TrainBenchConfig(images=config.train_images, repeats=config.train_repeats)
    batches = quantile_batches(bench, config.train_batches)[0]
    models = {"float32": seed_model(bench.vocab_size)}
    with mixed_policy("bfloat16"):  # layers keep the policy they were built with
        models["mixed_bfloat16"] = seed_model(bench.vocab_size)
    # The warm-up also traces the [None, None] step every later batch shape reuses.
    times = round_robin({name: train_steps(model, batches) for name, model in models.items()},
                        config.train_repeats, desc="training repeats")[0]
    captions = sum(int(t.shape[0]) for _, t in batches)
    speedups = paired(times, "float32", "mixed_bfloat16")
    return {"shapes": {"vocab_size": bench.vocab_size, "batch_size": bench.batch_size,
                       "batch_steps": [int(t.shape[1]) for _, t in batches]},
            "captions_per_s": {name: round(captions / median(t), 2) for name, t in times.items()},
            "speedup": round(median(speedups), 3), "speedup_per_repeat": rounded(speedups)}


def bench_training_quality(run_dir: Path, model: BenchmarkModelConfig) -> dict:
    """The benchmark run again with mixed_bfloat16, in its own process (the policy is global)."""
    work, name = run_dir.parent, "run-bfloat16"
    if not (work / name / "summary.json").is_file():
        child = multiprocessing.get_context("spawn").Process(
            target=train_benchmark_run, args=(work, model, name),
            kwargs={"mixed_precision": "bfloat16"})
        child.start()
        child.join()
        if child.exitcode:
            raise RuntimeError(f"training {work / name} failed (exit code {child.exitcode})")
    summaries = {"float32": json.loads((run_dir / "summary.json").read_text()),
                 "mixed_bfloat16": json.loads((work / name / "summary.json").read_text())}
    loss = {name: s["best_val_loss"] for name, s in summaries.items()}
    return {"best_val_loss": loss,
            "relative_difference": round(loss["mixed_bfloat16"] / loss["float32"] - 1, 4)}


def run_benchmark(config: PrecisionBenchConfig, parts) -> dict:
    model = BenchmarkModelConfig(config.num_images, config.epochs, config.batch_size)
    run_dir, model_base = ensure_benchmark_model(config.workdir, model)
    version_dir = latest_version(model_base)
    images = split_dataset(open_dataset(run_dir.parent / "data"))["test"]
    result = {"benchmark": "bench_precision", "machine": machine(),
              "config": dataclasses.asdict(config), "model": str(version_dir),
              "test_images": len(images)}
    if "serving" in parts:
        result["server_bfloat16"] = bench_server_bfloat16(version_dir, images, config)
    if "exports" in parts:
        result["exports_16bit"] = bench_exports(run_dir, version_dir, run_dir.parent, images, config)
    if "attribution" in parts:
        result["attribution"] = bench_attribution(run_dir, images)
    if "training" in parts:
        result["training_speed"] = bench_training_speed(config)
        result["training_quality"] = bench_training_quality(run_dir, model)
    return result


def main(argv=None):
    config, args = parse(__doc__, PrecisionBenchConfig, QUICK, argv,
                         parts={"nargs": "+", "default": list(PARTS), "choices": PARTS})
    name = "bench_precision" + ("_quick" if args.quick else "") + \
        ("" if set(args.parts) == set(PARTS) else "_" + "_".join(args.parts))
    report(name, run_benchmark(config, set(args.parts)))


if __name__ == "__main__":
    main()
