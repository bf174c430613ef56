"""A small trained and exported captioner, made once under benchmarks/work/ (gitignored):
`run_dir, model_base = ensure_benchmark_model()`. Built-in data (300 images), random-init
ResNet50, the pooled preset for 10 epochs (made the first time only): the captions are poor, but
speed depends only on their length, which is reported."""
import dataclasses
import shutil
import sys
from pathlib import Path

from benchmarks._timing import REPO


@dataclasses.dataclass
class BenchmarkModelConfig:
    num_images: int = 300    # 240 / 30 / 30 images
    epochs: int = 10         # enough for the decoder to learn to stop (<end>) after a caption
    batch_size: int = 64
    seed: int = 0


def train_benchmark_run(work, config: BenchmarkModelConfig, name="run", **overrides) -> Path:
    """work/<name>, trained on work/data (built-in) unless its summary.json (written last)
    exists; a killed run resumes from its backup/."""
    from data.builtin import ensure_builtin
    from model.train import train
    work = Path(work)
    if not (work / name / "summary.json").is_file():
        data = ensure_builtin(work / "data", num_images=config.num_images, seed=config.seed)
        print(f"training {work / name} ({config.epochs} epochs)", file=sys.stderr)
        train(work / name, "pooled", data=data, cache_dir=work / "cache", evaluate=False, verbose=0,
              epochs=config.epochs, batch_size=config.batch_size, patience=config.epochs,
              min_count=2, seed=config.seed, encoder_weights="random", **overrides)
    return work / name


def ensure_benchmark_model(workdir="benchmarks/work", config=None) -> tuple[Path, Path]:
    """(run_dir, model_base): the trained run and its export under `workdir`, made if absent."""
    from export.artifact import list_versions
    from export.saved_model import export_run
    work = REPO / workdir  # an absolute workdir stays itself
    run_dir, model_base = work / "run", work / "models" / "captioner"
    if not (run_dir / "summary.json").is_file() and model_base.exists():
        shutil.rmtree(model_base)  # an export of an older run must not be reused
    train_benchmark_run(work, config or BenchmarkModelConfig())
    if not list_versions(model_base):
        print(f"exporting the benchmark model to {model_base}", file=sys.stderr)
        export_run(run_dir, model_base, "auto")
    return run_dir, model_base
