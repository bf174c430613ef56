"""Train the captioner with `keras fit` from cached ResNet50 features.

    python -m model.train                                   # built-in data, default preset
    python -m model.train --data ~/flickr30k --encoder-weights imagenet --run-dir runs/f30k
    python -m model.train --preset seed                     # the original project's exact model
    python -m model.train --preset attention --run-dir runs/attention   # Show, Attend and Tell
    TF_CONFIG=... python -m model.train --distribute multiworker --run-dir /shared/run  # per machine

Kill it at any time and run the same command again: BackupAndRestore resumes at the last finished
epoch. At the end it writes the loss curve, evaluates BLEU on the test split and writes a summary.
Several machines: README "Several machines" (tests/model/test_multiworker.py runs it on one).
"""
import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import keras
import tensorflow as tf

from data.layouts import DatasetError
from data.pipeline import PipelineConfig, evaluation_dataset, training_dataset
from data.sources import open_dataset
from data.splits import split_dataset
from data.vocabulary import Vocabulary
from model.base import MIXED_POLICIES, MaskedCaptionLoss, ModelConfig
from model.decoding import DecodeConfig
from model.encoder import EncoderConfig, EncoderWeightsError
from model.features import default_cache_dir, ensure_features
from model.history import best_val_loss, history_summary
from model.metrics import score_line
from model.plots import loss_curve_png
from model.presets import PRESETS, build_captioner, preset
from model.run_dir import RunPaths, write_json

log = logging.getLogger("train")
# How long a worker waits for another one extracting into the same feature cache (Flickr30k's
# 31k images take about an hour on 2 CPU cores).
CACHE_LOCK_WAIT_SECONDS = 3 * 3600
WORKER_LOST = ("multi-worker training stopped: another worker died or stopped answering. "
               "Start every worker again with the same command: training resumes from the last "
               "finished epoch (BackupAndRestore).")
WORKER_LOST_EXIT_CODE = 3



@dataclasses.dataclass
class TrainConfig:
    preset: str = "default"
    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"        # "constant" | "cosine" (decays to 0 over all epochs)
    clipnorm: float | None = None
    label_smoothing: float = 0.0
    patience: int = 4                    # EarlyStopping on val_loss
    min_count: int = 5                   # vocabulary minimum count
    max_caption_tokens: int = 40         # <start>, <end> included; longer training captions
                                         # are cut, keeping <end> (rare on Flickr30k)
    seed: int = 0
    mixed_precision: str = ""            # "" float32; "float16": mixed_float16 with loss scaling
                                         # (GPU tensor cores); "bfloat16": mixed_bfloat16, no
                                         # loss scaling (AMX CPUs, TPUs, Ampere+ GPUs)
    jit_compile: bool = False            # measured on CPU: XLA ran the LSTM at half speed; and
                                         # bucketed shapes would recompile for every bucket
    distribute: str = "auto"             # "auto": MirroredStrategy when >1 GPU; "mirrored";
                                         # "multiworker" (TF_CONFIG, see README); "none"
    deterministic: bool = False          # tf.config.experimental.enable_op_determinism()
    # Multi-worker only: how long a gradient or metric all-reduce waits for the other workers
    # before this one gives up, so a worker whose machine froze or dropped off the network stops
    # the others instead of hanging them (a killed worker is noticed at once: its port refuses).
    # Must exceed the workers' skew at the first step (tracing: ~30 s on a busy 2-core machine).
    worker_timeout_seconds: float = 300.0

    def __post_init__(self):
        if isinstance(self.mixed_precision, bool):  # settings.json of runs before bfloat16
            self.mixed_precision = "float16" if self.mixed_precision else ""
        if self.mixed_precision not in MIXED_POLICIES:
            raise ValueError(f"mixed_precision must be one of {sorted(MIXED_POLICIES)}, "
                             f"got {self.mixed_precision!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.distribute not in ("auto", "mirrored", "multiworker", "none"):
            raise ValueError("distribute must be auto, mirrored, multiworker or none, "
                             f"got {self.distribute!r}")
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


def choose_strategy(mode: str, worker_timeout_seconds: float | None = None
                    ) -> tf.distribute.Strategy:
    """One GPU or CPU: the default strategy. Several GPUs (or, for tests, several logical CPUs
    with mode="mirrored"): MirroredStrategy, which all-reduces gradients between replicas.
    Several machines: MultiWorkerMirroredStrategy, configured by the TF_CONFIG variable.

    Call it before any other TensorFlow work in the process: MultiWorkerMirroredStrategy
    configures collective ops when the runtime starts, and refuses ("Collective ops must be
    configured at program startup") once anything has run."""
    if mode == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=worker_timeout_seconds))
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if mode == "none" or (mode == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    devices = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)


