"""Train the captioner with `keras fit` from cached ResNet50 features.

    python -m model.train                                   # built-in data, attention preset
    python -m model.train --data ~/flickr30k --run-dir runs/f30k        # ImageNet weights
    python -m model.train --preset pooled                   # the cheapest: pooled features
    python -m model.train --preset seed                     # the original project's exact model
    python -m model.train --init-from runs/builtin --scst   # -> runs/builtin-self-critical
    TF_CONFIG=... python -m model.train --distribute multiworker --run-dir /shared/run  # per machine

Kill it at any time and run the same command again: BackupAndRestore resumes at the last finished
epoch. At the end it writes the loss curve, scores the test split (model/evaluate.py) and writes a
summary. --init-from starts a later stage from a trained run's best weights and settings; --scst
makes that stage self-critical (model/scst.py): it optimises CIDEr-D, and its checkpoints and early
stopping watch validation CIDEr-D.
Several machines: docs/training.md#several-machines (tests/model/test_multiworker.py runs it on
one).
"""
import argparse
import contextlib
import dataclasses
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

if __name__ == "__main__":  # a command: TensorFlow's start-up noise is hidden before anything loads it
    from data.quiet import quiet_command
    quiet_command()

import keras
import tensorflow as tf

from data.flags import add_flags
from data.layouts import DatasetError
from data.pipeline import PipelineConfig, image_batches
from data.sources import open_dataset
from data.splits import split_dataset
from data.vocabulary import Vocabulary
from model.base import MaskedCaptionLoss
from model.encoder import EncoderWeightsError
from model.features import TrainingFeed, default_cache_dir, ensure_features
from model.history import best_logged, history_summary
from model.plots import loss_curve_png, reward_curve_png
from model.cider import CiderReferences, cider_references
from model.cluster import export_tf_config
from model.families import build_captioner
from model.run_dir import RunPaths, TrainedRun, load_run, weights_digest, write_json
from model.scst import ValidationCider, enable as enable_scst
from model.settings import (MIXED_POLICIES, PRESETS, SECTIONS, ModelConfig, RunConfig,
                            TrainConfig, check_overrides, init_run_fields, preset_fields,
                            presets_text, with_overrides)

log = logging.getLogger("train")
# How long a worker waits for another one extracting into the same feature cache (Flickr30k's
# 31k images take about an hour on 2 CPU cores).
CACHE_LOCK_WAIT_SECONDS = 3 * 3600
WORKER_LOST = ("multi-worker training stopped: another worker died or stopped answering. "
               "Start every worker again with the same command: training resumes from the last "
               "finished epoch (BackupAndRestore).")
WORKER_LOST_EXIT_CODE = 3


def run_config(preset: str | None = None, *, data=None, init: TrainedRun | None = None,
               **overrides) -> RunConfig:
    """The preset's settings (default: TrainConfig.preset's) with `overrides` over them: field
    names of TrainConfig, ModelConfig, DecodeConfig, and EncoderConfig's and ScstConfig's with
    "encoder_" and "scst_" before them (model.settings.OVERRIDES). Without encoder_weights, the
    built-in data gets random weights (no ImageNet weights offline), any other data ImageNet's.

    With init_from, the settings of that run instead of a preset's (its data too), then for a
    self-critical stage (scst) model.settings.SCST_RECIPE, then the overrides. `init`: that
    run, if the caller has loaded it already."""
    check_overrides(overrides)
    if overrides.get("init_from"):
        init = init or load_run(overrides["init_from"])
        fields = init_run_fields(init.settings, init.paths.root, preset, data, overrides)
    else:
        fields = preset_fields(preset or TrainConfig.preset, data,
                               overrides.get("encoder_weights"))
    return with_overrides(fields, overrides)


def init_run_data(source: str):
    """train()'s `data` for the source a run recorded: None for the built-in data."""
    return None if source == "builtin" else source


