"""Every setting of a run, in one place: the settings dataclasses by section (each field once,
with its help, which `python -m model.train --help` shows), the presets, what a self-critical
stage changes, and how a run's settings are put together from a preset (or the run it starts
from) and single overrides (model/train.py's run_config; model/run_dir.py reads them back from
a run's settings.json).

    section   dataclass       flags (data.flags.add_flags)
    train     TrainConfig     --epochs, --preset, ...
    model     ModelConfig     --units, --family, --fine-tune-encoder, ...
    decode    DecodeConfig    --beam-width, ...
    encoder   EncoderConfig   --encoder-weights, --encoder-seed, --train-from-images
    scst      ScstConfig      --scst-samples

A preset names the model family and the whole recipe: `attention` (TrainConfig.preset's default)
is the soft-attention family, the best recipe measured (docs/attention.md#measured); `pooled` is
the pooled model with the same training recipe, the cheapest to train (one 2048-d vector cached
per image); `seed` is the original PyTorch project's model and optimiser, exactly. Fields a
preset leaves out keep their dataclass defaults.

No TensorFlow here: the data's input pipeline settings (data.pipeline.PipelineConfig) are made
from TrainConfig's by model/train.py.
"""
import dataclasses
import textwrap
from pathlib import Path

from data.feature_kinds import CONV4_SHAPE, FEATURE_DIM, GRID
from data.flags import check_choices, setting, settings_fields