def worker_paths(run_dir: Path, strategy: tf.distribute.Strategy) -> RunPaths:
    """Where this process writes. The chief (worker 0) owns the run folder; every other worker
    of a multi-worker run writes its own copies (checkpoint, history, backup) under
    <run>/workers/worker-<index>/, so no two processes ever write one file, and each worker finds
    its own backup when the run is restarted."""
    if strategy.extended.should_checkpoint:
        return RunPaths(run_dir)
    resolver = strategy.cluster_resolver
    return RunPaths(run_dir / "workers" / f"{resolver.task_type}-{resolver.task_id}")


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Several workers each read the whole (in-memory, seeded) pipeline and keep their share of
    every global batch: there are no files to shard by."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def caption_tokens(images, vocabulary: Vocabulary, row_of: dict):
    """(image row in the feature matrix, token ids) for every caption of images with features.
    Over-long captions are cut by the pipeline (PipelineConfig.max_caption_tokens), which keeps
    <end>."""
    rows, tokens = [], []
    for image in images:
        if image.name not in row_of:
            continue  # its image failed to decode: counted by feature extraction
        for caption in image.captions:
            rows.append(row_of[image.name])
            tokens.append(vocabulary.encode(caption))
    return rows, tokens


def make_optimizer(config: TrainConfig, steps_per_epoch: int):
    learning_rate = config.learning_rate
    if config.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=max(1, steps_per_epoch * config.epochs))
    return keras.optimizers.Adam(learning_rate, clipnorm=config.clipnorm)


class EpochTimer(keras.callbacks.Callback):
    """Adds the epoch's wall-clock seconds (training and validation) to its logs, so CSVLogger
    writes them to history.csv and the summary can report time per epoch."""

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._started


def callbacks(paths: RunPaths, config: TrainConfig):
    return [
        EpochTimer(),  # first: the callbacks after it see its entry in the same logs
        keras.callbacks.BackupAndRestore(str(paths.backup)),
        keras.callbacks.ModelCheckpoint(str(paths.weights), monitor="val_loss", save_best_only=True,
                                        save_weights_only=True,
                                        initial_value_threshold=best_val_loss(paths.history)),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience),
        keras.callbacks.CSVLogger(str(paths.history), append=True),
        keras.callbacks.TensorBoard(str(paths.tensorboard)),
    ]


