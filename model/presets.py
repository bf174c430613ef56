"""Named settings. A preset names the model family and the whole recipe: `attention` (what
TrainConfig.preset picks when none is named) is the soft-attention family, the best recipe
measured (docs/attention.md#measured); `pooled` is the pooled model with the same training recipe,
the cheapest to train (one 2048-d vector cached per image); `seed` is the original PyTorch
project's model and optimiser, exactly.

Each preset gives fields of the settings dataclasses by section: "model" (ModelConfig, but the
sizes the data gives), "train" (TrainConfig), and optionally "decode" (DecodeConfig) and
"encoder" (EncoderConfig). Fields a preset leaves out keep their dataclass defaults; train()'s
overrides and the command line's flags set single fields over the preset (model/train.py).
"""
import keras

from model.attention import AttentionCaptioner
from model.base import ModelConfig
from model.captioner import Captioner

PRESETS = {
    # Dense(2048->512, ReLU) -> h0, c0 = 0; Embedding(V, 256); LSTM(512); Dense(V);
    # Adam(1e-3), batch 128, cross-entropy ignoring <pad>, teacher forcing; 5 epochs as the original.
    "seed": {
        "model": {"family": "pooled", "embed_dim": 256, "units": 512, "dropout": 0.0,
                  "image_init_cell": False, "normalize_features": False},
        "train": {"learning_rate": 1e-3, "lr_schedule": "constant", "batch_size": 128,
                  "clipnorm": None, "label_smoothing": 0.0, "epochs": 5},
    },
    # Beyond parity: feature standardisation, dropout, an image-initialised c0, clipping, label
    # smoothing, cosine decay.
    "pooled": {
        "model": {"family": "pooled", "embed_dim": 256, "units": 512, "dropout": 0.3,
                  "image_init_cell": True, "normalize_features": True},
        "train": {"learning_rate": 2e-3, "lr_schedule": "cosine", "batch_size": 128,
                  "clipnorm": 5.0, "label_smoothing": 0.1, "epochs": 20},
    },
    # Soft attention over ResNet50's 7x7 map (model/attention.py): the pooled preset's training
    # recipe, so the two families differ only in what the decoder sees. With random weights, over
    # the conv head's map instead (RANDOM_WEIGHTS).
    # Patience 8: its validation loss can stall for 4 epochs before the cosine schedule's lower
    # rates improve it again (benchmarks/bench_quality.py's runs: history.csv).
    "attention": {
        "model": {"family": "attention", "embed_dim": 256, "units": 512, "attention_units": 512,
                  "dropout": 0.3, "normalize_features": True, "attention_regularizer": 0.0},
        "train": {"learning_rate": 2e-3, "lr_schedule": "cosine", "batch_size": 128,
                  "clipnorm": 5.0, "label_smoothing": 0.1, "epochs": 20, "patience": 8},
    },
}
# What a preset sets over its own when the encoder's weights are random (the built-in data): a
# random ResNet50's 7x7 map blurs the scenes' shapes, which its conv4 output still holds, so the
# attention family attends over the trainable conv head's map (model/top.py), whose 256 channels
# want a smaller attention layer; the built-in scenes' 64-word vocabulary wants a smaller LSTM,
# which halves an epoch's time, and 12 epochs, with a self-critical stage after them (the demo);
# in so few epochs the head learns shape reliably only with twice the word loss.
# Measured in docs/attention.md#measured.
RANDOM_WEIGHTS = {
    "attention": {"model": {"encoder_top": "head", "attention_units": 128, "units": 256,
                            "embed_dim": 128, "word_loss": 2.0},
                  "train": {"epochs": 12}},
}
FAMILY_CLASSES = {"pooled": Captioner, "attention": AttentionCaptioner}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


def build_captioner(config: ModelConfig) -> keras.Model:
    """The captioner of the config's family, with every weight created."""
    return FAMILY_CLASSES[config.family](config, name="captioner").build_for()
