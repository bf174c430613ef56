"""The exported captioner through TF Serving's session path (JSON):

    python -m benchmarks.bench_export [--quick]    # the first time, it also trains and exports
                                                   # benchmarks/_trained_model.py's model

serving_default (image bytes -> caption) vs the same ResNet50 on the same images decoded in
memory, called the fastest in-process way; beam_search; batch-1 latency; where serving_default's
time goes (its stages as endpoints of a SavedModel of the same weights).
"""
import dataclasses
import tempfile
from pathlib import Path

if __name__ == "__main__":  # a command: TensorFlow's start-up noise is hidden before anything loads it
    from data.quiet import quiet_command
    quiet_command()

import numpy as np
import tensorflow as tf

from benchmarks._synthetic import photo_jpegs
from benchmarks._timing import (REPO, latency, machine, median, ms, paired, parse, report,
                                round_robin, rounded)
from benchmarks._trained_model import ensure_benchmark_model
from data.images import decode_batch
from export.artifact import SessionModel, latest_version
from model.decoding import decode_features
from model.encoder import build_encoder
from model.run_dir import load_run


@dataclasses.dataclass
class ExportBenchConfig:
    batch_size: int = 32
    repeats: int = 9            # round-robin repetitions; medians are reported
    latency_calls: int = 50
    warmup_calls: int = 2       # per callable, untimed (graph initialisation, tf.data threads)
    calibration_calls: int = 2  # per bare-encoder calling style, to pick the fastest
    profile: bool = True
    workdir: str = "benchmarks/work"


QUICK = {"batch_size": 8, "repeats": 2, "latency_calls": 5, "calibration_calls": 1}


def bare_encoder(encoder, pixels, calls: int):
    """(name, call): the quickest in-process way of calling ResNet50 on a float batch here:
    tf.function, predict_on_batch or an XLA tf.function."""
    spec = [tf.TensorSpec([None, 224, 224, 3], tf.float32)]
    graph, xla = (tf.function(lambda x: encoder(x, training=False), input_signature=spec,
                              jit_compile=jit) for jit in (False, True))
    callers = {"tf_function": lambda: graph(pixels).numpy(),
               "predict_on_batch": lambda: np.asarray(encoder.predict_on_batch(pixels)),
               "tf_function_xla": lambda: xla(pixels).numpy()}
    times = round_robin(callers, calls, desc="calibration")[0]
    name = min(times, key=lambda caller: median(times[caller]))
    return name, callers[name]


def profile_model(run_dir: Path, path: Path) -> SessionModel:
    """A SavedModel with serving_default's stages as endpoints (export/ untouched), loaded."""
    import keras
    run = load_run(run_dir)
    encoder, captioner = build_encoder(run.encoder_config), run.load_captioner()
    archive = keras.export.ExportArchive()
    archive.track(encoder)
    archive.track(captioner)
    image_bytes = [tf.TensorSpec([None], tf.string, name="image_bytes")]
    archive.add_endpoint(  # a per-image mean keeps the fetched output small
        "decode_only", lambda data: {"mean": tf.reduce_mean(decode_batch(data)[0], [1, 2, 3])},
        input_signature=image_bytes)
    archive.add_endpoint(
        "decode_encode", lambda data: {"features": encoder(decode_batch(data)[0], training=False)},
        input_signature=image_bytes)
    archive.add_endpoint(  # the greedy loop without the id -> word lookup
        "decoder_ids", lambda f: {"ids": decode_features(captioner, f, run.decode_config,
                                                         "greedy")[0]},
        input_signature=[tf.TensorSpec([None, captioner.config.feature_dim], tf.float32,
                                       name="features")])
    archive.write_out(str(path), verbose=False)
    return SessionModel(path)