def choose_strategy(mode: str, worker_timeout_seconds: float | None = None
                    ) -> tf.distribute.Strategy:
    """One GPU or CPU: the default strategy. Several GPUs (or, for tests, several logical CPUs
    with mode="mirrored"): MirroredStrategy, which all-reduces gradients between replicas.
    Several machines: MultiWorkerMirroredStrategy, configured by the TF_CONFIG variable.

    Call it before any other TensorFlow work in the process: MultiWorkerMirroredStrategy
    configures collective ops when the runtime starts, and refuses ("Collective ops must be
    configured at program startup") once anything has run."""
    if mode == "multiworker":
        export_tf_config()  # from an Indexed Job's pod environment, if no TF_CONFIG (model/cluster.py)
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


@contextlib.contextmanager
def quiet_end_of_data():
    """Keras warns "Your input ran out of data" whenever a dataset of unknown length ends (the
    validation images when training from images: one may fail to decode), which is how every
    evaluation of it ends; training itself reads an endless stream."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        yield


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


@dataclasses.dataclass
class Fit:
    """What keras fit gets in one stage, and what its checkpoints and early stopping watch."""
    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    examples: int          # per epoch: captions (cross-entropy) or images (self-critical)
    monitor: str           # the logged value checkpoints and early stopping watch ...
    mode: str              # ... and whether higher ("max") or lower ("min") is better
    score: Callable        # score(captioner) -> the monitored value of its current weights
    first_callbacks: list = dataclasses.field(default_factory=list)  # they log `monitor`
    rewards: CiderReferences | None = None  # self-critical: the reward's training references
    steps_per_epoch: int | None = None  # None: the training dataset's cardinality


def cross_entropy_fit(feed: TrainingFeed, splits, vocabulary, recipe: TrainConfig) -> Fit:
    """Teacher forcing on every training caption; validation loss on the validation captions."""
    pipeline = PipelineConfig(batch_size=recipe.batch_size, seed=recipe.seed,
                              max_caption_tokens=recipe.max_caption_tokens)
    train_rows, train_tokens = caption_tokens(splits["train"], vocabulary, feed.row_of)
    val_rows, val_tokens = caption_tokens(splits["val"], vocabulary, feed.row_of)
    validation = shard_by_data(feed.evaluation(val_rows, val_tokens, pipeline))
    train = shard_by_data(feed.training(train_rows, train_tokens, pipeline))

    def val_loss(captioner) -> float:
        with quiet_end_of_data():
            return captioner.evaluate(validation, verbose=0, return_dict=True)["loss"]
    return Fit(train, validation, len(train_tokens), "val_loss", "min", val_loss,
               steps_per_epoch=feed.steps_per_epoch(train, train_rows, pipeline))


def self_critical_fit(feed: TrainingFeed, splits, vocabulary, config: RunConfig) -> Fit:
    """Batches of training images with their references (the reward's); validation CIDEr-D of
    the validation images' greedy captions."""
    if feed.from_images:
        raise ValueError("--scst reads cached features: leave --train-from-images out")
    features, row_of = feed.features, feed.row_of
    train_images = [image for image in splits["train"] if image.name in row_of]
    val_images = [image for image in splits["val"] if image.name in row_of]
    references = cider_references([image.captions for image in train_images], vocabulary.tokens)
    batches = image_batches(feed.table(), [row_of[image.name] for image in train_images],
                            references.tokens, config.train.batch_size, config.train.seed)
    validation = ValidationCider(features[[row_of[image.name] for image in val_images]],
                                 [list(image.captions) for image in val_images],
                                 vocabulary.tokens, config.decode)
    return Fit(shard_by_data(batches), None, len(train_images), "val_cider_d", "max",
               validation.score, [validation], references)


def callbacks(paths: RunPaths, config: TrainConfig, fit: Fit, start_score: float | None):
    """The same callbacks for every stage; the best so far is the better of the history's and
    the starting weights' (a run started from another)."""
    logged = best_logged(paths.history, fit.monitor, fit.mode)
    scores = [score for score in (logged, start_score) if score is not None]
    best = (min if fit.mode == "min" else max)(scores) if scores else None
    return [
        *fit.first_callbacks,
        EpochTimer(),  # the callbacks after it see its entry in the same logs
        keras.callbacks.BackupAndRestore(str(paths.backup)),
        keras.callbacks.ModelCheckpoint(str(paths.weights), monitor=fit.monitor, mode=fit.mode,
                                        save_best_only=True, save_weights_only=True,
                                        initial_value_threshold=best),
        keras.callbacks.EarlyStopping(monitor=fit.monitor, mode=fit.mode,
                                      patience=config.patience),
        keras.callbacks.CSVLogger(str(paths.history), append=True),
        keras.callbacks.TensorBoard(str(paths.tensorboard)),
    ]


def start_run(root: Path, config: RunConfig, data=None, init: TrainedRun | None = None):
    """A run's first step, before any features: (dataset, its splits, the vocabulary, saved in
    `root`, and the model config that vocabulary sizes). The vocabulary is the training split's,
    or the run's it starts from."""
    dataset = open_dataset(data)
    splits = split_dataset(dataset)
    if init is not None:
        vocabulary = init.vocabulary
    else:
        train_captions = [c for image in splits["train"] for c in image.captions]
        vocabulary = Vocabulary.build(train_captions, min_count=config.train.min_count)
    vocabulary.save(root)
    log.info("vocabulary: %d tokens, %.1f%% of training tokens covered",
             len(vocabulary), 100 * vocabulary.coverage)
    return dataset, splits, vocabulary, config.model_config(len(vocabulary))


def run_settings(config: RunConfig, model_config: ModelConfig, vocabulary: Vocabulary, *, data,
                 dataset, splits, cache_dir, init: TrainedRun | None = None) -> dict:
    """settings.json: what the run was trained on, every setting by section, and its stage
    (where it started from: the run, its stage and the digest of the weights taken)."""
    stage = {"name": config.train.stage}
    if init is not None:
        stage["init_from"] = {"run": str(init.paths.root.resolve()),
                              "stage": init.settings.get("stage", {}).get("name", "cross-entropy"),
                              "weights_digest": weights_digest(init.paths.weights)}
    return {
        "data": {"source": str(data) if data else "builtin", "layout": dataset.layout,
                 "images": len(dataset.images), "captions": dataset.num_captions,
                 "split_images": {k: len(v) for k, v in splits.items()},
                 "skipped": dataset.skipped.as_dict(), "feature_cache": str(cache_dir)},
        "stage": stage,
        "encoder": dataclasses.asdict(config.encoder),
        "model": dataclasses.asdict(model_config),
        "train": dataclasses.asdict(config.train),
        "scst": dataclasses.asdict(config.scst),
        "decode": dataclasses.asdict(config.decode),
        "vocabulary": vocabulary.settings(),
    }


def feature_cache_dir(cache_dir, data, config: RunConfig, init: TrainedRun | None,
                      kind: str) -> Path:
    """--cache-dir, else the cache of the run it starts from (same encoder), else the default."""
    if cache_dir:
        return Path(cache_dir)
    if init is not None and init.encoder_config == config.encoder:
        return Path(init.settings["data"]["feature_cache"])
    return default_cache_dir(data, config.encoder, kind=kind)


def train(run_dir, preset: str | None = None, *, data=None, cache_dir=None, evaluate=True,
          verbose=1, **overrides) -> dict:
    """The whole run: data -> vocabulary -> features -> fit -> curve -> test scores -> summary.
    `overrides` set single settings over the preset's, or over those of the run named by
    init_from (run_config). Returns the summary dict (also written to summary.json)."""
    init = load_run(overrides["init_from"]) if overrides.get("init_from") else None
    config = run_config(preset, data=data, init=init, **overrides)
    recipe = config.train
    # First TensorFlow work: see choose_strategy.
    strategy = choose_strategy(recipe.distribute, recipe.worker_timeout_seconds)
    is_chief = strategy.extended.should_checkpoint
    paths = worker_paths(Path(run_dir), strategy)
    paths.root.mkdir(parents=True, exist_ok=True)
    if recipe.deterministic:
        tf.config.experimental.enable_op_determinism()
    if recipe.mixed_precision:
        keras.mixed_precision.set_global_policy(MIXED_POLICIES[recipe.mixed_precision])

    if init is not None:
        if paths.root.resolve() == init.paths.root.resolve():
            raise ValueError(f"run_dir {run_dir} is the run it starts from: a later stage writes "
                             "a run folder of its own (--run-dir)")
        data = init_run_data(init.settings["data"]["source"])
    dataset, splits, vocabulary, model_config = start_run(paths.root, config, data, init)
    cache_dir = feature_cache_dir(cache_dir, data, config, init, model_config.feature_kind)
    names, features = cached_features(config, model_config, dataset, splits, cache_dir)
    # After the features: building the random-weights encoder seeds the generators itself, so
    # seeding earlier would give one seed two inits (features cached or not).
    keras.utils.set_random_seed(recipe.seed)
    feed = TrainingFeed(model_config, config.encoder, dataset.images, names, features)
    fit = (self_critical_fit(feed, splits, vocabulary, config) if recipe.scst
           else cross_entropy_fit(feed, splits, vocabulary, recipe))
    # Counted by the pipeline: length buckets add partial batches to ceil(captions / batch).
    steps_per_epoch = fit.steps_per_epoch or int(fit.train.cardinality())

    settings = run_settings(config, model_config, vocabulary, data=data, dataset=dataset,
                            splits=splits, cache_dir=cache_dir, init=init)
    write_json(paths.settings, settings)

    with strategy.scope():
        captioner = initial_captioner(model_config, init, feed,
                                      [feed.row_of[i.name] for i in splits["train"]
                                       if i.name in feed.row_of])
        compile_for(captioner, config, fit, steps_per_epoch)
    start_score = starting_score(captioner, fit, paths) if init is not None else None
    log.info("%s training on %d replica(s), %d %s/epoch", recipe.stage,
             strategy.num_replicas_in_sync, fit.examples,
             "images" if recipe.scst else "captions")
    # One endless stream, steps_per_epoch batches an epoch (one pass where the count is known):
    # from a finite dataset Keras makes a new iterator every epoch, and tearing the last one down
    # held up each epoch's first step (benchmarks/bench_epoch_start.py).
    with quiet_end_of_data():
        captioner.fit(fit.train.repeat(), steps_per_epoch=steps_per_epoch,
                      validation_data=fit.validation, epochs=recipe.epochs,
                      shuffle=False,  # the pipeline shuffles (fit would warn that it cannot)
                      callbacks=callbacks(paths, recipe, fit, start_score), verbose=verbose)

    if recipe.scst:
        reward_curve_png(paths.history, paths.reward_curve)
    else:
        loss_curve_png(paths.history, paths.loss_curve)
    summary = run_summary(settings, recipe, fit, captioner, paths, strategy, steps_per_epoch,
                          start_score)
    if evaluate and is_chief:  # one evaluation per run, not one per worker
        from model.evaluate import evaluate_run
        summary["test"] = evaluate_run(paths.root, data=data, features=(names, features),
                                       dataset=dataset)
    write_json(paths.summary, summary)
    return summary


def cached_features(config: RunConfig, model_config: ModelConfig, dataset, splits,
                    cache_dir: Path):
    """(image names, feature matrix) of the kind the model reads (pooled vectors, ResNet50's 7x7
    maps for attention, conv4 maps for a trainable top), extracted into cache_dir unless there
    already. Training from images caches only the test split's, for the evaluation. Images that
    fail to decode join the dataset's skips."""
    # Workers sharing one cache folder take turns: one extracts, the others wait and reuse it.
    lock_wait = CACHE_LOCK_WAIT_SECONDS if config.train.distribute == "multiworker" else 0
    cached = splits["test"] if config.encoder.train_from_images else dataset.images
    extraction = ensure_features(cached, cache_dir, config.encoder,
                                 kind=model_config.feature_kind, lock_wait_seconds=lock_wait)
    dataset.skipped.merge(extraction.skipped)
    return extraction.names, extraction.features


def run_summary(settings: dict, recipe: TrainConfig, fit: Fit, captioner, paths: RunPaths,
                strategy: tf.distribute.Strategy, steps_per_epoch: int,
                start_score: float | None) -> dict:
    """summary.json but the test scores: the settings, how the run was split and stepped, and
    its history's best epoch (with the score of the weights it started from, if any)."""
    summary = {"settings": settings, "replicas": strategy.num_replicas_in_sync,
               "global_batch_size": recipe.batch_size,
               ("train_images" if recipe.scst else "train_captions"): fit.examples,
               "steps_per_epoch": steps_per_epoch,
               "optimizer_steps": int(captioner.optimizer.iterations.numpy()),
               **history_summary(paths.history, fit.monitor, fit.mode)}
    if start_score is not None:
        summary[f"start_{fit.monitor}"] = start_score
    return summary


def initial_captioner(model_config: ModelConfig, init: TrainedRun | None, feed: TrainingFeed,
                      train_rows: list[int]):
    """The captioner a run starts with: new weights whose statistics are the training images'
    (TrainingFeed.prepare), then, for a run started from another, that run's best weights: all
    of them (their statistics with them) when both have the same encoder top, else the layers
    the two share (init_from_run: a frozen-feature run starts a conv5-top run)."""
    captioner = build_captioner(model_config)
    whole = init is not None and init.model_config.encoder_top == model_config.encoder_top
    feed.prepare(captioner, train_rows, initial_weights=not whole)
    if whole:
        captioner.load_weights(init.paths.weights)
    elif init is not None:
        init_from_run(captioner, init)
    return captioner


def init_from_run(captioner, init: TrainedRun) -> list[str]:
    """Initialises `captioner` from a finished run's best weights (`--init-from RUN`): all of
    them when the architectures agree; otherwise every layer the two share by name and shape
    (a run trained on frozen pooled features gives a conv5-top run its decoder and
    standardiser). Returns the names of the layers copied; refuses a run sharing none."""
    source, run_dir = init.load_captioner(), init.paths.root
    if source.config.family != captioner.config.family:
        raise ValueError(f"--init-from {run_dir}: that run's captioner is of the "
                         f"{source.config.family} family, this one of the "
                         f"{captioner.config.family} family")
    copied = []
    for layer in captioner.layers:
        match = next((other for other in source.layers if other.name == layer.name), None)
        if match is None or layer.name == "encoder_top":
            continue
        shapes = [tuple(w.shape) for w in layer.weights]
        if shapes and shapes == [tuple(w.shape) for w in match.weights]:
            layer.set_weights(match.get_weights())
            copied.append(layer.name)
    if source.top is not None and captioner.top is not None \
            and source.config.encoder_top == captioner.config.encoder_top:
        captioner.top.set_weights(source.top.get_weights())
        copied.append("encoder_top")
    if not copied:
        raise ValueError(f"--init-from {run_dir}: its captioner shares no layer with this one")
    log.info("initialised from %s: %s", run_dir, ", ".join(copied))
    return copied


def compile_for(captioner, config: RunConfig, fit: Fit, steps_per_epoch: int) -> None:
    """Cross-entropy: the masked caption loss. Self-critical: CaptionerBase.train_step runs the
    policy-gradient step (model/scst.py) instead, so fit needs no loss."""
    recipe = config.train
    optimizer = make_optimizer(recipe, steps_per_epoch)
    if recipe.scst:
        enable_scst(captioner, fit.rewards, config.decode, config.scst)
        captioner.compile(optimizer=optimizer, jit_compile=recipe.jit_compile)
    else:
        captioner.compile(optimizer=optimizer, loss=MaskedCaptionLoss(recipe.label_smoothing),
                          jit_compile=recipe.jit_compile)


def starting_score(captioner, fit: Fit, paths: RunPaths) -> float:
    """The monitored value of the weights a run starts from. On a first start they are saved as
    its best weights, so its checkpoint is never worse on validation than where it began."""
    score = fit.score(captioner)
    if not paths.weights.is_file():
        captioner.save_weights(paths.weights)
    log.info("starting weights: %s %.4f", fit.monitor, score)
    return float(score)


def parse_args(argv=None) -> dict:
    """train()'s keyword arguments from the command line. Only the settings flags given become
    overrides: the others keep the preset's values."""
    p = argparse.ArgumentParser(
        prog="python -m model.train", description=__doc__, epilog=presets_text(),
        usage="%(prog)s [--data DIR] [--run-dir DIR] [--preset {" + ",".join(PRESETS)
              + "}] [setting flags] [--no-eval]",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    run = p.add_argument_group("run")
    run.add_argument("--data", help="Flickr30k/Flickr8k folder (any known layout) or a prepared "
                                    "TFDS data dir; omit for the built-in generated dataset")
    run.add_argument("--run-dir", help="where checkpoints and logs go (default: runs/builtin; "
                                       "a later stage: the run it starts from + -<stage>, e.g. "
                                       "runs/builtin-self-critical)")
    run.add_argument("--cache-dir", help="feature cache (default: cache/<data>-<encoder>, "
                                         "with -spatial for the attention family, -conv4 with "
                                         "--fine-tune-encoder)")
    run.add_argument("--no-eval", dest="evaluate", action="store_false",
                     help="skip the test-split evaluation")
    shown = run_config().by_name()  # TrainConfig.preset's, on the built-in data
    for section, (cls, prefix) in SECTIONS.items():
        add_flags(p.add_argument_group(f"{section} settings ({cls.__name__})"), cls,
                  prefix=prefix, shown=shown)
    args = vars(p.parse_args(argv))
    if args["run_dir"] is None:
        args["run_dir"] = default_run_dir(args.get("init_from"), args.get("scst", False))
    return args


def default_run_dir(init_from: str | None, scst: bool) -> str:
    """runs/builtin; a later stage's own folder beside the run it starts from, named by its
    stage (runs/builtin -> runs/builtin-self-critical), so it never writes into another run."""
    if not init_from:
        return "runs/builtin"
    stage = TrainConfig(init_from=init_from, scst=scst).stage
    return f"{str(init_from).rstrip('/')}-{stage}"


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
        summary = train(**args)
    except (DatasetError, EncoderWeightsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except tf.errors.OpError as error:
        if args.get("distribute") != "multiworker":
            raise
        print(f"error: {WORKER_LOST}\n  cause: {_worker_error_cause(error.message)}",
              file=sys.stderr)
        return WORKER_LOST_EXIT_CODE
    from model.evaluate import report_lines
    monitor = "val_cider_d" if summary["settings"]["train"]["scst"] else "val_loss"
    best, start = summary.get("best_" + monitor), summary.get("start_" + monitor)
    print(f"run folder: {args['run_dir']}  {summary['settings']['stage']['name']}  epochs: "
          f"{summary['epochs']}  best epoch: {summary.get('best_epoch')}  best {monitor}: "
          + ("-" if best is None else f"{best:.4f}")
          + ("" if start is None else f" (the weights it started from: {start:.4f})"))
    if "test" in summary:
        print("\n".join(report_lines(summary["test"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