def train(run_dir, data=None, train_config: TrainConfig | None = None,
          model_overrides: dict | None = None, encoder_config: EncoderConfig | None = None,
          cache_dir=None, decode_config: DecodeConfig | None = None, evaluate=True,
          verbose=1) -> dict:
    """The whole run: data -> vocabulary -> features -> fit -> loss curve -> test BLEU -> summary.
    Returns the summary dict (also written to summary.json)."""
    train_config = train_config or TrainConfig()
    decode_config = decode_config or DecodeConfig()
    # First: see choose_strategy.
    strategy = choose_strategy(train_config.distribute, train_config.worker_timeout_seconds)
    is_chief = strategy.extended.should_checkpoint
    paths = worker_paths(Path(run_dir), strategy)
    paths.root.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(train_config.seed)
    if train_config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if train_config.mixed_precision:
        keras.mixed_precision.set_global_policy(MIXED_POLICIES[train_config.mixed_precision])

    dataset = open_dataset(data)
    if encoder_config is None:  # the built-in data has no ImageNet weights to rely on
        encoder_config = EncoderConfig(weights="random" if not data else "imagenet")
    splits = split_dataset(dataset)
    train_captions = [c for image in splits["train"] for c in image.captions]
    vocabulary = Vocabulary.build(train_captions, min_count=train_config.min_count)
    vocabulary.save(paths.root)
    log.info("vocabulary: %d tokens, %.1f%% of training tokens covered",
             len(vocabulary), 100 * vocabulary.coverage)

    # The attention family reads ResNet50's 7x7 maps (float16 on disk), the others pooled vectors.
    spatial = bool((model_overrides or {}).get("attention"))
    cache_dir = Path(cache_dir or default_cache_dir(data, encoder_config, spatial=spatial))
    # Workers sharing one cache folder take turns: one extracts, the others wait and reuse it.
    lock_wait = CACHE_LOCK_WAIT_SECONDS if train_config.distribute == "multiworker" else 0
    extraction = ensure_features(dataset.images, cache_dir, encoder_config, spatial=spatial,
                                 lock_wait_seconds=lock_wait)
    dataset.skipped.merge(extraction.skipped)  # undecodable images join the reader's skips
    names, features = extraction.names, extraction.features
    row_of = {name: i for i, name in enumerate(names)}

    pipeline = PipelineConfig(batch_size=train_config.batch_size, seed=train_config.seed,
                              max_caption_tokens=train_config.max_caption_tokens)
    train_rows, train_tokens = caption_tokens(splits["train"], vocabulary, row_of)
    val_rows, val_tokens = caption_tokens(splits["val"], vocabulary, row_of)
    train_ds = shard_by_data(training_dataset(features, train_rows, train_tokens, pipeline))
    val_ds = shard_by_data(evaluation_dataset(features, val_rows, val_tokens, pipeline))
    # Counted by the pipeline: length buckets add partial batches to ceil(captions / batch).
    steps_per_epoch = int(train_ds.cardinality())

    model_config = ModelConfig(vocab_size=len(vocabulary), feature_dim=int(features.shape[-1]),
                               **({"feature_grid": int(features.shape[1])} if spatial else {}),
                               **(model_overrides or {}))
    settings = {
        "data": {"source": str(data) if data else "builtin", "layout": dataset.layout,
                 "images": len(dataset.images), "captions": dataset.num_captions,
                 "split_images": {k: len(v) for k, v in splits.items()},
                 "skipped": dataset.skipped.as_dict(), "feature_cache": str(cache_dir)},
        "encoder": dataclasses.asdict(encoder_config),
        "model": dataclasses.asdict(model_config),
        "train": dataclasses.asdict(train_config),
        "decode": dataclasses.asdict(decode_config),
        "vocabulary": vocabulary.settings() if hasattr(vocabulary, "settings") else {},
    }
    write_json(paths.settings, settings)

    with strategy.scope():
        captioner = build_captioner(model_config)
        if captioner.feature_norm is not None:  # training images' statistics only
            if spatial:  # reads the rows in chunks instead of copying 49 x 2048 values each
                captioner.feature_norm.adapt(features, rows=sorted(set(train_rows)))
            else:
                captioner.feature_norm.adapt(features[sorted(set(train_rows))])
        captioner.compile(optimizer=make_optimizer(train_config, steps_per_epoch),
                          loss=MaskedCaptionLoss(train_config.label_smoothing),
                          jit_compile=train_config.jit_compile)
    log.info("training on %d replica(s), %d captions/epoch", strategy.num_replicas_in_sync,
             len(train_tokens))
    captioner.fit(train_ds, validation_data=val_ds, epochs=train_config.epochs,
                  callbacks=callbacks(paths, train_config), verbose=verbose)

    loss_curve_png(paths.history, paths.loss_curve)
    summary = {"settings": settings, "replicas": strategy.num_replicas_in_sync,
               "global_batch_size": train_config.batch_size,
               "train_captions": len(train_tokens),
               "steps_per_epoch": steps_per_epoch,
               "optimizer_steps": int(captioner.optimizer.iterations.numpy()),
               **history_summary(paths.history)}
    if evaluate and is_chief:  # one evaluation per run, not one per worker
        from model.evaluate import evaluate_run
        summary["test"] = evaluate_run(paths.root, data=data, features=(names, features),
                                       dataset=dataset)
    write_json(paths.summary, summary)
    return summary


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", help="Flickr30k/Flickr8k folder (any known layout) or a prepared "
                                   "TFDS data dir; omit for the built-in generated dataset")
    p.add_argument("--run-dir", default="runs/builtin", help="where checkpoints and logs go")
    p.add_argument("--cache-dir", help="feature cache (default: cache/<data>-<encoder>, "
                                       "with -spatial for the attention preset)")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--lr-schedule", choices=["constant", "cosine"])
    p.add_argument("--clipnorm", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--dropout", type=float)
    p.add_argument("--image-init-cell", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--attention-regularizer", type=float, metavar="LAMBDA",
                   help="attention preset: weight of the doubly stochastic regulariser "
                        "(Xu et al. use 1; default 0 = off)")
    p.add_argument("--min-count", type=int)
    p.add_argument("--patience", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--encoder-weights", help="imagenet | random | path to a local ResNet50 "
                                              "notop .h5 file (default: random for the built-in "
                                              "data, imagenet otherwise)")
    p.add_argument("--mixed-precision", nargs="?", const="float16", default="",
                   choices=["float16", "bfloat16"], help="float16 (the default without a value): "
                   "mixed_float16, GPUs; bfloat16: mixed_bfloat16, AMX CPUs, TPUs, Ampere+ GPUs")
    p.add_argument("--xla", action="store_true", help="jit_compile=True (slower on CPU)")
    p.add_argument("--distribute", choices=["auto", "mirrored", "multiworker", "none"],
                   help="auto: MirroredStrategy on >1 GPU; multiworker reads TF_CONFIG")
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--worker-timeout", type=float, dest="worker_timeout_seconds",
                   help="multiworker: seconds to wait for a silent worker before failing (300)")
    p.add_argument("--max-caption-tokens", type=int,
                   help="cut longer training captions (tokens, <start>/<end> included; 40)")
    p.add_argument("--max-new-tokens", type=int,
                   help="decoding: tokens generated at most, <end> included (default 30)")
    p.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation")
    return p.parse_args(argv)