def run_benchmark(config: ExportBenchConfig) -> dict:
    run_dir, model_base = ensure_benchmark_model(config.workdir)
    images, version_dir = photo_jpegs(config.batch_size), latest_version(model_base)
    result = {"benchmark": "bench_export", "machine": machine(), "model": str(version_dir),
              "config": dataclasses.asdict(config)}
    exported = SessionModel(version_dir)
    # The bare encoder's input: the same images through the same decode path, once, in memory.
    pixels, errors = decode_batch(tf.constant(images))
    assert not any(errors.numpy()), f"benchmark images failed to decode: {errors.numpy()}"
    bare_name, bare = bare_encoder(build_encoder(load_run(run_dir).encoder_config),
                                   tf.identity(pixels), config.calibration_calls)
    features = bare()
    on_images = lambda model, signature: lambda: model.run(  # noqa: E731
        signature, {"image_bytes": np.array(images, dtype=object)})
    # Neighbours are compared (round_robin): serving_default beside the bare encoder (the
    # headline) and beam_search; decode_only beside decode_encode (their difference).
    tasks = {"caption_features": lambda: exported.run("caption_features", {"features": features})}
    if config.profile:
        with tempfile.TemporaryDirectory(dir=REPO / config.workdir) as tmp:
            profile = profile_model(run_dir, Path(tmp) / "profile")
        same_weights = np.max(np.abs(on_images(profile, "decode_encode")()["features"] - features))
        tasks.update({"decoder_ids": lambda: profile.run("decoder_ids", {"features": features}),
                      "decode_only": on_images(profile, "decode_only"),
                      "decode_encode": on_images(profile, "decode_encode")})
    tasks.update({"beam_search": lambda: exported.caption(images, "beam_search"),
                  "serving_default": lambda: exported.caption(images), "bare_encoder": bare})
    times = round_robin(tasks, config.repeats, config.warmup_calls)[0]

    per_s = {name: round(config.batch_size / median(t), 2) for name, t in times.items()}
    ratios, greedy = paired(times, "bare_encoder", "serving_default"), exported.caption(images)
    result["end_to_end"] = {
        "exported_serving_default_images_per_s": per_s["serving_default"],
        "bare_encoder_images_per_s": per_s["bare_encoder"], "bare_encoder_call": bare_name,
        "ratio_exported_over_bare": round(median(ratios), 3),
        "ratio_per_repetition": rounded(ratios),
        "mean_caption_words": round(float(np.mean([len(r.caption.split()) for r in greedy])), 1),
        "sample_caption": greedy[0].caption}
    result["beam_vs_greedy"] = {
        "beam_search_images_per_s": per_s["beam_search"],
        "serving_default_images_per_s": per_s["serving_default"],
        "ratio_beam_over_greedy": round(median(paired(times, "serving_default", "beam_search")), 3)}
    if config.profile:
        # Differences of calls made within one repetition, then the median over repetitions. On
        # shared cores a whole call varies by more than a small stage costs, so those may come out
        # negative.
        t = {name: np.array(values) for name, values in times.items()}
        stages = {"decode_and_preprocess": t["decode_only"],
                  "resnet50": t["decode_encode"] - t["decode_only"],
                  "decoder_while_loop": t["decoder_ids"],
                  "id_to_word_lookup": t["caption_features"] - t["decoder_ids"],
                  "remainder": t["serving_default"] - t["decode_encode"] - t["caption_features"]}
        result["profile"] = {
            "serving_default_ms": ms(np.median(t["serving_default"])),
            "stages_share": {k: round(float(np.median(v / t["serving_default"])), 3)
                             for k, v in stages.items()},
            "same_weights_check_max_abs_feature_diff": float(same_weights)}
        profile.close()
    result["latency_batch1"] = latency({"batch_1": lambda image: exported.caption([image])},
                                       images, config.latency_calls,
                                       config.warmup_calls + 1)["batch_1"]
    exported.close()
    return result


def main(argv=None):
    report("bench_export", run_benchmark(parse(__doc__, ExportBenchConfig, QUICK, argv)[0]))


if __name__ == "__main__":
    main()
