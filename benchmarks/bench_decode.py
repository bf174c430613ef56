"""Greedy decoding speed from image features through the in-graph decoder (decode_features in a
tf.function with an input_signature, as model/evaluate.py runs it), seed-preset model (embed 256,
units 512), vocabulary 20,013 (the original's) and 7,500 (min count 5 on Flickr30k):

    python -m benchmarks.bench_decode             # full run: not timed since the variants went
    python -m benchmarks.bench_decode --quick     # fewer repetitions, no thread children (~1 min)

Prints one JSON object and writes it to benchmarks/results/bench_decode.json (gitignored).

Every caption runs exactly `steps` decoding steps: the model's <end> logit gets a -1e4 bias, so
<end> never wins and ms/step = call time / steps. Batch 1 and batch 32 are timed round-robin in
the same process. Thread settings need a fresh process each (TF fixes its thread pools at
start-up), so they run in child processes of this script, alternated. The step variants measured
and rejected earlier (cached tables, XLA, bfloat16 logits, an eager loop) are findings in
benchmarks/README.md, not code.
"""
import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks._synthetic import FEATURE_DIM  # noqa: E402
from benchmarks._timing import REPO, machine, report, round_robin  # noqa: E402
from model.base import ModelConfig  # noqa: E402
from model.presets import build_captioner  # noqa: E402
from data.vocabulary import END_ID  # noqa: E402
from model.decoding import DecodeConfig, decode_features  # noqa: E402
from model.presets import PRESETS  # noqa: E402


@dataclasses.dataclass
class DecodeBenchConfig:
    vocab_sizes: tuple = (20_013, 7_500)
    batch_sizes: tuple = (1, 32)
    steps: int = 40                 # the original decoded up to 40 tokens
    repeats: dict = dataclasses.field(default_factory=lambda: {1: 40, 32: 5})
    thread_settings: tuple = ((0, 0), (1, 1), (2, 1), (1, 2))   # (intra_op, inter_op); 0 = TF's choice
    thread_rounds: int = 2
    seed: int = 0


QUICK = {"repeats": {1: 8, 32: 2}, "thread_rounds": 0}


def never_ending_model(vocab_size: int, seed=0):
    """Seed-preset Captioner with random weights whose <end> never wins (bias -1e4)."""
    tf.random.set_seed(seed)
    model = build_captioner(ModelConfig(vocab_size=vocab_size, **PRESETS["seed"]["model"]))
    bias = model.to_logits.bias.numpy()
    bias[END_ID] = -1e4
    model.to_logits.bias.assign(bias)
    return model


def in_graph_decoder(model, steps):
    """decode_features in a tf.function with an input_signature, as model/evaluate.py does."""
    config = DecodeConfig(max_new_tokens=steps)

    @tf.function(input_signature=[tf.TensorSpec([None, FEATURE_DIM], tf.float32)])
    def decode(features):
        return decode_features(model, features, config, "greedy")
    return decode


def ops_per_step(decode) -> int | None:
    """Nodes in the greedy while-loop body: the graph ops the executor runs per step."""
    graph_def = decode.get_concrete_function().graph.as_graph_def()
    bodies = [f for f in graph_def.library.function if "while_body" in f.signature.name]
    return max((len(f.node_def) for f in bodies), default=None)


def decode_task(decode, features, steps):
    """One timed call: decode and fetch the ids; checks that every caption ran `steps` steps."""
    def call():
        ids = decode(features)[0].numpy()
        if ids.shape[1] != steps:
            raise RuntimeError(f"decoder ran {ids.shape[1]} steps, expected {steps}")
    return call