# Training's Keras dtype policies by precision name; logits and loss stay float32 under both
# 16-bit policies (model.base.logits_dtype, MaskedCaptionLoss).
MIXED_POLICIES = {"": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
FAMILIES = ("pooled", "attention")  # model/captioner.py, model/attention.py
ENCODER_TOPS = ("", "head", "conv5", "auto")  # model/top.py; "auto" is resolved by the weights


@dataclasses.dataclass
class ModelConfig:
    # Given by the data and the encoder, never by a preset or a flag.
    vocab_size: int
    feature_dim: int = FEATURE_DIM
    feature_grid: int = GRID          # locations per side of ResNet50's last map (attention)
    # Settings.
    family: str = setting("pooled", "pooled: the decoder reads ResNet50's pooled vector; "
                          "attention: soft attention over its 7x7 map at every word (model/attention.py)",
                          choices=FAMILIES)
    embed_dim: int = setting(256, "word embedding width")
    units: int = setting(512, "LSTM width")
    dropout: float = setting(0.0, "dropout on embeddings and LSTM outputs (never recurrent: "
                             "cuDNN's condition)")
    image_init_cell: bool = setting(False, "pooled family: c0 = tanh(Dense(features)) instead "
                                    "of zeros")
    normalize_features: bool = setting(
        False, "standardise features with the training images' statistics (saved with the "
        "weights); random-init encoders need it: their features differ little between images")
    attention_units: int = setting(512, "attention family: width of the additive attention's "
                                   "hidden layer")
    attention_regularizer: float = setting(
        0.0, "attention family: weight (lambda) of the doubly stochastic regulariser; "
        "Show, Attend and Tell used 1; 0 = off")
    word_loss: float | None = setting(
        None, "with an encoder top: weight of an auxiliary loss, which words an image's "
        "captions use, predicted from the top's pooled map (a direct signal for every visual "
        "word, which the captioning loss gives the top slowly); none = 1 for the head (what "
        "taught it shape), 0 for conv5 (not measured there); 0 = off")
    encoder_top: str = setting(
        "", "train the encoder's top with the decoder, from the frozen trunk's conv4_x maps "
        "(14x14x1024, cached): head = a small conv head, attention family only (what random "
        "weights need), conv5 = ResNet50's conv5_x stage, BatchNorm frozen (ImageNet weights or "
        "a file; with --init-from a run on frozen features and a lower --learning-rate); the "
        "bare flag picks by --encoder-weights", choices=ENCODER_TOPS, flag="fine-tune-encoder", const="auto")

    def __post_init__(self):
        check_choices(self)
        for name in ("vocab_size", "feature_dim", "embed_dim", "units", "feature_grid",
                     "attention_units"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.attention_regularizer < 0:
            raise ValueError("ModelConfig.attention_regularizer must be >= 0, "
                             f"got {self.attention_regularizer!r}")
        if self.word_loss is not None and self.word_loss < 0:
            raise ValueError(f"ModelConfig.word_loss must be >= 0, got {self.word_loss!r}")
        if self.encoder_top == "auto":
            raise ValueError("ModelConfig.encoder_top 'auto' is chosen by the encoder weights "
                             "first (model.settings.resolve_encoder_top)")
        if self.encoder_top == "head" and self.family == "pooled":
            raise ValueError("the conv head (encoder_top 'head', random weights) trains under "
                             "the attention family only: averaged for the pooled family it "
                             "scored below frozen pooled features (docs/attention.md#measured); "
                             "use --preset attention")

    @property
    def attention(self) -> bool:
        """Whether this is the attention family (what export/ asks)."""
        return self.family == "attention"

    @property
    def word_loss_weight(self) -> float:
        """word_loss, or its default for the top (the field's help)."""
        if self.word_loss is not None:
            return float(self.word_loss) if self.encoder_top else 0.0
        return 1.0 if self.encoder_top == "head" else 0.0

    @property
    def standardizes_decoder_input(self) -> bool:
        """normalize_features standardises what the decoder reads, but after the head: that
        standardises its own conv4 input and ends in BatchNorm, and statistics fixed before
        training would go stale as it learns."""
        return self.normalize_features and self.encoder_top != "head"

    @property
    def feature_kind(self) -> str:
        """The encoder features the model reads (data.feature_kinds.FEATURE_KINDS)."""
        if self.encoder_top:
            return "conv4"
        return "spatial" if self.attention else "pooled"

    @property
    def feature_shape(self) -> tuple:
        """One image's features as the model takes them."""
        if self.encoder_top:
            return CONV4_SHAPE
        if self.attention:
            return (self.feature_grid, self.feature_grid, self.feature_dim)
        return (self.feature_dim,)


def resolve_encoder_top(top: str, weights: str) -> str:
    """ModelConfig.encoder_top for `--fine-tune-encoder` given bare ("auto"): the head for random
    weights, ResNet50's conv5_x stage for ImageNet's or a file's. Others pass unchanged."""
    if top != "auto":
        return top
    return "head" if weights == "random" else "conv5"


@dataclasses.dataclass
class EncoderConfig:
    weights: str = setting("imagenet", "imagenet | random | path to a local ResNet50 notop .h5 "
                           "file (training's default: random for the built-in data, imagenet "
                           "otherwise)")
    seed: int = setting(0, "seed of the random weights")
    # Not part of model.encoder.encoder_id: it changes where features are computed, not what
    # they are.
    train_from_images: bool = setting(
        False, "with --fine-tune-encoder: decode the images in the input pipeline and run the "
        "frozen trunk inside every training step instead of reading cached conv4 maps (for "
        "GPUs, where the trunk costs little)", flag="train-from-images")


@dataclasses.dataclass
class DecodeConfig:
    max_new_tokens: int = setting(30, "decoding: tokens generated at most, <end> included")
    beam_width: int = setting(3, "beam search: beams kept per image")
    length_penalty: float = setting(0.7, "beam search: score = log_prob / length ** this")

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.beam_width < 1:
            raise ValueError(f"beam_width must be >= 1, got {self.beam_width}")
        if self.length_penalty < 0:
            raise ValueError(f"length_penalty must be >= 0, got {self.length_penalty}")


@dataclasses.dataclass
class ScstConfig:
    samples: int = setting(5, "self-critical stage: captions sampled per image; each one's "
                           "baseline is the mean reward of the others")

    def __post_init__(self):
        if self.samples < 2:
            raise ValueError(f"self-critical training needs >= 2 samples per image (the "
                             f"baseline is the other samples' mean), got {self.samples}")


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
    # A longer patience: its validation loss can stall for a few epochs before the cosine
    # schedule's lower rates improve it again (docs/attention.md#measured).
    "attention": {
        "model": {"family": "attention", "embed_dim": 256, "units": 512, "attention_units": 512,
                  "dropout": 0.3, "normalize_features": True, "attention_regularizer": 0.0},
        "train": {"learning_rate": 2e-3, "lr_schedule": "cosine", "batch_size": 128,
                  "clipnorm": 5.0, "label_smoothing": 0.1, "epochs": 20, "patience": 8},
    },
}
# What a preset sets over its own when the encoder's weights are random (the built-in data): a
# random ResNet50's 7x7 map blurs the scenes' shapes, which its conv4 output still holds, so the
# attention family attends over the trainable conv head's map (model/top.py), whose channels
# want a smaller attention layer; the built-in scenes' small vocabulary wants a smaller LSTM,
# which trains faster, and fewer epochs, with a self-critical stage after them (the demo)
# (docs/attention.md#measured, docs/training.md#fine-tuning-the-encoders-top).
RANDOM_WEIGHTS = {
    "attention": {"model": {"encoder_top": "head", "attention_units": 128, "units": 256,
                            "embed_dim": 128},
                  "train": {"epochs": 16}},
}
# What a self-critical stage changes in the recipe of the run it starts from (TrainConfig fields;
# flags still override them). batch_size counts images, each with ScstConfig.samples captions.
# Adam at a small constant rate, as self-critical fine-tuning is usually run on COCO and
# Flickr30k (docs/training.md#self-critical-training-a-later-stage).
SCST_RECIPE = {"learning_rate": 5e-5, "lr_schedule": "constant", "batch_size": 50, "epochs": 10,
               "patience": 3, "label_smoothing": 0.0, "clipnorm": 5.0}
# A short stage, the demo's: a few epochs at a higher rate than the recipe's gain more validation
# CIDEr-D in their time (docs/attention.md#measured).
SHORT_STAGE = {"epochs": 2, "learning_rate": 2e-4}


@dataclasses.dataclass
class TrainConfig:
    preset: str = setting("attention", "the named settings (model/settings.py) that the other "
                          "flags override: attention (the best measured), pooled (the "
                          "cheapest), seed (the original project's)", choices=tuple(PRESETS))
    epochs: int = setting(20, "epochs at most (EarlyStopping may stop sooner)")
    batch_size: int = setting(128, "the global batch, split between replicas and workers")
    learning_rate: float = setting(1e-3, "Adam's learning rate (the start of the schedule)")
    lr_schedule: str = setting("constant", "cosine: decays to 0 over all epochs",
                               choices=("constant", "cosine"))
    clipnorm: float | None = setting(None, "clip every gradient to this norm (none: no clipping)")
    label_smoothing: float = setting(0.0, "share of each target spread over the vocabulary")
    patience: int = setting(4, "EarlyStopping: epochs without a better validation loss")
    min_count: int = setting(5, "vocabulary: words seen at least this often in training captions")
    max_caption_tokens: int = setting(40, "cut longer training captions (tokens, <start> and "
                                      "<end> included; <end> is kept)")
    seed: int = setting(0, "seeds Python, NumPy, TensorFlow and the caption shuffling")
    mixed_precision: str = setting(
        "", "float16 (the bare flag): mixed_float16 with loss scaling, for GPU tensor cores; "
        "bfloat16: mixed_bfloat16, for AMX CPUs, TPUs, Ampere+ GPUs",
        choices=tuple(MIXED_POLICIES), const="float16", metavar="{float16,bfloat16}")
    jit_compile: bool = setting(False, "XLA; off by default: slower for the LSTM on CPU, and "
                                "bucketed shapes recompile per bucket", flag="xla")
    distribute: str = setting("auto", "auto: MirroredStrategy on >1 GPU; multiworker reads "
                              "TF_CONFIG (docs/training.md#several-machines)",
                              choices=("auto", "mirrored", "multiworker", "none"))
    deterministic: bool = setting(False, "also turn on TensorFlow's op determinism")
    # A later stage: a run that starts where another one ended.
    init_from: str | None = setting(
        None, "start from this run's best weights, with its data, vocabulary, model, encoder, "
        "feature cache and recipe (flags still override the recipe)", metavar="RUN_DIR")
    # A frozen or unreachable worker then stops the others instead of hanging them (a killed
    # one is noticed at once: its port refuses).
    worker_timeout_seconds: float = setting(
        300.0, "multiworker: seconds an all-reduce waits for the other workers before failing; "
        "keep it above their skew at the first step (tracing: ~30 s on 2 busy cores)",
        flag="worker-timeout")
    scst: bool = setting(False, "self-critical stage (needs --init-from): optimise the CIDEr-D "
                         "of sampled captions; checkpoints and early stopping watch validation "
                         "CIDEr-D (model/settings.py SCST_RECIPE sets the recipe)")

    def __post_init__(self):
        check_choices(self)
        for name in ("epochs", "batch_size", "min_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_caption_tokens < 3:  # <start>, at least one word, <end>
            raise ValueError(f"max_caption_tokens must be >= 3, got {self.max_caption_tokens}")
        if self.worker_timeout_seconds <= 0:
            raise ValueError("worker_timeout_seconds must be > 0, "
                             f"got {self.worker_timeout_seconds}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.scst and not self.init_from:
            raise ValueError("scst: a self-critical stage starts from a trained run; name it "
                             "with init_from (--init-from RUN_DIR)")

    @property
    def stage(self) -> str:
        return "self-critical" if self.scst else "cross-entropy"


# A run's settings dataclasses by section (of presets and settings.json), with the prefix their
# fields take as train()'s overrides and as flags (EncoderConfig.seed is not TrainConfig.seed).
SECTIONS = {"train": (TrainConfig, ""), "model": (ModelConfig, ""),
            "decode": (DecodeConfig, ""), "encoder": (EncoderConfig, "encoder_"),
            "scst": (ScstConfig, "scst_")}
# {setting's name as an override and a flag: (section, field)}
OVERRIDES = {prefix + field.name: (section, field.name)
             for section, (cls, prefix) in SECTIONS.items() for field in settings_fields(cls)}
# What a run started from another one keeps from it: these decide its vocabulary and the shapes
# of the weights it starts from.
KEPT_FROM_INIT_RUN = ("preset", "min_count", "family", "embed_dim", "units", "attention_units",
                      "image_init_cell", "normalize_features")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every setting of a run; the model's sizes come from the data (model_config)."""
    train: TrainConfig
    model: dict          # every ModelConfig setting
    decode: DecodeConfig
    encoder: EncoderConfig
    scst: ScstConfig

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(vocab_size=vocab_size, **self.model)

    def by_name(self) -> dict:
        """{override name: value} of every setting."""
        sections = {section: self.model if section == "model"
                    else dataclasses.asdict(getattr(self, section)) for section in SECTIONS}
        return {name: sections[section][field] for name, (section, field) in OVERRIDES.items()}


def check_overrides(overrides: dict) -> None:
    """ValueError naming the overrides that are no setting's name (OVERRIDES)."""
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; expected any of {sorted(OVERRIDES)}")


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


def preset_fields(name: str, data, weights: str | None = None) -> dict:
    """{section: {field: value}} of a preset, over the dataclasses' defaults, with its
    RANDOM_WEIGHTS settings when the encoder's weights (`weights`, else the data's default) are
    random."""
    fields = {section: {} for section in SECTIONS}
    fields["model"] = {field.name: field.default for field in settings_fields(ModelConfig)}
    fields["encoder"]["weights"] = "imagenet" if data else "random"
    random_weights = (weights or fields["encoder"]["weights"]) == "random"
    sections = [preset(name), RANDOM_WEIGHTS.get(name, {}) if random_weights else {}]
    for section, values in (item for part in sections for item in part.items()):
        fields[section].update(values)
    fields["train"]["preset"] = name
    return fields


def init_run_fields(saved: dict, init_from, preset_name, data, overrides: dict) -> dict:
    """{section: {field: value}} of the run a new one starts from (`saved`, the settings.json of
    the run in folder `init_from`), but its stage (init_from, scst). Refuses a preset, data or
    override that would change what the new run keeps from it (KEPT_FROM_INIT_RUN)."""
    fields = {}
    for section, (cls, _) in SECTIONS.items():
        known = {field.name for field in settings_fields(cls)}
        values = saved.get(section, {})
        fields[section] = {name: values[name] for name in known if name in values}
    fields["train"].update(init_from=None, scst=False)
    if data and not same_data(data, saved["data"]["source"]):
        raise ValueError(f"data {data}: a run started from {init_from} trains on its data "
                         f"({saved['data']['source']}); leave --data out")
    given = dict(overrides, **({"preset": preset_name} if preset_name else {}))
    for name in KEPT_FROM_INIT_RUN:
        section, field = OVERRIDES[name]
        if name in given and given[name] != fields[section].get(field):
            raise ValueError(f"{name}={given[name]!r}: a run started from {init_from} "
                             f"keeps its {name} ({fields[section].get(field)!r})")
    return fields


def same_data(data, source: str) -> bool:
    """Whether `data` (given now) names the dataset a run recorded as its source."""
    if source == "builtin":
        return not data
    return bool(data) and Path(data).expanduser().resolve() == Path(source).expanduser().resolve()


def with_overrides(fields: dict, overrides: dict) -> RunConfig:
    """The RunConfig of `fields` ({section: {field: value}}, a preset's or a run's) after a
    self-critical stage's SCST_RECIPE, then `overrides` (by OVERRIDES name), then the encoder top
    chosen by the weights (resolve_encoder_top)."""
    if overrides.get("scst"):
        fields["train"].update(SCST_RECIPE)
    for name, value in overrides.items():
        section, field = OVERRIDES[name]
        fields[section][field] = value
    fields["model"]["encoder_top"] = resolve_encoder_top(fields["model"]["encoder_top"],
                                                         fields["encoder"]["weights"])
    return RunConfig(train=TrainConfig(**fields["train"]), model=fields["model"],
                     decode=DecodeConfig(**fields["decode"]),
                     encoder=EncoderConfig(**fields["encoder"]),
                     scst=ScstConfig(**fields["scst"]))


def presets_text(width: int = 96) -> str:
    """Every preset's settings, and what a self-critical stage changes, for --help."""
    lines = ["The defaults shown are the attention preset's, on the built-in data. Presets (a "
             "setting flag",
             "given sets its field over the preset's value):"]
    for name, sections in PRESETS.items():
        values = " ".join(f"{field}={value}" for fields in sections.values()
                          for field, value in fields.items())
        lines += textwrap.wrap(values, width, initial_indent=f"  {name:<10}",
                               subsequent_indent=" " * 12)
    lines += ["", "A later stage starts from a trained run (--init-from RUN_DIR) with its "
                  "settings; --scst then sets:"]
    lines += textwrap.wrap(" ".join(f"{k}={v}" for k, v in SCST_RECIPE.items()), width,
                           initial_indent=" " * 12, subsequent_indent=" " * 12)
    lines += ["  e.g. python -m model.train --init-from runs/builtin --scst   "
              "(writes runs/builtin-self-critical)"]
    return "\n".join(lines)
