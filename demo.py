"""The whole system end to end on the built-in dataset, offline, in a few minutes on 2 CPU cores:

  1. generate the built-in dataset        (datasets/builtin/)
  2. extract ResNet50 features             (cache/)
  3. keras fit                             (runs/demo/)
  4. evaluate BLEU, greedy and beam        (runs/demo/evaluation/)
  5. export the SavedModel                 (models/captioner/<version>/)
  6. caption test images through the exported model, by the TF1 session path TF Serving uses
  7. print where everything is

    python demo.py [--data DIR] [--epochs N] [--retrain]

Re-running reuses the cached features, the finished run and its export.
"""
import argparse
import json
import sys
import time
from pathlib import Path

from data.layouts import DatasetError
from data.sources import open_dataset
from data.splits import split_dataset
from export.artifact import SessionModel, export_settings, latest_version
from export.contract import ModelLoadError
from export.saved_model import export_run
from model.encoder import EncoderWeightsError
from model.metrics import score_line
from model.run_dir import weights_digest
from model.train import train

RUN_DIR = Path("runs/demo")
MODEL_BASE = Path("models/captioner")


def trained_summary(args) -> dict:
    """Train, or reuse the finished run of an earlier demo."""
    summary_file = RUN_DIR / "summary.json"
    if summary_file.is_file() and not args.retrain:
        print(f"[3-4/7] reusing the finished run in {RUN_DIR} (--retrain to train again)")
        return json.loads(summary_file.read_text())
    print("[1-4/7] data, features, keras fit, evaluation")
    return train(RUN_DIR, "default", data=args.data, epochs=args.epochs)


def exported_version(digest: str) -> Path:
    """The newest export of exactly these weights, or a new one."""
    try:
        newest = latest_version(MODEL_BASE)
        if export_settings(newest).get("weights_digest") == digest:
            print(f"[5/7] reusing {newest} (exported from these weights)")
            return newest
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    print("[5/7] exporting")
    return export_run(RUN_DIR, MODEL_BASE, "auto")


def caption_through_session(version: Path, data, count=3):
    images = split_dataset(open_dataset(data))["test"][:count]
    payload = [image.path.read_bytes() for image in images]
    with SessionModel(version) as model:
        greedy, beam = model.caption(payload), model.caption(payload, "beam_search")
    return [(image, g.caption, b.caption) for image, g, b in zip(images, greedy, beam)]


def print_summary(summary, version, samples, seconds):
    data = summary["settings"]["data"]
    test = summary.get("test", {})
    print("\n" + "=" * 72)
    print(f"dataset      {data['source']} ({data['layout']}): {data['images']} images, "
          f"{data['captions']} captions; split {data['split_images']}; "
          f"skipped {data['skipped']['total']}")
    print(f"training     {summary['epochs']} epochs, best epoch {summary.get('best_epoch')}, "
          f"final loss {summary.get('final_loss', float('nan')):.3f}, "
          f"val loss {summary.get('final_val_loss', float('nan')):.3f}")
    for method in ("greedy", "beam", "majority_baseline"):
        if method in test:
            print(score_line(method, test[method]))
    print(f"export       {version}")
    for image, greedy, beam in samples:
        print(f"\n  {image.path}\n    greedy:    {greedy}\n    beam:      {beam}\n"
              f"    reference: {image.captions[0]}")
    print(f"\nloss curve   {RUN_DIR / 'loss_curve.png'}\nsamples      "
          f"{RUN_DIR / 'evaluation' / 'samples.png'}\nreport       "
          f"{RUN_DIR / 'evaluation' / 'report.json'}\ncheckpoints  {RUN_DIR / 'best.weights.h5'}"
          f"\nfeatures     {data['feature_cache']}\nserve it     python -m serving.model_server "
          f"--port=8500 --rest_api_port=8501 --model_name=captioner --model_base_path={MODEL_BASE}"
          f"   (development server; production: the tensorflow/serving:2.21.0 container, "
          f"docs/serving.md)\ntry it       python -m serving.app --rest http://127.0.0.1:8501")
    print(f"done in {seconds:.0f} s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", help="a Flickr30k/Flickr8k folder instead of the built-in data")
    p.add_argument("--epochs", type=int, default=12)  # validation loss plateaus by ~10 here
    p.add_argument("--retrain", action="store_true", help="train again even if runs/demo is done")
    args = p.parse_args(argv)
    start = time.time()
    try:
        summary = trained_summary(args)
        version = exported_version(weights_digest(RUN_DIR / "best.weights.h5"))
        print("[6/7] captioning test images through the exported model (session path)")
        samples = caption_through_session(version, args.data)
    except (DatasetError, EncoderWeightsError, FileNotFoundError, ModelLoadError,
            ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_summary(summary, version, samples, time.time() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
