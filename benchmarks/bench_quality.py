"""Caption quality of every recipe, in one run on the built-in data (JSON):

    python -m benchmarks.bench_quality                  # 1,500 images, the presets' own epochs, 3 seeds
    python -m benchmarks.bench_quality --quick          # 300 images, 3 epochs, 1 seed
    python -m benchmarks.bench_quality --rows pooled,attention --seeds 2
    python -m benchmarks.bench_quality --reuse --picture docs/attention.png --picture-index 5

Rows (ROWS): the attention preset (what `python -m model.train` and the demo train), the pooled
preset, and a self-critical stage after the attention preset. Every row trains from
scratch per seed with the same data, split and random-init ResNet50 and the CLI's defaults
otherwise. Per row: mean and range over the seeds of BLEU-1..4, METEOR, ROUGE-L and CIDEr-D
(greedy and beam) and of the attribute accuracies, seconds per epoch of each stage, and served
images/s at batch 32 (the first seed's float32 export, session path, round-robin over the rows).
Runs go to benchmarks/work/quality/; --reuse keeps finished runs of an earlier call.
"""
import dataclasses
import json
import shutil
import statistics
import sys
from pathlib import Path

if __name__ == "__main__":  # a command: TensorFlow's start-up noise is hidden before anything loads it
    from data.quiet import quiet_command
    quiet_command()

from benchmarks._timing import REPO, machine, median, parse, report, round_robin
from model.settings import SHORT_STAGE

# name: stages; a stage is (preset, overrides), "init" = the row's previous stage. The attention
# preset already trains the encoder's top with random weights (model.settings.RANDOM_WEIGHTS).
# The self-critical stage is the demo's (model.settings.SHORT_STAGE).
SCST_STAGE = ("init", {"scst": True, **SHORT_STAGE})
ROWS = {
    "attention": [("attention", {})],
    "pooled": [("pooled", {})],
    "attention+scst": [("attention", {}), SCST_STAGE],
}
REFERENCE_ROW = "pooled"  # the ratios compare every other row with the cheapest recipe
SCORES = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider_d")
ATTRIBUTES = ("colours", "shapes", "count", "size", "position", "all")
SIGNATURES = ("serving_default", "beam_search")


@dataclasses.dataclass
class QualityBenchConfig:
    rows: str = ",".join(ROWS)      # comma-separated names of ROWS
    seeds: int = 3
    num_images: int | None = None   # None: the built-in dataset the demo uses (1,500 images)
    epochs: int | None = None       # None: each preset's own (the CLI's default)
    serve_batch: int = 32
    repeats: int = 5
    reuse: bool = False
    picture: str | None = None      # a test image's served attention maps (attention row)
    picture_index: int = 0


QUICK = {"num_images": 300, "epochs": 3, "seeds": 1, "repeats": 2}


def train_row(row: str, seed: int, data, work: Path, config: QualityBenchConfig,
              finished: set) -> list[dict]:
    """The summary of each stage of `row` for one seed, each with its test scores. A stage
    another row shares is trained once per call (`finished`: the run folders this call made)."""
    from model.train import train
    summaries, previous = [], None
    for index, (preset, overrides) in enumerate(ROWS[row]):
        run_dir = work / "runs" / f"{stage_name(row, index)}-seed{seed}"
        if run_dir in finished or config.reuse and (run_dir / "summary.json").is_file():
            summaries.append(with_fastest_epoch(json.loads((run_dir / "summary.json").read_text()),
                                                run_dir))
            previous = run_dir
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        cache = None  # a later stage reads the cache of the run it starts from
        if preset == "init":
            preset, settings = None, {"init_from": str(previous), **overrides}
        else:
            settings = {"seed": seed, "encoder_weights": "random", **overrides}
            if config.epochs:
                settings["epochs"] = config.epochs
            if data is not None:  # one cache per feature kind
                cache = work / f"cache-{feature_kind(preset, data, settings)}"
        print(f"training {run_dir.name}", file=sys.stderr)
        summaries.append(with_fastest_epoch(
            train(run_dir, preset, data=data, cache_dir=cache, verbose=0, **settings), run_dir))
        previous = run_dir
        finished.add(run_dir)
    return summaries


def with_fastest_epoch(summary: dict, run_dir: Path) -> dict:
    """The summary plus the run's fastest epoch in seconds: on a shared machine, the figure that
    other load inflates least (the median is the summary's own)."""
    from model.history import read_history
    seconds = read_history(run_dir / "history.csv").get("epoch_seconds")
    finite = [float(value) for value in (seconds if seconds is not None else []) if value == value]
    return {**summary, "fastest_epoch_seconds": min(finite) if finite else None}


def feature_kind(preset: str, data, settings: dict) -> str:
    """The kind of feature a first stage reads (one cache per kind), as train() decides it."""
    from model.train import run_config
    return run_config(preset, data=data, **settings).model_config(vocab_size=1).feature_kind


def stage_name(row: str, index: int) -> str:
    """The row whose stages are `row`'s first index + 1 (they share that run), else row-stageN."""
    stages = ROWS[row][:index + 1]
    return next((name for name, other in ROWS.items() if other == stages), f"{row}-stage{index}")


