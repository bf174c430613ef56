"""The whole system end to end on the built-in dataset, offline, in minutes on 2 CPU cores, with
the recipe `python -m model.train` uses when no preset is named (the attention preset):

  1. generate the built-in dataset        (datasets/builtin/)
  2. extract ResNet50 features             (cache/)
  3. keras fit, cross-entropy              (runs/demo/), then a self-critical stage started
                                           from it, optimising CIDEr-D (runs/demo-scst/;
                                           --scst-epochs 0: none)
  4. evaluate the last stage: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and (built-in data) the
     attributes its captions state right, greedy and beam   (runs/<name>/evaluation/)
  5. export the last stage's SavedModel    (models/captioner/<version>/)
  6. caption test images through the exported model, by the TF1 session path TF Serving uses
  7. print where everything is

    python demo.py [--data DIR] [--epochs N] [--scst-epochs N] [--retrain]

Re-running reuses the cached features, the finished runs and their export.
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # a command: TensorFlow's start-up noise is hidden before anything loads it
    from data.quiet import quiet_command
    quiet_command()

from data.layouts import DatasetError
from data.sources import open_dataset
from data.splits import split_dataset
from export.artifact import SessionModel, export_settings, latest_version
from export.loaded_model import ModelLoadError
from export.saved_model import export_run
from model.encoder import EncoderWeightsError
from model.evaluate import evaluate_run, report_lines
from model.run_dir import weights_digest
from model.settings import SHORT_STAGE, TrainConfig
from model.train import train

RUN_DIR = Path("runs/demo")
SCST_DIR = Path("runs/demo-scst")
MODEL_BASE = Path("models/captioner")


def later_stages(args) -> list[tuple[Path, dict]]:
    """(run folder, train() overrides) of the stages after the cross-entropy run, each started
    from the one before it (init_from)."""
    stages = []
    if args.scst_epochs:
        stages.append((SCST_DIR, {**SHORT_STAGE, "scst": True, "epochs": args.scst_epochs}))
    return stages


def trained_summary(args, evaluate: bool) -> dict:
    """Train, or reuse the finished run of an earlier demo. Evaluated only if it is the last
    stage: what is exported is what the demo scores."""
    summary_file = RUN_DIR / "summary.json"
    if summary_file.is_file() and not args.retrain:
        summary = json.loads(summary_file.read_text())
        if summary["settings"]["train"]["preset"] == TrainConfig.preset:
            print(f"[3-4/7] reusing the finished run in {RUN_DIR} (--retrain to train again)")
            if evaluate and "test" not in summary:
                summary["test"] = evaluate_run(RUN_DIR, data=args.data)
            return summary
        shutil.rmtree(RUN_DIR)  # another preset's run: the demo shows the current one
    print("[1-4/7] data, features, keras fit" + (", evaluation" if evaluate else ""))
    epochs = {"epochs": args.epochs} if args.epochs else {}
    return train(RUN_DIR, data=args.data, evaluate=evaluate, **epochs)  # TrainConfig.preset's


def stage_summary(run_dir: Path, init_from: Path, overrides: dict, retrain: bool) -> dict:
    """Train a later stage from `init_from`, or reuse its finished run if it started from
    exactly the weights `init_from` holds now."""
    summary_file = run_dir / "summary.json"
    if summary_file.is_file() and not retrain:
        summary = json.loads(summary_file.read_text())
        started = summary["settings"]["stage"].get("init_from", {}).get("weights_digest")
        if started == weights_digest(init_from / "best.weights.h5"):
            print(f"[3-4/7] reusing the finished run in {run_dir}")
            return summary
    shutil.rmtree(run_dir, ignore_errors=True)  # a stale stage: started from other weights
    print(f"[3-4/7] {run_dir}: a later stage started from {init_from}, evaluation")
    return train(run_dir, init_from=str(init_from), **overrides)


def exported_version(run_dir: Path) -> Path:
    """The newest export of exactly this run's weights, or a new one."""
    digest = weights_digest(run_dir / "best.weights.h5")
    try:
        newest = latest_version(MODEL_BASE)
        if export_settings(newest).get("weights_digest") == digest:
            print(f"[5/7] reusing {newest} (exported from these weights)")
            return newest
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    print(f"[5/7] exporting {run_dir}")
    return export_run(run_dir, MODEL_BASE, "auto")


