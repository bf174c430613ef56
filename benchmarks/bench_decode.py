"""Greedy decoding speed from image features through the in-graph decoder (decode_features in a
tf.function with an input_signature, as model/evaluate.py runs it), seed-preset model (embed 256,
units 512), vocabulary 20,013 (the original's) and 7,500 (min count 5 on Flickr30k):

    python -m benchmarks.bench_decode             # ~6 min on 2 shared cores

Prints one JSON object and writes it to benchmarks/results/bench_decode.json (gitignored).

Every caption runs exactly `steps` decoding steps: the model's <end> logit gets a -1e4 bias, so
<end> never wins and ms/step = call time / steps. Variants of the per-step work are timed in the
same process, round-robin (one call of each per repetition) so that other people's load on the
2 shared cores hits them alike; thread settings need a fresh process each (TF fixes its thread
pools at start-up), so they run in child processes of this script, also alternated.

Step variants (all built from the model's weights; "cached" ones hold a snapshot that would go
stale if the weights changed, see the JSON notes):
  captioner_step        Captioner.step as it is in model/captioner.py
  raw_ops_step          the same maths written as raw TF ops on the live variables
  cached_input_table    gather from a precomputed [V, 4U] table (embedding @ kernel + bias)
  cached_concat_kernel  one [1, E+U] x [E+U, 4U] matmul with a precomputed [kernel; recurrent]
  xla_step              Captioner.step in a nested tf.function(jit_compile=True)
  bf16_logits           output projection in bfloat16 (NOT equivalent: for scale only)
plus the whole decoder under jit_compile=True, and an eager Python loop (the original's way).
"""
import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tqdm import tqdm  # noqa: E402

from model.captioner import ModelConfig, build_captioner  # noqa: E402
from data.vocabulary import END_ID, START_ID  # noqa: E402
from model.decoding import DecodeConfig, decode_features  # noqa: E402
from model.presets import PRESETS  # noqa: E402
from model.run_dir import write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
FEATURE_DIM = 2048


@dataclasses.dataclass
class DecodeBenchConfig:
    vocab_sizes: tuple = (20_013, 7_500)
    batch_sizes: tuple = (1, 32)
    steps: int = 40                 # the original decoded up to 40 tokens
    repeats: dict = dataclasses.field(default_factory=lambda: {1: 40, 32: 5})
    thread_settings: tuple = ((0, 0), (1, 1), (2, 1), (1, 2))   # (intra_op, inter_op); 0 = TF's choice
    thread_rounds: int = 2
    seed: int = 0


def never_ending_model(vocab_size: int, seed=0):
    """Seed-preset Captioner with random weights whose <end> never wins (bias -1e4)."""
    tf.random.set_seed(seed)
    model = build_captioner(ModelConfig(vocab_size=vocab_size, **PRESETS["seed"]["model"]))
    bias = model.to_logits.bias.numpy()
    bias[END_ID] = -1e4
    model.to_logits.bias.assign(bias)
    return model


# ---- step variants: model -> step_fn(tokens [N], (h, c)) -> (logits [N, V] float32, (h, c)) ----

def lstm_gates(z, c):
    """Keras LSTM gate order (i, f, c, o), sigmoid/tanh activations."""
    i, f, g, o = tf.split(z, 4, axis=1)
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    return tf.sigmoid(o) * tf.tanh(c), c


def raw_ops_step(model):
    cell, embeddings = model.lstm.cell, model.embedding.embeddings
    kernel, bias = model.to_logits.kernel, model.to_logits.bias

    def step(tokens, state):
        h, c = state
        x = tf.gather(embeddings, tokens)
        z = tf.matmul(x, cell.kernel) + tf.matmul(h, cell.recurrent_kernel) + cell.bias
        h, c = lstm_gates(z, c)
        return tf.matmul(h, kernel) + bias, (h, c)
    return step


def cached_input_table(model):
    cell = model.lstm.cell
    table = tf.constant(tf.matmul(model.embedding.embeddings, cell.kernel) + cell.bias)  # [V, 4U]
    kernel, bias = model.to_logits.kernel, model.to_logits.bias

    def step(tokens, state):
        h, c = state
        z = tf.gather(table, tokens) + tf.matmul(h, cell.recurrent_kernel)
        h, c = lstm_gates(z, c)
        return tf.matmul(h, kernel) + bias, (h, c)
    return step


def cached_concat_kernel(model):
    cell, embeddings = model.lstm.cell, model.embedding.embeddings
    both = tf.constant(tf.concat([cell.kernel, cell.recurrent_kernel], axis=0))  # [E+U, 4U]
    kernel, bias = model.to_logits.kernel, model.to_logits.bias

    def step(tokens, state):
        h, c = state
        x = tf.concat([tf.gather(embeddings, tokens), h], axis=1)
        h, c = lstm_gates(tf.matmul(x, both) + cell.bias, c)
        return tf.matmul(h, kernel) + bias, (h, c)
    return step


