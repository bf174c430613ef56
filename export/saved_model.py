"""Export a trained run as `models/<name>/<version>/` for TensorFlow Serving.

    python -m export.saved_model --run-dir runs/builtin --model-base models/captioner --version auto

The version folder is published by export/artifact.py: written beside its final place
(`.tmp-<version>-<pid>`) and renamed into place when complete, because TF Serving polls the base
path and would load a half-written numeric folder.
"""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

if __name__ == "__main__":  # a command: TensorFlow's start-up noise is hidden before anything loads it
    from data.quiet import quiet_command
    quiet_command()

import numpy as np
import tensorflow as tf

from data.files import atomic_write
from export.artifact import SETTINGS, publish_version, write_warmup
from export.contract import ATTENTION, CAPTION_FEATURES, FEATURES_INPUT, IMAGE_INPUT, OUTPUTS, SIGNATURES
from export.signatures import build_archive
from export.precision import EXPORT_PRECISIONS, build_export_encoder, load_export_captioner
from model.encoder import EncoderWeightsError, encoder_id
from model.run_dir import load_run, weights_digest


@dataclasses.dataclass
class ExportConfig:
    # Decoding is fixed at export (the signatures have no knobs); None takes the run's own
    # DecodeConfig (defaults: beam width 3, length penalty 0.7, 30 tokens at most).
    beam_width: int | None = None
    length_penalty: float | None = None
    max_new_tokens: int | None = None
    warmup_images: int = 4        # real images from the run's dataset, per image signature
    precision: str = "float32"    # "float16" | "bfloat16": 16-bit compute for GPU tensor cores
                                  # (export/precision.py); on CPUs serve float32 with the
                                  # server's --mixed_precision=bfloat16 instead


def warmup_requests(images: list[bytes], feature_shape: tuple) -> list[tuple[str, dict]]:
    """One request per signature, replayed by the server at load time."""
    features = {FEATURES_INPUT: np.zeros([1, *feature_shape], np.float32)}
    return [(signature, features if signature == CAPTION_FEATURES
             else {IMAGE_INPUT: np.array(images, dtype=object)}) for signature in SIGNATURES]


def export_run(run_dir, model_base, version="auto", config: ExportConfig | None = None,
               warmup_images: list[bytes] | None = None) -> Path:
    """Writes the SavedModel of a trained run and returns its version folder."""
    config = config or ExportConfig()
    run = load_run(run_dir)
    chosen = {k: v for k, v in dataclasses.asdict(config).items() if v is not None}
    decode = dataclasses.replace(run.decode_config, **{
        k: v for k, v in chosen.items() if k in ("max_new_tokens", "beam_width", "length_penalty")})
    # A run with a trainable top serves the frozen trunk (conv4); its captioner holds the top.
    encoder = build_export_encoder(run.encoder_config, config.precision,
                                   kind=run.model_config.feature_kind)
    captioner = load_export_captioner(run, config.precision)
    archive = build_archive(encoder, captioner, str(run.paths.vocab_file), decode)
    images = warmup_images if warmup_images is not None else _warmup_images(run, config)

    def write(folder: Path, number: int) -> None:
        archive.write_out(str(folder), verbose=False)
        atomic_write(folder / "assets" / "vocab.json", (run.paths.root / "vocab.json").read_bytes())
        atomic_write(folder / SETTINGS, json.dumps({
            "version": number, "precision": config.precision, "decode": dataclasses.asdict(decode),
            "encoder": dataclasses.asdict(run.encoder_config),
            "encoder_id": encoder_id(run.encoder_config),
            "model": run.settings["model"], "signatures": list(SIGNATURES),
            "feature_kind": run.model_config.feature_kind,
            "features_input": [-1, *run.model_config.feature_shape],
            "outputs": list(OUTPUTS) + ([ATTENTION] if run.model_config.attention else []),
            "run_dir": str(run.paths.root.resolve()),
            "weights_digest": weights_digest(run.paths.weights),
            "tensorflow": tf.__version__}, indent=2))
        if images:
            write_warmup(folder, warmup_requests(images, captioner.config.feature_shape))

    return publish_version(model_base, write, version)


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
    p.add_argument("--max-new-tokens", type=int, help="most words generated (default: the run's, 30)")
    p.add_argument("--precision", default="float32", choices=EXPORT_PRECISIONS,
                   help="compute dtype of the graph: float16/bfloat16 for GPU tensor cores; keep "
                        "float32 on CPUs (serve it with --mixed_precision=bfloat16)")
    args = p.parse_args(argv)
    if args.version != "auto" and not args.version.isdigit():
        p.error(f"--version must be 'auto' or a positive number, got {args.version!r}")
    config = ExportConfig(beam_width=args.beam_width, length_penalty=args.length_penalty,
                          max_new_tokens=args.max_new_tokens, precision=args.precision)
    try:
        path = export_run(args.run_dir, args.model_base, args.version, config)
    except (FileNotFoundError, FileExistsError, EncoderWeightsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported {path}  (signatures: {', '.join(SIGNATURES)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
