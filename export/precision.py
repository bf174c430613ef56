"""16-bit arithmetic for the served model, the two ways that exist:

1. On CPUs with AMX-BF16 / AVX512-BF16, keep the float32 export and let the server compute in
   bfloat16: `tensorflow_model_server --mixed_precision=bfloat16` switches on grappler's oneDNN
   auto-mixed-precision rewrite. `export.artifact.session_config("bfloat16")` is that same rewrite
   for a TF1 session (export.inspect, the development server, the benchmarks).
2. On GPUs, TF Serving has no such switch (tensorflow/serving issue 1583): the SavedModel itself
   must compute in float16 or bfloat16 to reach tensor cores. `mixed_policy(precision)` builds
   the encoder and captioner under Keras' mixed policy (float32 variables, 16-bit compute);
   `build_export_encoder` keeps ResNet50's final pooling in float32.

What stays float32, and why (the measurements: docs/precision.md#what-stays-float32-and-why):
the random-init ResNet50 features of two images differ by little more than bfloat16 rounds off
each value (2**-9). So the final average pooling runs in float32 (it averages the 7x7 16-bit
activations without rounding the mean), and so does the standardisation after it
(model.standardizers.FeatureStandardizer). Most of the 16-bit error still comes from the
convolutions themselves: float32 pooling takes off only a little of it, but a bfloat16
standardisation would add more.
The logits (the output projection itself, load_export_captioner), the log-softmax and the beam
scores are float32 in every precision (model/decoding.py).
"""
import contextlib

import keras

from model.encoder import build_encoder
from model.settings import MIXED_POLICIES, EncoderConfig

EXPORT_PRECISIONS = ("float32", "float16", "bfloat16")
POOLING_LAYER = "avg_pool"                        # Keras ResNet50's name for pooling="avg"


def check_export_precision(precision: str) -> str:
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"precision must be one of {EXPORT_PRECISIONS}, got {precision!r}")
    return precision


@contextlib.contextmanager
def mixed_policy(precision: str):
    """Keras' global dtype policy for `precision` while models are built, restored afterwards:
    layers keep the policy they were built with, so only construction needs to be inside."""
    check_export_precision(precision)
    policy = MIXED_POLICIES["" if precision == "float32" else precision]
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy(previous)


def load_export_captioner(run, precision: str) -> keras.Model:
    """The run's captioner under the export policy. Its output projection is kept float32 in
    every export (training under mixed_bfloat16 runs it in bfloat16 for speed): served, ResNet50
    takes nearly all the time (docs/benchmarks.md#export), so exact logits cost next to nothing."""
    with mixed_policy(precision):
        captioner = run.load_captioner()
    captioner.to_logits.dtype_policy = keras.DTypePolicy("float32")
    return captioner


def build_export_encoder(config: EncoderConfig, precision: str, kind: str = "pooled"
                         ) -> keras.Model:
    """build_encoder (features of `kind`) under the export policy,
    with the final average pooling in float32 (see the module docstring). The float32 encoder is
    returned unchanged. The map encoders ("spatial", and "conv4" of a run with a trainable top)
    have no pooling: their 16-bit map is cast to float32 before the standardisation."""
    with mixed_policy(precision):
        encoder = build_encoder(config, kind=kind)
    if precision != "float32" and kind == "pooled":
        # A float32 layer casts its 16-bit input up before averaging.
        encoder.get_layer(POOLING_LAYER).dtype_policy = keras.DTypePolicy("float32")
    return encoder
