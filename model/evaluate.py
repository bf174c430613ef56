"""Evaluate a trained run on a split, greedy and beam search against the majority baseline: the
scores papers report (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D; model/metrics.py), on the built-in data
the share of captions stating each attribute right (model/attributes.py), a JSON report, COCO
results files and a PNG grid of samples (with each word's attention map for the attention model).

    python -m model.evaluate --run-dir runs/builtin [--data DIR] [--split test] [--methods greedy beam]
"""
import argparse
import logging
import sys

if __name__ == "__main__":  # a command: TensorFlow's start-up noise is hidden before anything loads it
    from data.quiet import quiet_command
    quiet_command()

from data.feature_cache import load_features
from data.layouts import DatasetError
from data.sources import open_dataset
from data.splits import split_dataset
from model.decoding import CaptionDecoder
from model.attributes import attribute_line, attribute_scores, builtin_scenes
from model.metrics import (MeteorScorer, caption_scores, coco_results, evaluation_report,
                           majority_baseline, score_line)
from model.plots import sample_grid_png
from model.run_dir import load_run

log = logging.getLogger("evaluate")
NUM_SAMPLES = 9


def evaluate_run(run_dir, data=None, split="test", methods=("greedy", "beam"), features=None,
                 dataset=None) -> dict:
    """Scores of every method on `split`, plus the caption-the-majority baseline, with one METEOR
    process for all of them, and on the built-in data the share of captions stating each
    attribute right (model/attributes.py). Writes evaluation/report.json, one COCO results file
    per method (evaluation/captions_<method>.json) and evaluation/samples.png."""
    run = load_run(run_dir)
    dataset = dataset or open_dataset(data)
    splits = split_dataset(dataset)
    names, matrix = features or load_features(run.settings["data"]["feature_cache"],
                                              [image.name for image in splits[split]])
    row_of = {name: i for i, name in enumerate(names)}
    images = [image for image in splits[split] if image.name in row_of]
    if not images:
        raise DatasetError(f"no {split} images with features in {run.settings['data']['feature_cache']}")
    split_features = matrix[[row_of[image.name] for image in images]]
    references = [list(image.captions) for image in images]
    train_captions = [c for image in splits["train"] for c in image.captions]
    out = run.paths.evaluation
    out.mkdir(parents=True, exist_ok=True)

    decoder = CaptionDecoder(run.load_captioner(), run.vocabulary.tokens, run.decode_config,
                             split_features.shape[1:])
    result = {"split": split, "images": len(images), "results_files": {}}
    predictions, attention = {}, None
    with MeteorScorer() as meteor:  # one Java process for every score of this evaluation
        for method in methods:
            # The attention model's maps of the first method's captions go into samples.png.
            maps = run.model_config.attention and method == methods[0]
            predictions[method], _, *found = decoder(split_features, method,
                                                     return_attention=maps)
            attention = found[0] if found else attention
            result[method] = caption_scores(references, predictions[method], meteor)
            results_file = out / f"captions_{method}.json"
            coco_results([image.name for image in images], predictions[method], results_file,
                         [image.image_id for image in images])
            result["results_files"][method] = str(results_file)
        result["majority_baseline"] = majority_baseline(train_captions, references, meteor)
    if meteor.skipped:
        result["meteor_skipped"] = meteor.skipped
    majority = result["majority_baseline"]["majority_caption"]
    predictions["majority_baseline"] = [majority] * len(images)
    scenes = builtin_scenes(dataset.root, [image.name for image in images])
    if scenes is not None:
        for method, captions in predictions.items():
            result[method]["attributes"] = attribute_scores(scenes, captions)

    samples = [{"image_path": str(image.path), "references": list(image.captions),
                "prediction": predictions[methods[0]][i],
                **({"beam": predictions["beam"][i]} if "beam" in predictions else {})}
               for i, image in enumerate(images[:NUM_SAMPLES])]
    evaluation_report(result, samples, run.settings, out / "report.json")
    if attention is not None:  # drawn as per-word heatmaps; not written to report.json
        samples = [dict(sample, attention=attention[i]) for i, sample in enumerate(samples)]
    sample_grid_png(samples, out / "samples.png")
    result["report"] = str(out / "report.json")
    result["samples_png"] = str(out / "samples.png")
    return result


def report_lines(result: dict, methods=("greedy", "beam", "majority_baseline")) -> list[str]:
    """What every command prints of an evaluation: a score line per method and the baseline,
    why METEOR was skipped if it was, and on the built-in data an attribute line per method."""
    methods = [method for method in methods if method in result]
    lines = [score_line(method, result[method]) for method in methods]
    if result.get("meteor_skipped"):
        lines.append(f"METEOR skipped: {result['meteor_skipped']}")
    lines += [attribute_line(method, result[method]["attributes"]) for method in methods
              if "attributes" in result[method]]
    return lines


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run-dir", default="runs/builtin")
    p.add_argument("--data", help="the dataset the run was trained on (omit for built-in)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--methods", nargs="+", default=["greedy", "beam"], choices=["greedy", "beam"])
    args = p.parse_args(argv)
    try:
        result = evaluate_run(args.run_dir, data=args.data, split=args.split,
                              methods=tuple(args.methods))
    except (DatasetError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(report_lines(result)))
    print(f"report: {result['report']}\nsamples: {result['samples_png']}\nCOCO results: "
          + " ".join(result["results_files"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
