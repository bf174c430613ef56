"""float32 vs 16-bit arithmetic, every comparison inside one run (JSON):

    python benchmarks/bench_precision.py           # the demo's built-in data (1,500 images, 12
                                                   # epochs): ~30 min on 2 shared cores the first
                                                   # time (features, two trainings, three exports)
    python benchmarks/bench_precision.py --quick   # 300 images, fewer repetitions: ~10 min

Prints one JSON object and writes it to benchmarks/results/bench_precision[_quick].json.

  cpu               model name and the flags that matter (amx_bf16, avx512_bf16, amx_tile, ...):
                    bfloat16 is fast only where the hardware has them.
  server_bfloat16   the float32 export through TF Serving's session path, plain vs the rewrite of
                    `tensorflow_model_server --mixed_precision=bfloat16`
                    (export.precision.session_config): images/s at batch 32 (round-robin
                    repetitions, bench_export's images and timer), batch-1 median/p95 (calls
                    alternating between the two sessions), and on the built-in test split
                    BLEU-4 / CIDEr-D of both and the share of identical greedy captions.
  exports_16bit     `--precision float16|bfloat16` exports vs the float32 export (plain session):
                    greedy captions on the test split, agreement share, BLEU-4, CIDEr-D.
                    Correctness only: float16 kernels are slow on a CPU.
  attribution       which part of the graph changes captions in bfloat16: greedy captions with
                    only the ResNet50 trunk, only the decoder, only the logits (rounded) in
                    bfloat16, vs all float32 (in-process, same weights).
  training_speed    float32 vs mixed_bfloat16 train_on_batch captions/s at the seed preset's
                    shapes (V 20,013, batch 128, bench_train's synthetic Flickr-like captions,
                    bucketed batches at length quantiles), the two models alternating.
  training_quality  the built-in data trained in float32 and with --mixed-precision bfloat16, same
                    settings and seed: best validation loss of each.
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks._synthetic import photo_jpegs, synthetic_captions  # noqa: E402
from benchmarks._timing import machine, report, round_robin  # noqa: E402
from benchmarks._trained_model import BenchmarkModelConfig, ensure_benchmark_model  # noqa: E402
from benchmarks.bench_export import ExportBenchConfig, median, ms, percentile  # noqa: E402
from benchmarks.bench_train import (TrainBenchConfig, batch_shapes, seed_model,  # noqa: E402
                                    take_batches, train_steps)
from data.pipeline import PipelineConfig, training_dataset  # noqa: E402
from data.sources import open_dataset  # noqa: E402
from data.splits import split_dataset  # noqa: E402
from export.inspect import SessionModel, latest_version  # noqa: E402
from export.precision import mixed_policy, session_config  # noqa: E402
from export.saved_model import ExportConfig, export_run  # noqa: E402
from model.metrics import caption_scores  # noqa: E402


@dataclasses.dataclass
class PrecisionBenchConfig:
    num_images: int = 1500     # the demo's built-in dataset (1,200 / 150 / 150)
    epochs: int = 12           # the demo's
    batch_size: int = 128      # the default preset's
    serving_batch: int = 32
    repeats: int = 5           # round-robin repetitions at batch 32
    latency_calls: int = 30    # per mode, alternating
    train_images: int = 29_000  # synthetic captions for training_speed (x5 captions)
    train_batches: int = 6     # bucketed batches per repetition and mode
    train_repeats: int = 3
    workdir: str = "benchmarks/work/precision"

    @classmethod
    def quick(cls):
        return cls(num_images=300, epochs=10, batch_size=64, repeats=2, latency_calls=10,
                   train_images=5_800, train_batches=3, train_repeats=2,
                   workdir="benchmarks/work")  # bench_export's model, reused


def seconds(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


# ---- captions on the built-in test split --------------------------------------------------------

def test_split(data_dir: Path):
    return split_dataset(open_dataset(data_dir))["test"]


def greedy_captions(model: SessionModel, images, batch: int) -> list[str]:
    captions = []
    for start in range(0, len(images), batch):
        chunk = np.array([i.path.read_bytes() for i in images[start:start + batch]], dtype=object)
        out = model.run("serving_default", {"image_bytes": chunk})
        assert not any(out["error"]), out["error"]
        captions += [c.decode() for c in out["caption"]]
    return captions


def quality(images, captions: list[str], reference_captions: list[str] | None = None) -> dict:
    """BLEU-4 and CIDEr-D against the dataset's references; with `reference_captions` (float32's
    greedy captions) also the share of identical captions."""
    scores = caption_scores([list(i.captions) for i in images], captions)
    row = {"bleu4": round(scores["bleu4"], 4), "cider_d": round(scores["cider_d"], 4),
           "images": len(images)}
    if reference_captions is not None:
        same = [a == b for a, b in zip(captions, reference_captions)]
        row["identical_to_float32"] = round(float(np.mean(same)), 4)
        row["differing_examples"] = [[a, b] for a, b in zip(captions, reference_captions)
                                     if a != b][:3]
    return row


# ---- (a) the server's bfloat16 mode -------------------------------------------------------------

SERVING_MODES = {"float32": "", "server_bfloat16": "bfloat16"}


def batch1_latency(models: dict, images: list[bytes], calls: int) -> dict:
    """One image per call, the modes alternating call by call (so load hits both alike)."""
    arrays = [np.array([image], dtype=object) for image in images]
    times = {name: [] for name in models}
    for i in tqdm(range(calls), desc="batch-1 latency", file=sys.stderr):
        order = list(models) if i % 2 == 0 else list(models)[::-1]
        for name in order:
            a = arrays[i % len(arrays)]
            times[name].append(seconds(lambda: models[name].run("serving_default",
                                                                {"image_bytes": a})))
    return {name: {"median_ms": ms(median(t)), "p95_ms": ms(percentile(t, 95))}
            for name, t in times.items()}


def bench_server_bfloat16(version_dir: Path, images, config: PrecisionBenchConfig) -> dict:
    models = {name: SessionModel(version_dir, session_config(mode))
              for name, mode in SERVING_MODES.items()}
    photo = ExportBenchConfig()  # bench_export's Flickr-sized photo-like JPEGs
    photos = photo_jpegs(config.serving_batch, photo.width, photo.height, photo.jpeg_quality, photo.seed)
    batch = np.array(photos, dtype=object)
    times = round_robin({name: (lambda m=m: m.run("serving_default", {"image_bytes": batch}))
                         for name, m in models.items()}, config.repeats, warmup=2)[0]
    paired = [f / b for f, b in zip(times["float32"], times["server_bfloat16"])]
    throughput = {name: round(config.serving_batch / median(t), 2) for name, t in times.items()}
    captions = {name: greedy_captions(m, images, config.serving_batch)
                for name, m in models.items()}
    result = {
        "images_per_s_batch32": throughput,
        "seconds_per_batch32_all_repeats": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "speedup_batch32": round(median(paired), 3),
        "speedup_how": "median over repetitions of float32 time / bfloat16 time, back to back",
        "speedup_per_repetition": [round(r, 3) for r in paired],
        "batch1": batch1_latency(models, photos, config.latency_calls),
        "test_split": {name: quality(images, c, captions["float32"])
                       for name, c in captions.items()},
    }
    result["target"] = ">= 1.8x at batch 32 with BLEU-4 within 0.01 of float32 (AMX-BF16 CPU)"
    result["target_met"] = bool(
        result["speedup_batch32"] >= 1.8 and abs(result["test_split"]["server_bfloat16"]["bleu4"]
                                                - result["test_split"]["float32"]["bleu4"]) <= 0.01)
    for model in models.values():
        model.close()
    return result


# ---- (c) 16-bit exports -------------------------------------------------------------------------

def export_16bit(run_dir: Path, work: Path, precision: str) -> Path:
    base = work / "models" / f"captioner-{precision}"
    if not base.is_dir() or not any(p.name.isdigit() for p in base.iterdir()):
        export_run(run_dir, base, "auto", ExportConfig(precision=precision))
    return latest_version(base)


def bench_exports(run_dir: Path, float32_dir: Path, work: Path, images,
                  config: PrecisionBenchConfig) -> dict:
    dirs = {"float32": float32_dir, **{p: export_16bit(run_dir, work, p)
                                       for p in ("float16", "bfloat16")}}
    captions, elapsed = {}, {}
    for precision, version_dir in dirs.items():
        model = SessionModel(version_dir)
        started = time.perf_counter()
        captions[precision] = greedy_captions(model, images, config.serving_batch)
        elapsed[precision] = round(time.perf_counter() - started, 1)
        model.close()
    return {precision: {**quality(images, c, captions["float32"]),
                        "seconds_for_test_split": elapsed[precision],
                        "export": str(dirs[precision])}
            for precision, c in captions.items()}


# ---- (d) where 16-bit arithmetic changes captions ------------------------------------------------

def bench_attribution(run_dir: Path, images) -> dict:
    """In-process greedy captions with one part of the graph in bfloat16 at a time, compared with
    all-float32: the ResNet50 trunk (float32 pooling), the decoder (LSTM state and gates), and
    the logits rounded to bfloat16 before the log-softmax (what the server's rewrite does to it)."""
    import types

    import tensorflow as tf

    from data.images import decode_batch
    from export.precision import build_export_encoder, load_export_captioner
    from model.encoder import build_encoder
    from model.evaluate import caption_features
    from model.run_dir import load_run

    run = load_run(run_dir)
    pixels, _ = decode_batch(tf.constant([i.path.read_bytes() for i in images]))
    features = {p: np.concatenate([np.asarray(encoder.predict_on_batch(pixels[s:s + 32]),
                                              np.float32) for s in range(0, len(images), 32)])
                for p, encoder in (("float32", build_encoder(run.encoder_config)),
                                   ("bfloat16", build_export_encoder(run.encoder_config,
                                                                     "bfloat16")))}
    decoders = {p: load_export_captioner(run, p) for p in ("float32", "bfloat16")}

    def rounded_logits_step(tokens, state):
        logits, state = decoders["float32"].step(tokens, state)
        return tf.cast(tf.cast(logits, tf.bfloat16), tf.float32), state

    rounded = types.SimpleNamespace(initial_state=decoders["float32"].initial_state,
                                    step=rounded_logits_step)
    variants = {"all_float32": ("float32", decoders["float32"]),
                "bf16_resnet50_trunk": ("bfloat16", decoders["float32"]),
                "bf16_decoder_lstm_state": ("float32", decoders["bfloat16"]),
                "bf16_rounded_logits_before_log_softmax": ("float32", rounded),
                "bf16_all_but_logits": ("bfloat16", decoders["bfloat16"])}
    captions = {name: caption_features(decoder, run.vocabulary.tokens, features[f],
                                       run.decode_config, "greedy", progress=False)[0]
                for name, (f, decoder) in variants.items()}
    # Standardised as the captioner sees them (the training set's mean and std).
    norm = decoders["float32"].feature_norm
    mean, std = np.asarray(norm.mean), np.asarray(norm.std)
    live = std > 1e-5  # features that vary at all
    z = {p: (f - mean) / std for p, f in features.items()}
    return {"identical_to_all_float32": {
                name: round(float(np.mean([a == b for a, b in zip(c, captions["all_float32"])])), 4)
                for name, c in captions.items()},
            "bleu4": {name: round(caption_scores([list(i.captions) for i in images], c)["bleu4"], 4)
                      for name, c in captions.items()},
            "feature_rms_error_in_std_units_bf16_trunk": round(float(np.sqrt(np.mean(
                (z["bfloat16"] - z["float32"])[:, live] ** 2))), 4),
            "between_image_share_of_feature_energy": round(float(
                features["float32"].var(0).sum() / (features["float32"] ** 2).mean(0).sum()), 5)}


# ---- (b) training -------------------------------------------------------------------------------

def quantile_batches(config: TrainBenchConfig, count: int):
    """`count` full bucketed batches at evenly spaced quantiles of an epoch's padded lengths."""
    features, rows, tokens = synthetic_captions(config.images, config.captions_per_image,
                                                config.vocab_size, config.mean_words, config.seed)
    pipeline = PipelineConfig(batch_size=config.batch_size, seed=config.seed)
    shapes = batch_shapes(rows, tokens, pipeline, config.images)
    full = sorted((t, i) for i, (b, t) in enumerate(shapes) if b == config.batch_size)
    picked = [full[int((j + 0.5) * len(full) / count)][1] for j in range(count)]
    return take_batches(training_dataset(features, rows, tokens, pipeline), picked)


def bench_training_speed(config: PrecisionBenchConfig) -> dict:
    bench = TrainBenchConfig(images=config.train_images, repeats=config.train_repeats)
    batches = quantile_batches(bench, config.train_batches)
    models = {"float32": seed_model(bench.vocab_size)[0]}
    with mixed_policy("bfloat16"):  # layers keep the policy they were built with
        models["mixed_bfloat16"] = seed_model(bench.vocab_size)[0]
    for model in models.values():  # trace the [None, None] step before timing
        for inputs, targets in (batches[0], batches[-1]):
            model.train_on_batch(inputs, targets)
    times = round_robin({name: train_steps(model, batches) for name, model in models.items()},
                        config.train_repeats, warmup=0, desc="training repeats")[0]
    captions = sum(int(t.shape[0]) for _, t in batches)
    bf16 = models["mixed_bfloat16"]
    paired = [f / b for f, b in zip(times["float32"], times["mixed_bfloat16"])]
    return {
        "shapes": {"vocab_size": bench.vocab_size, "batch_size": bench.batch_size,
                   "batch_steps": [int(t.shape[1]) for _, t in batches]},
        "captions_per_s": {name: round(captions / median(t), 2) for name, t in times.items()},
        "seconds_per_repeat": {k: [round(s, 3) for s in v] for k, v in times.items()},
        "speedup": round(median(paired), 3),
        "speedup_per_repeat": [round(r, 3) for r in paired],
        "target": ">= 1.5x captions/s (AMX-BF16 CPU)",
        "target_met": bool(median(paired) >= 1.5),
        "mixed_bfloat16_checks": {
            "lstm_compute_dtype": bf16.lstm.compute_dtype,
            "logits_projection_compute_dtype": bf16.to_logits.compute_dtype,
            "logits_dtype": bf16(batches[0][0]).dtype.name,  # cast up before softmax/loss
            "variables_dtype": bf16.lstm.cell.kernel.dtype,
            "optimizer": type(bf16.optimizer).__name__,  # no LossScaleOptimizer for bfloat16
        },
    }


def train_cli(data: Path, cache: Path, run_dir: Path, model: BenchmarkModelConfig,
              mixed_precision: str) -> dict:
    """A run through `python -m model.train` (its own process: the dtype policy is global),
    with ensure_benchmark_model's settings; reused when its summary exists."""
    if not (run_dir / "summary.json").is_file():
        args = ["--data", str(data), "--cache-dir", str(cache), "--run-dir", str(run_dir),
                "--encoder-weights", "random", "--epochs", str(model.epochs),
                "--patience", str(model.epochs), "--batch-size", str(model.batch_size),
                "--min-count", "2", "--seed", str(model.seed), "--no-eval",
                "--mixed-precision", mixed_precision]
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "model.train", *args], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)
        print(f"trained {run_dir} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return json.loads((run_dir / "summary.json").read_text())


def bench_training_quality(run_dir: Path, work: Path, model: BenchmarkModelConfig) -> dict:
    float32 = json.loads((run_dir / "summary.json").read_text())
    bf16 = train_cli(work / "data", work / "cache", work / "run-bfloat16", model, "bfloat16")
    row = {name: {k: s.get(k) for k in ("epochs", "best_epoch", "best_val_loss", "final_loss")}
           for name, s in (("float32", float32), ("mixed_bfloat16", bf16))}
    relative = bf16["best_val_loss"] / float32["best_val_loss"] - 1
    row["val_loss_relative_difference"] = round(relative, 4)
    row["target"] = "bfloat16 best validation loss within 2% of float32's"
    row["target_met"] = bool(abs(relative) <= 0.02)
    return row


# ---- the benchmark ------------------------------------------------------------------------------

def run_benchmark(config: PrecisionBenchConfig, parts: set[str]) -> dict:
    model = BenchmarkModelConfig(num_images=config.num_images, epochs=config.epochs,
                                 batch_size=config.batch_size)
    run_dir, model_base = ensure_benchmark_model(config.workdir, model)
    work = run_dir.parent
    version_dir = latest_version(model_base)
    images = test_split(work / "data")
    result = {"benchmark": "bench_precision", "machine": machine(),
              "config": dataclasses.asdict(config), "model": str(version_dir),
              "test_images": len(images)}
    if "serving" in parts:
        result["server_bfloat16"] = bench_server_bfloat16(version_dir, images, config)
    if "exports" in parts:
        result["exports_16bit"] = bench_exports(run_dir, version_dir, work, images, config)
    if "attribution" in parts:
        result["attribution"] = bench_attribution(run_dir, images)
    if "training" in parts:
        result["training_speed"] = bench_training_speed(config)
        result["training_quality"] = bench_training_quality(run_dir, work, model)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="300 images, fewer repetitions")
    parts = ["serving", "exports", "attribution", "training"]
    p.add_argument("--parts", nargs="+", default=parts, choices=parts)
    p.add_argument("--repeats", type=int, help="round-robin repetitions at batch 32")
    p.add_argument("--train-repeats", type=int, help="training_speed repetitions")
    args = p.parse_args(argv)
    config = PrecisionBenchConfig.quick() if args.quick else PrecisionBenchConfig()
    for name in ("repeats", "train_repeats"):
        if getattr(args, name) is not None:
            if getattr(args, name) < 1:
                p.error(f"--{name.replace('_', '-')} must be >= 1")
            setattr(config, name, getattr(args, name))
    name = "bench_precision" + ("_quick" if args.quick else "") + \
        ("" if set(args.parts) == set(parts) else "_" + "_".join(args.parts))
    report(name, run_benchmark(config, set(args.parts)))


if __name__ == "__main__":
    main()