def caption_through_session(version: Path, data, count=3):
    images = split_dataset(open_dataset(data))["test"][:count]
    payload = [image.path.read_bytes() for image in images]
    with SessionModel(version) as model:
        greedy, beam = model.caption(payload), model.caption(payload, "beam_search")
    return [(image, g.caption, b.caption) for image, g, b in zip(images, greedy, beam)]


def stage_line(run_dir: Path, summary: dict) -> str:
    if summary["settings"]["train"]["scst"]:
        return (f"self-critical {summary['epochs']} epochs from "
                f"{summary['settings']['train']['init_from']}, best epoch "
                f"{summary.get('best_epoch')}, validation CIDEr-D "
                f"{summary['start_val_cider_d']:.3f} -> "
                f"{max(summary['start_val_cider_d'], summary['best_val_cider_d']):.3f}, "
                f"{summary.get('median_epoch_seconds', float('nan')):.0f} s/epoch")
    return (f"training     {summary['epochs']} epochs, best epoch {summary.get('best_epoch')}, "
            f"final loss {summary.get('final_loss', float('nan')):.3f}, "
            f"val loss {summary.get('final_val_loss', float('nan')):.3f}")


def print_summary(runs: list[tuple[Path, dict]], version, samples, seconds):
    first, (last_dir, last) = runs[0][1], runs[-1]
    data = first["settings"]["data"]
    print("\n" + "=" * 72)
    print(f"dataset      {data['source']} ({data['layout']}): {data['images']} images, "
          f"{data['captions']} captions; split {data['split_images']}; "
          f"skipped {data['skipped']['total']}")
    for run_dir, summary in runs:
        print(stage_line(run_dir, summary))
    print(f"test split   {last.get('test', {}).get('images')} images, {last_dir} (exported):")
    print("\n".join(report_lines(last.get("test", {}))))
    if len(runs) > 1 and "test" in first:
        print(f"before the later stages ({runs[0][0]}):")
        print("\n".join(report_lines(first.get("test", {}), methods=("greedy", "beam"))))
    print(f"export       {version}")
    for image, greedy, beam in samples:
        print(f"\n  {image.path}\n    greedy:    {greedy}\n    beam:      {beam}\n"
              f"    reference: {image.captions[0]}")
    curves = "  ".join(str(run_dir / ("reward_curve.png" if summary["settings"]["train"]["scst"]
                                      else "loss_curve.png")) for run_dir, summary in runs)
    print(f"\ncurves       {curves}\nsamples      "
          f"{last_dir / 'evaluation' / 'samples.png'}\nreport       "
          f"{last_dir / 'evaluation' / 'report.json'}\ncheckpoints  "
          f"{last_dir / 'best.weights.h5'}"
          f"\nfeatures     {data['feature_cache']}\nserve it     python -m serving.model_server "
          f"--port=8500 --rest_api_port=8501 --model_name=captioner --model_base_path={MODEL_BASE}"
          f"   (development server; production: the tensorflow/serving:2.21.0 container, "
          f"docs/serving.md)\ntry it       python -m serving.app --rest http://127.0.0.1:8501")
    print(f"done in {seconds:.0f} s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", help="a Flickr30k/Flickr8k folder instead of the built-in data")
    p.add_argument("--epochs", type=int, help="epochs at most (default: the preset's)")
    p.add_argument("--scst-epochs", type=int, default=SHORT_STAGE["epochs"],
                   help="epochs of the self-critical stage after the cross-entropy run (0: "
                        "none; model/settings.py SHORT_STAGE)")
    p.add_argument("--retrain", action="store_true", help="train again even if the runs are done")
    args = p.parse_args(argv)
    start = time.time()
    try:
        stages = later_stages(args)
        runs = [(RUN_DIR, trained_summary(args, evaluate=not stages))]
        for run_dir, overrides in stages:
            runs.append((run_dir, stage_summary(run_dir, runs[-1][0], overrides, args.retrain)))
        version = exported_version(runs[-1][0])
        print("[6/7] captioning test images through the exported model (session path)")
        samples = caption_through_session(version, args.data)
    except (DatasetError, EncoderWeightsError, FileNotFoundError, ModelLoadError,
            ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_summary(runs, version, samples, time.time() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