def xla_step(model):
    return tf.function(model.step, jit_compile=True)


def bf16_logits(model):
    cell, embeddings = model.lstm.cell, model.embedding.embeddings
    kernel16 = tf.constant(tf.cast(model.to_logits.kernel, tf.bfloat16))
    bias = model.to_logits.bias

    def step(tokens, state):
        h, c = state
        x = tf.gather(embeddings, tokens)
        z = tf.matmul(x, cell.kernel) + tf.matmul(h, cell.recurrent_kernel) + cell.bias
        h, c = lstm_gates(z, c)
        logits = tf.matmul(tf.cast(h, tf.bfloat16), kernel16)
        return tf.cast(logits, tf.float32) + bias, (h, c)
    return step


STEP_VARIANTS = {
    "captioner_step": lambda model: model.step,
    "raw_ops_step": raw_ops_step,
    "cached_input_table": cached_input_table,
    "cached_concat_kernel": cached_concat_kernel,
    "xla_step": xla_step,
    "bf16_logits": bf16_logits,
}
NOTES = {
    "cached_input_table": "snapshot [V, 4U] table: stale after any weight change; 4U/E = 8x "
                          "the embedding's memory (164 MB at V=20,013); computing it from the "
                          "live weights costs 2*V*E*4U FLOPs (21 GFLOP at V=20,013) per refresh",
    "cached_concat_kernel": "snapshot [E+U, 4U] kernel: stale after any weight change",
    "bf16_logits": "bfloat16 output projection: not numerically equivalent, for scale only",
}


# ---- decoders ----

def in_graph_decoder(model, step_fn, steps, jit_compile=False):
    """decode_features in a tf.function with an input_signature, as model/evaluate.py does; the
    step is swapped by handing decode_features an object with the model's initial_state."""
    decoder_model = types.SimpleNamespace(initial_state=model.initial_state, step=step_fn)
    config = DecodeConfig(max_new_tokens=steps)

    @tf.function(input_signature=[tf.TensorSpec([None, FEATURE_DIM], tf.float32)],
                 jit_compile=jit_compile)
    def decode(features):
        return decode_features(decoder_model, features, config, "greedy")
    return decode


def eager_loop_decoder(model, steps):
    """The original's way: a Python loop calling one compiled step per token (greedy argmax)."""
    step = tf.function(model.step)

    def decode(features):
        state = model.initial_state(features)
        tokens = tf.fill([tf.shape(features)[0]], START_ID)
        ids = []
        for _ in range(steps):
            logits, state = step(tokens, state)
            tokens = tf.argmax(logits, axis=-1, output_type=tf.int32)
            ids.append(tokens)
        return tf.stack(ids, axis=1), None
    return decode


def ops_per_step(decode) -> int | None:
    """Nodes in the greedy while-loop body: the graph ops the executor runs per step."""
    try:
        graph_def = decode.get_concrete_function().graph.as_graph_def()
    except AttributeError:
        return None
    bodies = [f for f in graph_def.library.function if "while_body" in f.signature.name]
    return max((len(f.node_def) for f in bodies), default=None)


def call_seconds(decode, features, steps) -> float:
    start = time.perf_counter()
    ids, _ = decode(features)
    ids = ids.numpy()
    seconds = time.perf_counter() - start
    if ids.shape[1] != steps:
        raise RuntimeError(f"decoder ran {ids.shape[1]} steps, expected {steps}")
    return seconds


def max_logit_diff(model, step_fn, batch=4, steps=8, seed=1) -> float:
    """max |logits - Captioner.step's logits| over `steps` teacher-forced steps (same tokens)."""
    rng = np.random.default_rng(seed)
    features = tf.constant(rng.standard_normal((batch, FEATURE_DIM)), tf.float32)
    tokens = rng.integers(4, model.config.vocab_size, (steps, batch)).astype(np.int32)
    reference = state = model.initial_state(features)
    worst = 0.0
    for t in range(steps):
        expected, reference = model.step(tf.constant(tokens[t]), reference)
        got, state = step_fn(tf.constant(tokens[t]), state)
        worst = max(worst, float(tf.reduce_max(tf.abs(expected - tf.cast(got, tf.float32)))))
    return worst


def time_round_robin(decoders: dict, features, steps, repeats) -> dict:
    """{name: [seconds per call]}: one call of every decoder per repetition, after one warm-up."""
    for decode in decoders.values():
        call_seconds(decode, features, steps)
    seconds = {name: [] for name in decoders}
    for _ in range(repeats):
        for name, decode in decoders.items():
            seconds[name].append(call_seconds(decode, features, steps))
    return seconds


