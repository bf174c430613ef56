"""The attention preset beside the default preset, in one run, on the built-in data (JSON).

    python benchmarks/bench_attention.py                       # the demo's settings: 1,500 images, 12 epochs
    python benchmarks/bench_attention.py --quick               # 300 images, 3 epochs: a smoke run
    python benchmarks/bench_attention.py --picture docs/attention.png   # also draw the README picture

For each preset, trained from scratch with the same data, split, encoder (random-init ResNet50),
epochs and training recipe (the presets differ only in the decoder and what it reads):
- test-split BLEU-1..4 and CIDEr-D, greedy and beam (model/evaluate.py, as training reports them);
- training seconds per epoch (median over epochs, EpochTimer in history.csv);
- served images/s at batch 32: the float32 export through TF Serving's session path
  (export.artifact.SessionModel), serving_default and beam_search, timed round-robin.
Ratios attention / default come from this same run. Runs and exports go to benchmarks/work/attention/
(gitignored); --reuse keeps finished runs of an earlier call instead of training again.
"""
import argparse
import dataclasses
import os
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks._timing import machine, report, round_robin  # noqa: E402

PRESET_NAMES = ("default", "attention")
SCORES = ("bleu1", "bleu2", "bleu3", "bleu4", "cider_d")


@dataclasses.dataclass
class AttentionBenchConfig:
    num_images: int | None = None   # None: the built-in dataset the demo uses (1,500 images)
    epochs: int = 12                # the demo's
    serve_batch: int = 32
    repeats: int = 5
    reuse: bool = False
    picture: str | None = None
    picture_index: int = 0          # which test image the picture shows


def train_preset(name: str, data, work: Path, config: AttentionBenchConfig) -> dict:
    from model.encoder import EncoderConfig
    from model.presets import PRESETS
    from model.train import TrainConfig, train
    import json

    run_dir = work / "runs" / name
    if config.reuse and (run_dir / "summary.json").is_file():
        return json.loads((run_dir / "summary.json").read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    chosen = PRESETS[name]
    train_config = TrainConfig(**dict(chosen["train"], epochs=config.epochs), preset=name)
    cache = None if data is None else work / ("cache-spatial" if name == "attention" else "cache")
    print(f"training the {name} preset ({config.epochs} epochs) in {run_dir}", file=sys.stderr)
    return train(run_dir, data=data, train_config=train_config, model_overrides=chosen["model"],
                 encoder_config=EncoderConfig(weights="random"), cache_dir=cache, verbose=0)


def served_images_per_second(versions: dict, images: list[bytes], repeats: int) -> dict:
    """{preset: {signature: images/s}} at one batch of len(images), timed round-robin."""
    from export.artifact import SessionModel
    models = {name: SessionModel(path) for name, path in versions.items()}
    batch = {"image_bytes": np.array(images, dtype=object)}
    tasks = {(name, signature): (lambda m=model, s=signature: m.run(s, batch))
             for name, model in models.items() for signature in ("serving_default", "beam_search")}
    wall, cpu = round_robin(tasks, repeats, desc="served batches")
    result = {name: {} for name in models}
    for (name, signature), times in wall.items():
        result[name][signature] = round(len(images) / statistics.median(times), 2)
    for model in models.values():
        model.close()
    return result


def draw_picture(version: Path, image_path: Path, out: Path) -> None:
    """The README picture: one test image's served caption with each word's map."""
    from PIL import Image
    from data.files import atomic_write
    from export.artifact import SessionModel
    from model.attention_maps import attention_strip
    model = SessionModel(version)
    out_tensors = model.run("serving_default", {
        "image_bytes": np.array([image_path.read_bytes()], dtype=object)})
    model.close()
    caption = out_tensors["caption"][0].decode()
    strip = attention_strip(Image.open(image_path).convert("RGB"), caption,
                            out_tensors["attention"][0])
    atomic_write(out, lambda handle: strip.save(handle, format="PNG"))
    print(f"picture: {out} ({caption})", file=sys.stderr)


def run_benchmark(config: AttentionBenchConfig) -> dict:
    from data.builtin import ensure_builtin
    from data.sources import open_dataset
    from data.splits import split_dataset
    from export.saved_model import export_run

    work = REPO / "benchmarks" / "work" / "attention" / ("quick" if config.num_images else "full")
    data = None if config.num_images is None else ensure_builtin(
        work / "data", num_images=config.num_images, seed=0)
    summaries = {name: train_preset(name, data, work, config) for name in PRESET_NAMES}
    versions = {}
    for name in PRESET_NAMES:
        base = work / "models" / name
        shutil.rmtree(base, ignore_errors=True)
        versions[name] = export_run(work / "runs" / name, base, "auto", warmup_images=[])
    test = split_dataset(open_dataset(data))["test"]
    images = [test[i % len(test)].path.read_bytes() for i in range(config.serve_batch)]
    served = served_images_per_second(versions, images, config.repeats)
    if config.picture:
        draw_picture(versions["attention"], test[config.picture_index].path, Path(config.picture))

    result = {"benchmark": "attention vs default preset", "machine": machine(),
              "config": dataclasses.asdict(config), "presets": {}}
    for name, summary in summaries.items():
        scores = {method: {key: round(summary["test"][method][key], 4) for key in SCORES}
                  for method in ("greedy", "beam")}
        result["presets"][name] = {
            "test": scores, "test_images": summary["test"]["images"],
            "epochs": summary["epochs"], "best_epoch": summary.get("best_epoch"),
            "median_epoch_seconds": round(summary["median_epoch_seconds"], 2),
            "parameters_decoder": None,
            "served_images_per_second_batch_%d" % config.serve_batch: served[name]}
    result["majority_baseline_bleu4"] = round(
        summaries["default"]["test"]["majority_baseline"]["bleu4"], 4)
    a, d = result["presets"]["attention"], result["presets"]["default"]
    key = "served_images_per_second_batch_%d" % config.serve_batch
    result["attention_vs_default"] = {
        "epoch_seconds_ratio": round(a["median_epoch_seconds"] / d["median_epoch_seconds"], 2),
        "served_greedy_ratio": round(a[key]["serving_default"] / d[key]["serving_default"], 3),
        "served_beam_ratio": round(a[key]["beam_search"] / d[key]["beam_search"], 3),
        **{f"{method}_{score}_delta": round(a["test"][method][score] - d["test"][method][score], 4)
           for method in ("greedy", "beam") for score in ("bleu4", "cider_d")},
    }
    for name in PRESET_NAMES:
        from model.run_dir import load_run
        result["presets"][name]["parameters_decoder"] = load_run(
            work / "runs" / name).load_captioner().count_params()
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="300 images, 3 epochs, 2 repeats")
    p.add_argument("--epochs", type=int, help="default 12 (the demo's); --quick: 3")
    p.add_argument("--repeats", type=int, help="timed batches per model and signature (5)")
    p.add_argument("--reuse", action="store_true", help="keep finished runs of an earlier call")
    p.add_argument("--picture", help="write the attention strip of a test image to this PNG")
    p.add_argument("--picture-index", type=int, default=0, help="which test image (0)")
    args = p.parse_args(argv)
    config = AttentionBenchConfig(reuse=args.reuse, picture=args.picture,
                                  picture_index=args.picture_index)
    if args.quick:
        config = dataclasses.replace(config, num_images=300, epochs=3, repeats=2)
    if args.epochs:
        config.epochs = args.epochs
    if args.repeats:
        config.repeats = args.repeats
    report("bench_attention" + ("_quick" if args.quick else ""), run_benchmark(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
