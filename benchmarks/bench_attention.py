"""The attention preset beside the default preset, in one run, on the built-in data (JSON):

    python -m benchmarks.bench_attention                # the demo's settings: 1,500 images, 12 epochs
    python -m benchmarks.bench_attention --quick        # 300 images, 3 epochs
    python -m benchmarks.bench_attention --reuse --picture docs/attention.png --picture-index 5

Both presets trained from scratch with the same data, split, random-init ResNet50, epochs and
recipe: test BLEU-1..4 / CIDEr-D (greedy and beam), seconds per epoch, and served images/s at
batch 32 (float32 exports, session path, round-robin). Runs go to benchmarks/work/attention/;
--reuse keeps finished runs of an earlier call; --picture draws a test image's served maps.
"""
import dataclasses
import json
import shutil
import sys
from pathlib import Path

from benchmarks._timing import REPO, machine, median, parse, report, round_robin
from benchmarks._trained_model import caption

PRESET_NAMES = ("default", "attention")
SCORES = ("bleu1", "bleu2", "bleu3", "bleu4", "cider_d")
SIGNATURES = ("serving_default", "beam_search")


@dataclasses.dataclass
class AttentionBenchConfig:
    num_images: int | None = None   # None: the built-in dataset the demo uses (1,500 images)
    epochs: int = 12                # the demo's
    serve_batch: int = 32
    repeats: int = 5
    reuse: bool = False
    picture: str | None = None
    picture_index: int = 0          # which test image the picture shows


QUICK = {"num_images": 300, "epochs": 3, "repeats": 2}


def train_preset(name: str, data, work: Path, config: AttentionBenchConfig) -> dict:
    run_dir = work / "runs" / name
    if config.reuse and (run_dir / "summary.json").is_file():
        return json.loads((run_dir / "summary.json").read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    cache = None if data is None else work / ("cache-spatial" if name == "attention" else "cache")
    print(f"training the {name} preset ({config.epochs} epochs) in {run_dir}", file=sys.stderr)
    from model.train import train
    return train(run_dir, name, data=data, cache_dir=cache, verbose=0, epochs=config.epochs,
                 encoder_weights="random")


def draw_picture(model, image_path: Path, out: Path) -> None:
    """The README picture: one test image's served caption with each word's map."""
    from PIL import Image

    from data.files import atomic_write
    from model.attention_maps import attention_strip
    served = caption(model, [image_path.read_bytes()])[0]
    text = served.caption
    strip = attention_strip(Image.open(image_path).convert("RGB"), text, served.attention)
    atomic_write(out, lambda handle: strip.save(handle, format="PNG"))
    print(f"picture: {out} ({text})", file=sys.stderr)


def run_benchmark(config: AttentionBenchConfig) -> dict:
    from data.builtin import ensure_builtin
    from data.sources import open_dataset
    from data.splits import split_dataset
    from export.artifact import SessionModel
    from export.saved_model import export_run
    from model.run_dir import load_run

    started = machine()
    work = REPO / "benchmarks" / "work" / "attention" / ("quick" if config.num_images else "full")
    data = None if config.num_images is None else ensure_builtin(
        work / "data", num_images=config.num_images, seed=0)
    summaries = {name: train_preset(name, data, work, config) for name in PRESET_NAMES}
    models = {}
    for name in PRESET_NAMES:
        shutil.rmtree(work / "models" / name, ignore_errors=True)
        models[name] = SessionModel(export_run(work / "runs" / name, work / "models" / name,
                                               "auto", warmup_images=[]))
    test = split_dataset(open_dataset(data))["test"]
    images = [test[i % len(test)].path.read_bytes() for i in range(config.serve_batch)]
    tasks = {(name, signature): (lambda m=model, s=signature: caption(m, images, s))
             for name, model in models.items() for signature in SIGNATURES}
    wall = round_robin(tasks, config.repeats, desc="served batches")[0]
    if config.picture:
        draw_picture(models["attention"], test[config.picture_index].path, Path(config.picture))
    for model in models.values():
        model.close()

    key = f"served_images_per_second_batch_{config.serve_batch}"
    result = {"benchmark": "attention vs default preset", "machine": started,
              "config": dataclasses.asdict(config), "presets": {}}
    for name, summary in summaries.items():
        result["presets"][name] = {
            "test": {method: {score: round(summary["test"][method][score], 4) for score in SCORES}
                     for method in ("greedy", "beam")},
            "test_images": summary["test"]["images"],
            "epochs": summary["epochs"], "best_epoch": summary.get("best_epoch"),
            "median_epoch_seconds": round(summary["median_epoch_seconds"], 2),
            "parameters_decoder": load_run(work / "runs" / name).load_captioner().count_params(),
            key: {s: round(len(images) / median(wall[name, s]), 2) for s in SIGNATURES}}
    result["majority_baseline_bleu4"] = round(
        summaries["default"]["test"]["majority_baseline"]["bleu4"], 4)
    a, d = result["presets"]["attention"], result["presets"]["default"]
    result["attention_vs_default"] = {
        "epoch_seconds_ratio": round(a["median_epoch_seconds"] / d["median_epoch_seconds"], 2),
        "served_greedy_ratio": round(a[key]["serving_default"] / d[key]["serving_default"], 3),
        "served_beam_ratio": round(a[key]["beam_search"] / d[key]["beam_search"], 3),
        **{f"{method}_{score}_delta": round(a["test"][method][score] - d["test"][method][score], 4)
           for method in ("greedy", "beam") for score in ("bleu4", "cider_d")}}
    return result


def main(argv=None):
    config, args = parse(__doc__, AttentionBenchConfig, QUICK, argv)
    report("bench_attention" + ("_quick" if args.quick else ""), run_benchmark(config))


if __name__ == "__main__":
    main()
