"""Greedy decoding ms/step from image features through the in-graph decoder (decode_features in a
tf.function with an input_signature, as model/evaluate.py runs it), seed-preset model with random
weights, V 20,013 (the original's) and 7,500 (min count 5 on Flickr30k), batch 1 and 32:

    python -m benchmarks.bench_decode [--steps 40] [--quick]

Every caption runs exactly `steps` steps: <end> gets a -1e4 bias, so ms/step = call time / steps.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from benchmarks._synthetic import FEATURE_DIM
from benchmarks._timing import machine, median, parse, report, round_robin, rounded
from data.vocabulary import END_ID
from model.base import ModelConfig
from model.decoding import DecodeConfig, decode_features
from model.presets import PRESETS, build_captioner


@dataclasses.dataclass
class DecodeBenchConfig:
    vocab_sizes: tuple = (20_013, 7_500)
    batch_sizes: tuple = (1, 32)
    steps: int = 40                 # the original decoded up to 40 tokens
    repeats: dict = dataclasses.field(default_factory=lambda: {1: 40, 32: 5})
    seed: int = 0


QUICK = {"repeats": {1: 8, 32: 2}}


def in_graph_decoder(vocab_size: int, steps: int, seed: int):
    """A seed-preset Captioner whose <end> never wins, decoded greedily in a tf.function."""
    tf.random.set_seed(seed)
    model = build_captioner(ModelConfig(vocab_size=vocab_size, **PRESETS["seed"]["model"]))
    bias = model.to_logits.bias.numpy()
    bias[END_ID] = -1e4
    model.to_logits.bias.assign(bias)
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


def bench_vocab(vocab_size: int, config: DecodeBenchConfig) -> dict:
    decode = in_graph_decoder(vocab_size, config.steps, config.seed)
    rng = np.random.default_rng(config.seed)
    out = {"ops_per_step": ops_per_step(decode),
           "logits_kernel_mb": round(512 * vocab_size * 4 / 2 ** 20, 1)}
    for batch in config.batch_sizes:
        features = tf.constant(rng.standard_normal((batch, FEATURE_DIM)), tf.float32)

        def call():
            ids = decode(features)[0].numpy()
            if ids.shape[1] != config.steps:
                raise RuntimeError(f"decoder ran {ids.shape[1]} steps, expected {config.steps}")
        seconds = round_robin({"d": call}, config.repeats[batch],
                              desc=f"V={vocab_size} batch {batch}")[0]["d"]
        per_step = [1000 * s / config.steps for s in seconds]
        out[f"batch_{batch}"] = {"ms_per_step": round(median(per_step), 3),
                                 "ms_per_step_min": round(min(per_step), 3),
                                 "captions_per_s": round(batch / median(seconds), 1),
                                 "ms_per_step_all": rounded(per_step)}
    first, last = (f"batch_{b}" for b in (config.batch_sizes[0], config.batch_sizes[-1]))
    out[f"captions_per_s_ratio_{last}_over_{first}"] = round(
        out[last]["captions_per_s"] / out[first]["captions_per_s"], 2)
    return out


def main(argv=None):
    config = parse(__doc__, DecodeBenchConfig, QUICK, argv)[0]
    result = {"benchmark": "bench_decode", "machine": machine(),
              "settings": dataclasses.asdict(config),
              "model": {**PRESETS["seed"]["model"], "feature_dim": FEATURE_DIM},
              "reference_from_issue_ms_per_step": {
                  "tf_while_loop_vocab_20013_batch_1": 1.73,
                  "tf_while_loop_vocab_20013_batch_32": 7.1,
                  "pytorch_eager_loop_batch_1": 0.39}}
    for vocab_size in config.vocab_sizes:
        result[f"vocab_{vocab_size}"] = bench_vocab(vocab_size, config)
    report("bench_decode", result)


if __name__ == "__main__":
    main()
