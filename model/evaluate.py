"""Evaluate a trained run on a split: corpus BLEU-1..4 over all references (NLTK), BLEU and CIDEr-D
(pycocoevalcap), greedy and beam search, a JSON report and a PNG grid of samples (with each word's
attention map for the attention model).

    python -m model.evaluate --run-dir runs/builtin [--data DIR] [--split test] [--methods greedy beam]
"""
import argparse
import logging
import sys

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from data.feature_cache import load_features
from data.layouts import DatasetError
from data.sources import open_dataset
from data.splits import split_dataset
from model.decoding import DecodeConfig, decode_features, ids_to_captions, words_table
from model.metrics import caption_scores, evaluation_report, majority_baseline, score_line
from model.plots import sample_grid_png
from model.run_dir import load_run

log = logging.getLogger("evaluate")
NUM_SAMPLES = 9


def caption_features(captioner, tokens, features: np.ndarray, decode: DecodeConfig,
                     method="greedy", batch_size=64, progress=True, return_attention=False):
    """In-process captions for features [n, F] (or [n, 7, 7, F] for the attention model),
    through the one in-graph decoder. Returns (captions list[str], log_probs np.ndarray [n]),
    plus with return_attention the per-word maps [n, max_new_tokens, 7, 7] (attention models)."""
    table = words_table(tokens=tokens)

    @tf.function(input_signature=[tf.TensorSpec([None, *features.shape[1:]], tf.float32)])
    def run(batch):
        ids, log_prob, *maps = decode_features(captioner, batch, decode, method, return_attention)
        return (ids_to_captions(ids, table), log_prob, *maps)

    captions, log_probs, attention = [], [], []
    starts = range(0, len(features), batch_size)
    for start in tqdm(starts, desc=f"{method} decoding", unit="batch", disable=not progress):
        batch = np.asarray(features[start:start + batch_size], np.float32)  # float16 caches
        text, log_prob, *maps = run(tf.constant(batch))
        captions += [t.decode("utf-8") for t in text.numpy()]
        log_probs.append(log_prob.numpy())
        attention += [m.numpy() for m in maps]
    log_probs = np.concatenate(log_probs) if log_probs else np.zeros([0], np.float32)
    if not return_attention:
        return captions, log_probs
    grid = tuple(features.shape[1:3])
    empty = np.zeros([0, decode.max_new_tokens, *grid], np.float32)
    return captions, log_probs, (np.concatenate(attention) if attention else empty)


def evaluate_run(run_dir, data=None, split="test", methods=("greedy", "beam"), features=None,
                 dataset=None) -> dict:
    """Scores of every method on `split`, plus the caption-the-majority baseline; writes
    evaluation/report.json and evaluation/samples.png in the run folder."""
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

    captioner = run.load_captioner()
    result = {"split": split, "images": len(images)}
    predictions, attention = {}, None
    for method in methods:
        # The attention model's maps of the first method's captions go into samples.png.
        maps = run.model_config.attention and method == methods[0]
        predictions[method], _, *found = caption_features(
            captioner, run.vocabulary.tokens, split_features, run.decode_config, method,
            return_attention=maps)
        attention = found[0] if found else attention
        result[method] = caption_scores(references, predictions[method])
    train_captions = [c for image in splits["train"] for c in image.captions]
    result["majority_baseline"] = majority_baseline(train_captions, references)

    samples = [{"image_path": str(image.path), "references": list(image.captions),
                "prediction": predictions[methods[0]][i],
                **({"beam": predictions["beam"][i]} if "beam" in predictions else {})}
               for i, image in enumerate(images[:NUM_SAMPLES])]
    out = run.paths.evaluation
    out.mkdir(parents=True, exist_ok=True)
    evaluation_report(result, samples, run.settings, out / "report.json")
    if attention is not None:  # drawn as per-word heatmaps; not written to report.json
        samples = [dict(sample, attention=attention[i]) for i, sample in enumerate(samples)]
    sample_grid_png(samples, out / "samples.png")
    result["report"] = str(out / "report.json")
    result["samples_png"] = str(out / "samples.png")
    return result


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
    for method in (*args.methods, "majority_baseline"):
        print(score_line(method, result[method]))
    print(f"report: {result['report']}\nsamples: {result['samples_png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
