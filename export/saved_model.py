"""Export a trained run as `models/<name>/<version>/` for TensorFlow Serving.

    python -m export.saved_model --run-dir runs/builtin --model-base models/captioner --version auto

The version folder is written beside its final place (`.tmp-<version>-<pid>`) and renamed into
place when complete: TF Serving polls the base path and would load a half-written numeric folder.
"""
import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import tensorflow as tf

from export.precision import EXPORT_PRECISIONS, build_export_encoder, load_export_captioner
from export.signatures import SIGNATURES, build_archive
from model.encoder import EncoderWeightsError, encoder_id
from model.run_dir import load_run

WARMUP_FILE = "tf_serving_warmup_requests"
TMP_PREFIX = ".tmp-"


@dataclasses.dataclass
class ExportConfig:
    # Decoding is fixed at export (the signatures have no knobs); None takes the run's own
    # DecodeConfig (defaults: beam width 3, length penalty 0.7, 30 tokens at most).
    beam_width: int | None = None
    length_penalty: float | None = None
    max_length: int | None = None
    warmup_images: int = 4        # real images from the run's dataset, per image signature
    precision: str = "float32"    # "float16" | "bfloat16": 16-bit compute for GPU tensor cores
                                  # (export/precision.py); on CPUs serve float32 with the
                                  # server's --mixed_precision=bfloat16 instead


def next_version(model_base: Path) -> int:
    versions = [int(p.name) for p in model_base.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def _remove_stale_tmp(model_base: Path) -> None:
    """A killed export leaves `.tmp-<version>-<pid>`; the server ignores it, we tidy it."""
    for tmp in model_base.glob(TMP_PREFIX + "*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_warmup(path: Path, images: list[bytes], feature_dim: int) -> None:
    """PredictionLog records the server replays at load time, so no user meets the first (slow,
    graph-initialising) call. One record per signature."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature in SIGNATURES:
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = signature
            if signature == "caption_features":
                value = tf.make_tensor_proto(tf.zeros([1, feature_dim]).numpy())
                request.inputs["features"].CopyFrom(value)
            else:
                request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, tf.string))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def export_run(run_dir, model_base, version="auto", config: ExportConfig | None = None,
               warmup_images: list[bytes] | None = None) -> Path:
    """Writes the SavedModel of a trained run and returns its version folder."""
    config = config or ExportConfig()
    run = load_run(run_dir)
    model_base = Path(model_base)
    model_base.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(model_base)
    version = next_version(model_base) if str(version) == "auto" else int(version)
    final = model_base / str(version)
    if final.exists():
        raise FileExistsError(f"{final} already exists; pass --version auto or a new number")

    chosen = {k: v for k, v in dataclasses.asdict(config).items() if v is not None}
    decode = dataclasses.replace(run.decode_config, **{
        k: v for k, v in chosen.items() if k in ("max_length", "beam_width", "length_penalty")})
    encoder = build_export_encoder(run.encoder_config, config.precision)
    captioner = load_export_captioner(run, config.precision)
    archive = build_archive(encoder, captioner, str(run.paths.vocab_file), decode)

    tmp = model_base / f"{TMP_PREFIX}{version}-{os.getpid()}"
    archive.write_out(str(tmp), verbose=False)
    assets = tmp / "assets"
    assets.mkdir(exist_ok=True)
    shutil.copy(run.paths.root / "vocab.json", assets / "vocab.json")
    (assets / "export_settings.json").write_text(json.dumps({
        "version": version, "precision": config.precision, "decode": dataclasses.asdict(decode),
        "encoder": dataclasses.asdict(run.encoder_config),
        "encoder_id": encoder_id(run.encoder_config),
        "model": run.settings["model"], "signatures": list(SIGNATURES),
        "run_dir": str(run.paths.root.resolve()),
        "weights_digest": hashlib.sha256(run.paths.weights.read_bytes()).hexdigest()[:16],
        "tensorflow": tf.__version__}, indent=2))
    images = warmup_images if warmup_images is not None else _warmup_images(run, config)
    if images:
        write_warmup(tmp / "assets.extra" / WARMUP_FILE, images, captioner.config.feature_dim)
    os.replace(tmp, final)  # atomic on one filesystem: the server sees all of it or nothing
    return final


def _warmup_images(run, config: ExportConfig) -> list[bytes]:
    """A few real images of the run's dataset (the test split, as files on disk)."""
    from data.sources import open_dataset
    from data.splits import split_dataset
    try:
        source = run.settings["data"]["source"]
        images = split_dataset(open_dataset(None if source == "builtin" else source))["test"]
    except Exception as error:  # warmup is an optimisation: never fail an export over it
        print(f"warning: no warmup images ({error})", file=sys.stderr)
        return []
    return [image.path.read_bytes() for image in images[:config.warmup_images]]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run-dir", default="runs/builtin", help="a trained run (model.train)")
    p.add_argument("--model-base", default="models/captioner",
                   help="the folder TF Serving's --model_base_path points at")
    p.add_argument("--version", default="auto", help="'auto' (next number) or a number")
    p.add_argument("--beam-width", type=int, help="default: the run's (3)")
    p.add_argument("--length-penalty", type=float, help="default: the run's (0.7)")
    p.add_argument("--max-length", type=int, help="default: the run's (30)")
    p.add_argument("--precision", default="float32", choices=EXPORT_PRECISIONS,
                   help="compute dtype of the graph: float16/bfloat16 for GPU tensor cores; keep "
                        "float32 on CPUs (serve it with --mixed_precision=bfloat16)")
    args = p.parse_args(argv)
    if args.version != "auto" and not args.version.isdigit():
        p.error(f"--version must be 'auto' or a positive number, got {args.version!r}")
    config = ExportConfig(beam_width=args.beam_width, length_penalty=args.length_penalty,
                          max_length=args.max_length, precision=args.precision)
    try:
        path = export_run(args.run_dir, args.model_base, args.version, config)
    except (FileNotFoundError, FileExistsError, EncoderWeightsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported {path}  (signatures: {', '.join(SIGNATURES)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
