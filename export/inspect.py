"""Look inside an exported model the way TF Serving does: print its signatures (like
`saved_model_cli show --all`) and caption local image files through the TF1 session loader.

    python -m export.inspect models/captioner                 # latest version
    python -m export.inspect models/captioner/3 --image a.jpg b.png --signature beam_search
"""
import argparse
import sys
from pathlib import Path

if __name__ == "__main__":  # a command: TensorFlow's start-up noise is hidden before anything loads it
    from data.quiet import quiet_command
    quiet_command()

from export.artifact import (SERVER_MIXED_PRECISIONS, SessionModel, export_settings, latest_version,
                             session_config)
from export.contract import IMAGE_SIGNATURES, SERVING_DEFAULT
from export.loaded_model import DTYPE_NAMES, ModelLoadError


def export_precision(export_dir) -> str:
    """The compute precision recorded at export (exports made before it existed are float32)."""
    return export_settings(export_dir).get("precision", "float32")


def describe_signatures(signatures) -> str:
    shape = lambda s: [d.size for d in s.dim]  # noqa: E731
    lines = []
    # "__saved_model_init_op" is the loader's own (it initialises tables), not a servable signature
    for name in sorted(n for n in signatures if not n.startswith("__")):
        sig = signatures[name]
        lines.append(f"signature_def['{name}']  method: {sig.method_name}")
        for kind, tensors in (("input", sig.inputs), ("output", sig.outputs)):
            for key in sorted(tensors):
                t = tensors[key]
                lines.append(f"  {kind} {key}: {DTYPE_NAMES.get(t.dtype, t.dtype)} {shape(t.tensor_shape)}  "
                             f"(tensor {t.name})")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", help="a version folder or a model base folder (latest version)")
    p.add_argument("--image", nargs="*", default=[], help="image files to caption")
    p.add_argument("--signature", default=SERVING_DEFAULT, choices=IMAGE_SIGNATURES)
    p.add_argument("--mixed_precision", default="", choices=SERVER_MIXED_PRECISIONS,
                   help="bfloat16: the server's --mixed_precision=bfloat16 rewrite (AMX CPUs)")
    args = p.parse_args(argv)
    try:
        export_dir = latest_version(args.model)
        images = [Path(f).read_bytes() for f in args.image]
        model = SessionModel(export_dir, session_config(args.mixed_precision))
    except (OSError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with model:
        print(f"{export_dir}\nprecision: {export_precision(export_dir)}  "
              f"session mixed_precision: {args.mixed_precision or 'none'}\n"
              f"{describe_signatures(model.signatures)}")
        for name, result in zip(args.image, model.caption(images, args.signature) if images else []):
            text = result.caption if result.ok else "ERROR: " + result.error
            print(f"{name}\t{text}\t(log_prob {result.log_prob:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