def spread(values: list[float]) -> dict:
    """{"mean", "min", "max", "values"} rounded to 4 decimals."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None}
    return {"mean": round(statistics.fmean(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "values": [round(v, 4) for v in values]}


def row_result(runs: list[list[dict]]) -> dict:
    """Mean and range over the seeds of every score, attribute accuracy and stage speed."""
    tests = [stages[-1]["test"] for stages in runs]
    result = {"seeds": len(runs), "test_images": tests[0]["images"]}
    for method in ("greedy", "beam"):
        result[method] = {score: spread([t[method][score] for t in tests]) for score in SCORES}
        result[method]["attributes"] = {
            name: spread([t[method].get("attributes", {}).get(name) for t in tests])
            for name in ATTRIBUTES}
    result["stages"] = [
        {"epochs": spread([stages[i]["epochs"] for stages in runs]),
         "best_epoch": spread([stages[i].get("best_epoch") for stages in runs]),
         "median_epoch_seconds": spread([stages[i].get("median_epoch_seconds") for stages in runs]),
         "fastest_epoch_seconds": spread([stages[i]["fastest_epoch_seconds"] for stages in runs])}
        for i in range(len(runs[0]))]
    return result


def served_speed(run_dirs: dict, test, work: Path, config: QualityBenchConfig) -> dict:
    """{row: {signature: images/s}} of each row's first-seed export, batch serve_batch."""
    from export.artifact import SessionModel
    from export.saved_model import export_run
    models = {}
    for row, run_dir in run_dirs.items():
        base = work / "models" / row
        shutil.rmtree(base, ignore_errors=True)
        models[row] = SessionModel(export_run(run_dir, base, "auto", warmup_images=[]))
    images = [test[i % len(test)].path.read_bytes() for i in range(config.serve_batch)]
    tasks = {(row, signature): (lambda m=model, s=signature: m.caption(images, s))
             for row, model in models.items() for signature in SIGNATURES}
    wall = round_robin(tasks, config.repeats, desc="served batches")[0]
    if config.picture and "attention" in models:
        draw_picture(models["attention"], test[config.picture_index].path, Path(config.picture))
    for model in models.values():
        model.close()
    return {row: {s: round(len(images) / median(wall[row, s]), 2) for s in SIGNATURES}
            for row in models}


def draw_picture(model, image_path: Path, out: Path) -> None:
    """The docs' picture: one test image's served caption with each word's map."""
    from PIL import Image

    from data.files import atomic_write
    from model.attention_maps import attention_strip
    served = model.caption([image_path.read_bytes()])[0]
    strip = attention_strip(Image.open(image_path).convert("RGB"), served.caption,
                            served.attention)
    atomic_write(out, lambda handle: strip.save(handle, format="PNG"))
    print(f"picture: {out} ({served.caption})", file=sys.stderr)


def run_benchmark(config: QualityBenchConfig) -> dict:
    from data.builtin import ensure_builtin
    from data.sources import open_dataset
    from data.splits import split_dataset

    rows = [row.strip() for row in config.rows.split(",") if row.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise SystemExit(f"--rows: unknown {unknown}; expected any of {list(ROWS)}")
    started = machine()
    work = REPO / "benchmarks" / "work" / "quality" / ("quick" if config.num_images else "full")
    data = None if config.num_images is None else ensure_builtin(
        work / "data", num_images=config.num_images, seed=0)
    runs, finished = {row: [] for row in rows}, set()
    for seed in range(config.seeds):  # seed by seed: a stopped call leaves whole seeds (--reuse)
        for row in rows:
            runs[row].append(train_row(row, seed, data, work, config, finished))
    first = {row: work / "runs" / f"{stage_name(row, len(ROWS[row]) - 1)}-seed0" for row in rows}
    test = split_dataset(open_dataset(data))["test"]
    speed = served_speed(first, test, work, config)

    key = f"served_images_per_second_batch_{config.serve_batch}"
    result = {"benchmark": "caption quality by recipe", "machine": started,
              "config": dataclasses.asdict(config), "rows": {}}
    for row in rows:
        result["rows"][row] = {**row_result(runs[row]), key: speed[row]}
    baseline = runs[rows[0]][0][-1]["test"]["majority_baseline"]
    result["majority_baseline"] = {score: round(baseline[score], 4)
                                   for score in ("bleu4", "cider_d")}
    if REFERENCE_ROW in rows:
        reference = result["rows"][REFERENCE_ROW]
        result[f"vs_{REFERENCE_ROW}"] = {
            row: {"greedy_cider_d_ratio": ratio(values, reference, "greedy", "cider_d"),
                  "greedy_bleu4_ratio": ratio(values, reference, "greedy", "bleu4"),
                  "epoch_seconds_ratio": epoch_ratio(values, reference, "median_epoch_seconds"),
                  "fastest_epoch_seconds_ratio": epoch_ratio(values, reference,
                                                             "fastest_epoch_seconds")}
            for row, values in result["rows"].items() if row != REFERENCE_ROW}
    return result


def epoch_ratio(values: dict, reference: dict, figure: str) -> float:
    """A row's first stage's seconds per epoch over the reference row's (means over seeds)."""
    return round(values["stages"][0][figure]["mean"] / reference["stages"][0][figure]["mean"], 2)


def ratio(values: dict, reference: dict, method: str, score: str) -> float | None:
    base = reference[method][score]["mean"]
    return round(values[method][score]["mean"] / base, 3) if base else None


def main(argv=None):
    config, args = parse(__doc__, QualityBenchConfig, QUICK, argv)
    report("bench_quality" + ("_quick" if args.quick else ""), run_benchmark(config))


if __name__ == "__main__":
    main()