def bench_vocab(vocab_size: int, config: DecodeBenchConfig) -> dict:
    model = never_ending_model(vocab_size, config.seed)
    decode = in_graph_decoder(model, config.steps)
    rng = np.random.default_rng(config.seed)
    out = {"ops_per_step": ops_per_step(decode),
           "logits_kernel_mb": round(512 * vocab_size * 4 / 2 ** 20, 1)}
    for batch in config.batch_sizes:
        features = tf.constant(rng.standard_normal((batch, FEATURE_DIM)), tf.float32)
        seconds = round_robin({"d": decode_task(decode, features, config.steps)},
                              config.repeats[batch], desc=f"V={vocab_size} batch {batch}")[0]["d"]
        median = statistics.median(seconds)
        out[f"batch_{batch}"] = {"ms_per_step": round(1000 * median / config.steps, 3),
                                 "ms_per_step_min": round(1000 * min(seconds) / config.steps, 3),
                                 "captions_per_s": round(batch / median, 1),
                                 "ms_per_step_all": [round(1000 * s / config.steps, 3)
                                                     for s in seconds]}
    first, last = (f"batch_{b}" for b in (config.batch_sizes[0], config.batch_sizes[-1]))
    out[f"captions_per_s_ratio_{last}_over_{first}"] = round(
        out[last]["captions_per_s"] / out[first]["captions_per_s"], 2)
    return out


# ---- thread settings: one child process per setting ----

def child(intra: int, inter: int, config: DecodeBenchConfig):
    """Runs in a fresh process: thread pools set before any op, then the decoder."""
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    rng = np.random.default_rng(config.seed)
    result = {}
    for vocab_size, batch in ((20_013, 1), (7_500, 1), (20_013, 32)):
        decode = in_graph_decoder(never_ending_model(vocab_size, config.seed), config.steps)
        features = tf.constant(rng.standard_normal((batch, FEATURE_DIM)), tf.float32)
        seconds = round_robin({"d": decode_task(decode, features, config.steps)},
                              config.repeats[batch])[0]["d"]
        result[f"vocab_{vocab_size}_batch_{batch}"] = [1000 * s / config.steps for s in seconds]
    print(json.dumps(result))


def bench_threads(config: DecodeBenchConfig) -> dict:
    runs = {setting: [] for setting in config.thread_settings}
    jobs = [s for _ in range(config.thread_rounds) for s in config.thread_settings]
    for intra, inter in tqdm(jobs, desc="thread settings", file=sys.stderr):
        done = subprocess.run([sys.executable, "-m", "benchmarks.bench_decode", "--child-threads",
                               str(intra), str(inter)], cwd=REPO, capture_output=True, text=True,
                              check=True)
        runs[(intra, inter)].append(json.loads(done.stdout.strip().splitlines()[-1]))
    out = {}
    for (intra, inter), results in runs.items():
        name = f"intra_{intra}_inter_{inter}" + (" (TF default)" if intra == inter == 0 else "")
        out[name] = {key: round(statistics.median([ms for r in results for ms in r[key]]), 3)
                     for key in results[0]}
    out["unit"] = "ms per step (median over all calls of all rounds), Captioner.step"
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=DecodeBenchConfig.steps)
    p.add_argument("--quick", action="store_true", help="fewer repetitions, no thread children")
    p.add_argument("--no-threads", action="store_true", help="skip the thread-setting children")
    p.add_argument("--child-threads", type=int, nargs=2, metavar=("INTRA", "INTER"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    config = DecodeBenchConfig(steps=args.steps, **(QUICK if args.quick else {}))
    if args.child_threads:
        return child(*args.child_threads, config)
    result = {"benchmark": "bench_decode", "machine": machine(),
              "settings": dataclasses.asdict(config),
              "model": {**PRESETS["seed"]["model"], "feature_dim": FEATURE_DIM},
              "reference_from_issue_ms_per_step": {
                  "tf_while_loop_vocab_20013_batch_1": 1.73,
                  "tf_while_loop_vocab_20013_batch_32": 7.1,
                  "pytorch_eager_loop_batch_1": 0.39}}
    for vocab_size in config.vocab_sizes:
        result[f"vocab_{vocab_size}"] = bench_vocab(vocab_size, config)
    if config.thread_rounds and not args.no_threads:
        result["threads"] = bench_threads(config)
    report("bench_decode", result)


if __name__ == "__main__":
    main()