def configs_from_args(args):
    chosen = preset(args.preset)
    train_fields = dict(chosen["train"], preset=args.preset)
    for name in ("epochs", "batch_size", "learning_rate", "lr_schedule", "clipnorm",
                 "label_smoothing", "min_count", "patience", "seed", "distribute",
                 "worker_timeout_seconds", "max_caption_tokens"):
        if getattr(args, name) is not None:
            train_fields[name] = getattr(args, name)
    train_fields.update(mixed_precision=args.mixed_precision, jit_compile=args.xla,
                        deterministic=args.deterministic)
    model_fields = dict(chosen["model"])
    if args.dropout is not None:
        model_fields["dropout"] = args.dropout
    if args.image_init_cell is not None:
        model_fields["image_init_cell"] = args.image_init_cell
    if args.attention_regularizer is not None:
        if not model_fields.get("attention"):
            raise ValueError("--attention-regularizer needs --preset attention")
        model_fields["attention_regularizer"] = args.attention_regularizer
    encoder = None
    if args.encoder_weights:
        encoder = EncoderConfig(weights=args.encoder_weights)
    decode = (DecodeConfig(max_new_tokens=args.max_new_tokens) if args.max_new_tokens
              else DecodeConfig())
    return TrainConfig(**train_fields), model_fields, encoder, decode


def _worker_error_cause(message: str) -> str:
    """The line of TensorFlow's multi-line error that names the cause (a refused connection,
    missed heartbeats, a timeout), not its "Graph execution error:" heading."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    causes = [line for line in lines if "aborted by" in line or "timed out" in line.lower()]
    return (causes or lines or ["unknown"])[0]


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        train_config, model_fields, encoder, decode = configs_from_args(args)
        summary = train(args.run_dir, data=args.data, train_config=train_config,
                        model_overrides=model_fields, encoder_config=encoder,
                        cache_dir=args.cache_dir, decode_config=decode,
                        evaluate=not args.no_eval)
    except (DatasetError, EncoderWeightsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except tf.errors.OpError as error:
        if args.distribute != "multiworker":
            raise
        print(f"error: {WORKER_LOST}\n  cause: {_worker_error_cause(error.message)}",
              file=sys.stderr)
        return WORKER_LOST_EXIT_CODE
    print(f"run folder: {args.run_dir}  epochs: {summary['epochs']}  "
          f"best epoch: {summary.get('best_epoch')}  best val_loss: {summary.get('best_val_loss')}")
    for method in ("greedy", "beam", "majority_baseline"):
        if method in summary.get("test", {}):
            print(score_line(method, summary["test"][method]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
