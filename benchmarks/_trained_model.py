"""A small trained and exported captioner for the benchmarks, made once and reused.

    from benchmarks._trained_model import ensure_benchmark_model
    run_dir, model_base = ensure_benchmark_model()     # benchmarks/work/{data,cache,run,models}

Built-in data (300 images), random-init ResNet50, the default preset for a few epochs: the
captions are not good, but speed does not depend on caption quality (only on caption length,
which the benchmarks report). ~2-4 min the first time on 2 shared cores, instant afterwards.
benchmarks/work/ is gitignored.
"""
import dataclasses
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@dataclasses.dataclass
class BenchmarkModelConfig:
    num_images: int = 300    # 240 / 30 / 30 images, as tests/conftest.py's small_builtin
    epochs: int = 10         # enough for the decoder to learn to stop (<end>) after a caption
    batch_size: int = 64
    seed: int = 0


def ensure_benchmark_model(workdir="benchmarks/work",
                           config: BenchmarkModelConfig | None = None) -> tuple[Path, Path]:
    """(run_dir, model_base): a trained run and its export, created under `workdir` if absent.

    Each stage is reused when its finished output exists: the data (data.builtin.ensure_builtin,
    generated atomically), the run (summary.json is written last; a killed training resumes
    from its backup/), the export (export_run renames a complete version folder into place).
    """
    from data.builtin import ensure_builtin
    from export.artifact import list_versions
    from export.saved_model import export_run
    from model.encoder import EncoderConfig
    from model.presets import PRESETS
    from model.train import TrainConfig, train

    config = config or BenchmarkModelConfig()
    work = Path(workdir)
    if not work.is_absolute():
        work = REPO / work
    run_dir, model_base = work / "run", work / "models" / "captioner"

    if not (run_dir / "summary.json").is_file():
        data = ensure_builtin(work / "data", num_images=config.num_images, seed=config.seed)
        if model_base.exists():  # an export of an older run must not be reused
            shutil.rmtree(model_base)
        preset = PRESETS["default"]
        train_config = TrainConfig(**dict(preset["train"], epochs=config.epochs,
                                          batch_size=config.batch_size),
                                   patience=config.epochs, min_count=2, seed=config.seed)
        print(f"training the benchmark model in {run_dir} ({config.epochs} epochs)",
              file=sys.stderr)
        train(run_dir, data=data, train_config=train_config, model_overrides=preset["model"],
              encoder_config=EncoderConfig(weights="random", seed=config.seed),
              cache_dir=work / "cache", evaluate=False, verbose=0)

    if not list_versions(model_base):
        print(f"exporting the benchmark model to {model_base}", file=sys.stderr)
        export_run(run_dir, model_base, "auto")
    return run_dir, model_base


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(*ensure_benchmark_model(), sep="\n")