def summarise(seconds, baseline, batch, steps) -> dict:
    """Median ms/step and captions/s; the speedup is the median of per-repetition ratios to the
    baseline's call in the same repetition (adjacent in time, so outside load mostly cancels)."""
    median = statistics.median(seconds)
    return {"ms_per_step": round(1000 * median / steps, 3),
            "ms_per_step_min": round(1000 * min(seconds) / steps, 3),
            "captions_per_s": round(batch / median, 1),
            "speedup_vs_captioner_step": round(statistics.median(
                [b / s for b, s in zip(baseline, seconds)]), 3),
            "ms_per_step_all": [round(1000 * s / steps, 3) for s in seconds]}


def bench_vocab(vocab_size: int, config: DecodeBenchConfig) -> dict:
    model = never_ending_model(vocab_size, config.seed)
    steps = config.steps
    rng = np.random.default_rng(config.seed)
    out = {}
    for batch in config.batch_sizes:
        features = tf.constant(rng.standard_normal((batch, FEATURE_DIM)), tf.float32)
        decoders, row = {}, {}
        for name, make in STEP_VARIANTS.items():
            decoders[name] = in_graph_decoder(model, make(model), steps)
        decoders["eager_python_loop"] = eager_loop_decoder(model, steps)
        try:
            whole = in_graph_decoder(model, model.step, steps, jit_compile=True)
            call_seconds(whole, features, steps)
            decoders["xla_whole_decoder"] = whole
        except Exception as error:  # XLA needs static shapes; the growing ids tensor is not
            row["xla_whole_decoder"] = {"error": f"{type(error).__name__}: "
                                                 f"{str(error).splitlines()[0][:200]}"}
        seconds = time_round_robin(decoders, features, steps, config.repeats[batch])
        for name, times in seconds.items():
            row[name] = summarise(times, seconds["captioner_step"], batch, steps)
            row[name]["ops_per_step"] = ops_per_step(decoders[name])
            if name in STEP_VARIANTS and name != "captioner_step":
                diff = max_logit_diff(model, STEP_VARIANTS[name](model))
                row[name]["max_abs_logit_diff"] = float(f"{diff:.3g}")
            if name in NOTES:
                row[name]["note"] = NOTES[name]
        out[f"batch_{batch}"] = row
    first, last = (f"batch_{b}" for b in (config.batch_sizes[0], config.batch_sizes[-1]))
    out[f"captions_per_s_ratio_{last}_over_{first}"] = round(
        out[last]["captioner_step"]["captions_per_s"] / out[first]["captioner_step"]["captions_per_s"], 2)
    out["logits_kernel_mb"] = round(512 * vocab_size * 4 / 2 ** 20, 1)
    return out


# ---- thread settings: one child process per setting ----

def child(intra: int, inter: int, config: DecodeBenchConfig):
    """Runs in a fresh process: thread pools set before any op, then the current step's decoder."""
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    rng = np.random.default_rng(config.seed)
    result = {}
    for vocab_size, batch in ((20_013, 1), (7_500, 1), (20_013, 32)):
        model = never_ending_model(vocab_size, config.seed)
        decode = in_graph_decoder(model, model.step, config.steps)
        features = tf.constant(rng.standard_normal((batch, FEATURE_DIM)), tf.float32)
        seconds = time_round_robin({"d": decode}, features, config.steps, config.repeats[batch])["d"]
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
    out["unit"] = "ms per step (median over all calls of all rounds), current Captioner.step"
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=DecodeBenchConfig.steps)
    p.add_argument("--no-threads", action="store_true", help="skip the thread-setting children")
    p.add_argument("--child-threads", type=int, nargs=2, metavar=("INTRA", "INTER"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    config = DecodeBenchConfig(steps=args.steps)
    if args.child_threads:
        return child(*args.child_threads, config)
    load_before = os.getloadavg()[0]
    result = {"benchmark": "bench_decode", "settings": dataclasses.asdict(config),
              "model": {**PRESETS["seed"]["model"], "feature_dim": FEATURE_DIM},
              "reference_from_issue_ms_per_step": {
                  "tf_while_loop_vocab_20013_batch_1": 1.73,
                  "tf_while_loop_vocab_20013_batch_32": 7.1,
                  "pytorch_eager_loop_batch_1": 0.39}}
    for vocab_size in tqdm(config.vocab_sizes, desc="vocabularies", file=sys.stderr):
        result[f"vocab_{vocab_size}"] = bench_vocab(vocab_size, config)
    if not args.no_threads:
        result["threads"] = bench_threads(config)
    result["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "bench_decode.json", result)


if __name__ == "__main__":
    main()
