"""The encoder's trainable top (model/top.py): the conv4 feature kind and the conv5 stage are the
same ResNet50, the head and conv5 tops in both families, image-major batches give the same
logits as one row per caption, `--fine-tune-encoder` picks the top by the weights, a conv5 top
started from a frozen-feature run captions as that run, and training from decoded images
leaves the checkpoint format of training from cached maps."""
import json

import h5py
import numpy as np
import pytest
import tensorflow as tf

from data.feature_cache import FeatureCacheError, load_features
from data.layouts import load_dataset
from data.pipeline import PipelineConfig
from data.splits import split_dataset
from model.decoding import caption_features
from model.encoder import CONV4_SHAPE, SPATIAL_SHAPE, build_conv5, build_encoder
from model.families import build_captioner
from model.features import TrainingFeed, default_cache_dir, ensure_features
from model.run_dir import load_run
from model.settings import EncoderConfig, ModelConfig, resolve_encoder_top
from model.standardizers import ChannelStandardizer
from model.train import init_from_run, parse_args, run_config, train

RANDOM = EncoderConfig("random", seed=0)


def small_config(**fields) -> ModelConfig:
    return ModelConfig(**{"vocab_size": 30, "embed_dim": 16, "units": 32, "attention_units": 16,
                          "dropout": 0.0, **fields})


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.uniform(-100, 100, size=[2, 224, 224, 3]).astype(np.float32)


@pytest.mark.slow
def test_conv4_trunk_then_conv5_stage_is_the_whole_encoder(images):
    trunk, stage = build_encoder(RANDOM, kind="conv4"), build_conv5(RANDOM)
    maps = trunk(images, training=False)
    assert tuple(maps.shape[1:]) == CONV4_SHAPE == (14, 14, 1024)
    whole = build_encoder(RANDOM, kind="spatial")(images, training=False)
    assert tuple(whole.shape[1:]) == SPATIAL_SHAPE
    np.testing.assert_allclose(stage(maps, training=False), whole, rtol=1e-4, atol=1e-4)
    assert not any(layer.trainable for layer in stage.layers
                   if "_bn" in layer.name)  # BatchNorm frozen, in inference mode


def test_unknown_kind_and_top_are_refused():
    with pytest.raises(ValueError, match=r"feature kind must be one of \['conv4', 'pooled', "
                                         r"'spatial'\], got 'conv3'"):
        build_encoder(RANDOM, kind="conv3")
    with pytest.raises(ValueError, match="encoder_top must be one of"):
        small_config(encoder_top="conv4")
    with pytest.raises(ValueError, match="'auto' is chosen by the encoder weights first"):
        small_config(encoder_top="auto")
    with pytest.raises(ValueError, match="the attention family only: .* use --preset attention"):
        small_config(family="pooled", encoder_top="head")


def test_fine_tune_encoder_picks_the_top_by_the_weights(tmp_path):
    assert resolve_encoder_top("auto", "random") == "head"
    assert resolve_encoder_top("auto", "imagenet") == "conv5"
    assert resolve_encoder_top("auto", str(tmp_path / "w.h5")) == "conv5"
    assert resolve_encoder_top("conv5", "random") == "conv5"
    assert parse_args(["--fine-tune-encoder"])["encoder_top"] == "auto"
    assert parse_args(["--fine-tune-encoder", "conv5"])["encoder_top"] == "conv5"
    assert "encoder_top" not in parse_args([])
    config = run_config("attention", encoder_top="auto")  # built-in data: random weights
    assert config.model["encoder_top"] == "head"
    assert config.model_config(10).feature_kind == "conv4"
    assert run_config("attention", data="x", encoder_top="auto").model["encoder_top"] == "conv5"
    assert run_config("pooled", data="x", encoder_top="auto").model["encoder_top"] == "conv5"
    assert run_config("pooled").model_config(10).feature_kind == "pooled"


def test_channel_standardizer_reads_rows_in_chunks_like_numpy(monkeypatch):
    import model.standardizers as standardizers
    monkeypatch.setattr(standardizers, "ADAPT_ROWS_PER_CHUNK", 4)
    maps = np.random.default_rng(1).normal(3, 2, size=[11, 5, 5, 6]).astype(np.float16)
    rows = [0, 1, 4, 5, 7, 9, 10]
    norm = ChannelStandardizer(dtype="float32")
    norm.adapt(maps, rows)
    values = maps[rows].astype(np.float64).reshape(-1, 6)  # per channel over images and cells
    np.testing.assert_allclose(norm.mean.numpy(), values.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.std.numpy(), values.std(0), rtol=1e-5)


@pytest.mark.parametrize("family, top", [("pooled", "conv5"), ("attention", "head"),
                                         ("attention", "conv5")])
@pytest.mark.slow
def test_image_major_batch_gives_the_logits_of_one_row_per_caption(family, top):
    model = build_captioner(small_config(family=family, encoder_top=top, normalize_features=True))
    maps = np.random.default_rng(2).normal(size=[3, *CONV4_SHAPE]).astype(np.float32)
    tokens = np.random.default_rng(3).integers(1, 30, size=[5, 4]).astype(np.int32)
    image_index = np.array([0, 0, 1, 2, 2], np.int32)
    grouped = model({"features": maps, "tokens": tokens, "image_index": image_index})
    repeated = model({"features": maps[image_index], "tokens": tokens})
    np.testing.assert_allclose(grouped, repeated, rtol=1e-5, atol=1e-5)
    assert model.config.feature_shape == CONV4_SHAPE


@pytest.mark.parametrize("family, top, image_major", [
    ("pooled", "", False), ("pooled", "conv5", True), ("attention", "", True),
    ("attention", "head", True)])
def test_training_feed_batches_by_image_where_the_image_part_is_costly(family, top, image_major):
    """A top, or the attention family's annotations, runs once per image: image-major batches;
    the pooled family on frozen vectors reads one row per caption."""
    config = small_config(family=family, encoder_top=top)
    features = np.zeros([3, *config.feature_shape], np.float16)
    feed = TrainingFeed(config, RANDOM, [], ["a", "b", "c"], features)
    batches = feed.training([0, 0, 1, 2], [[1, 5, 2]] * 4, PipelineConfig(batch_size=4))
    inputs, _ = next(iter(batches))
    assert feed.image_major == image_major
    assert ("image_index" in inputs) == image_major
    assert inputs["features"].shape[0] == (3 if image_major else 4)


@pytest.mark.slow
def test_conv4_features_have_their_own_cache(small_builtin, tmp_path):
    images = load_dataset(small_builtin).images[:3]
    assert default_cache_dir(None, RANDOM, kind="conv4").name == "builtin-random-seed0-conv4"
    result = ensure_features(images, tmp_path / "conv4", RANDOM, kind="conv4", progress=False)
    assert result.features.shape == (3, *CONV4_SHAPE) and result.features.dtype == np.float16
    assert result.report.bytes_per_image > 14 * 14 * 1024 * 2  # 401,408 + the shard's names
    manifest = json.loads((tmp_path / "conv4" / "manifest.json").read_text())
    assert manifest["feature_shape"] == [14, 14, 1024] and manifest["feature_dtype"] == "float16"
    with pytest.raises(FeatureCacheError, match="each kind of feature"):
        ensure_features(images, tmp_path / "conv4", RANDOM, kind="spatial", progress=False)
    trunk = build_encoder(RANDOM, kind="conv4")
    from data.images import decode_batch
    batch, _ = decode_batch(tf.constant([image.path.read_bytes() for image in images]))
    np.testing.assert_allclose(result.features, trunk(batch, training=False).numpy(),
                               rtol=2e-3, atol=2e-3)  # float16 storage


def test_fine_tuned_run_trains_the_head_on_cached_conv4_maps(head_top_run):
    summary, cache = head_top_run.summary, head_top_run.cache
    run = load_run(head_top_run.run)
    assert run.model_config.encoder_top == "head" and summary["epochs"] == 2
    assert run.settings["data"]["feature_cache"] == str(cache)
    names, features = load_features(cache)
    assert features.shape[1:] == CONV4_SHAPE
    captioner = run.load_captioner()
    norm = captioner.top.standardize  # the training images' statistics, saved with the weights
    assert not np.allclose(norm.mean.numpy(), 0.0) and not np.allclose(norm.std.numpy(), 1.0)
    # One image-major batch per ~64 captions: 5 captions an image -> 13 images a batch; each
    # length bucket ends with a partial batch.
    train_images = summary["settings"]["data"]["split_images"]["train"]
    assert -(-train_images // 13) <= summary["steps_per_epoch"] < -(-train_images // 13) + 8


@pytest.mark.slow  # a training from image files: ResNet50's trunk runs in every step
def test_training_from_images_writes_the_cached_paths_checkpoint(tmp_path):
    from data.builtin import generate_builtin
    data = generate_builtin(tmp_path / "data", num_images=40, seed=0)  # 32 / 4 / 4 images
    summary = train(tmp_path / "run", "attention", data=data,
                    cache_dir=tmp_path / "cache", verbose=0, epochs=2, batch_size=64,
                    min_count=2, units=64, embed_dim=32, encoder_weights="random",
                    encoder_train_from_images=True, evaluate=False)
    # Every epoch trains (a finite stream of unknown length would leave the second one empty).
    assert summary["optimizer_steps"] == 2 * summary["steps_per_epoch"] >= 4
    # The cache holds the test split only (for the evaluation): training read the images.
    test_images = summary["settings"]["data"]["split_images"]["test"]
    assert len(load_features(tmp_path / "cache")[0]) == test_images

    def layout(path):
        with h5py.File(path) as f:
            found = {}
            f.visititems(lambda name, item: found.setdefault(name, getattr(item, "shape", None)))
            return found
    # The same variables as the captioner that trains on cached conv4 maps saves.
    run = load_run(tmp_path / "run")
    build_captioner(run.model_config).save_weights(tmp_path / "cached-maps.weights.h5")
    assert layout(tmp_path / "run" / "best.weights.h5") == layout(tmp_path / "cached-maps.weights.h5")
    names, features = load_features(tmp_path / "cache")  # and a conv4-fed captioner loads it
    captions, _ = caption_features(run.load_captioner(), run.vocabulary.tokens, features[:4],
                                   run.decode_config, progress=False)
    assert len(captions) == 4


@pytest.mark.slow  # three ResNet50s
def test_conv5_top_started_from_a_frozen_feature_run_captions_as_that_run(trained_run):
    """Same weights, so at the start conv5(conv4 maps) is the pooled run's feature map: the
    decoder and its standardiser carry over and the captions are the run's own."""
    source = load_run(trained_run.run)
    config = ModelConfig(**{**source.settings["model"], "encoder_top": "conv5"})
    captioner = build_captioner(config)
    captioner.top.load_encoder_weights(source.encoder_config)
    copied = init_from_run(captioner, source)
    assert {"feature_norm", "image_to_h", "embedding", "lstm", "to_logits"} <= set(copied)
    test = split_dataset(load_dataset(trained_run.data))["test"][:6]
    from data.images import decode_batch
    batch, _ = decode_batch(tf.constant([image.path.read_bytes() for image in test]))
    maps = build_encoder(source.encoder_config, kind="conv4")(batch, training=False).numpy()
    pooled = build_encoder(source.encoder_config)(batch, training=False).numpy()
    decode = source.decode_config
    ours, _ = caption_features(captioner, source.vocabulary.tokens, maps, decode, progress=False)
    theirs, _ = caption_features(source.load_captioner(), source.vocabulary.tokens, pooled,
                                 decode, progress=False)
    assert ours == theirs


def test_init_from_refuses_another_family(trained_run):
    captioner = build_captioner(small_config(family="attention", encoder_top="head"))
    with pytest.raises(ValueError, match="of the pooled family, this one of the attention family"):
        init_from_run(captioner, load_run(trained_run.run))


def test_word_presence_loss_targets_the_words_of_each_images_captions():
    from model.base import word_presence_loss
    logits = np.random.default_rng(4).normal(size=[2, 9]).astype(np.float32)
    tokens = np.array([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0], [1, 5, 8, 8, 2]], np.int32)
    present = np.zeros([2, 9], np.float32)
    present[0, [5, 6]] = 1  # caption 0 -> image 0; captions 1 and 2 -> image 1
    present[1, [5, 7, 8]] = 1  # <pad>, <start>, <end> are no words
    expected = np.mean(np.maximum(logits, 0) - logits * present + np.log1p(np.exp(-abs(logits))))
    got = word_presence_loss(tf.constant(logits), tf.constant(tokens), tf.constant([0, 1, 1]))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


@pytest.mark.slow
def test_word_loss_adds_to_the_training_loss_only():
    from model.base import MaskedCaptionLoss
    inputs = {"features": np.random.default_rng(5).normal(size=[2, *CONV4_SHAPE]).astype("float32"),
              "tokens": np.full([3, 4], 5, np.int32), "image_index": np.array([0, 1, 1], np.int32)}
    targets = np.full([3, 4], 6, np.int32)
    models = {weight: build_captioner(small_config(family="attention", encoder_top="head",
                                                   word_loss=weight))
              for weight in (0.0, 1.0)}
    for layer in models[0.0].layers:  # the same weights, but the word head's
        if layer.weights:
            models[1.0].get_layer(layer.name).set_weights(layer.get_weights())
    losses = {}
    for weight, model in models.items():
        model.compile(optimizer="adam", loss=MaskedCaptionLoss())
        losses[weight] = model.test_on_batch(inputs, targets), model.train_on_batch(inputs, targets)
    assert losses[1.0][0] == pytest.approx(losses[0.0][0])  # evaluation: the captions' loss alone
    assert losses[1.0][1] > losses[0.0][1] + 0.3  # + about log 2 at the start
    assert build_captioner(small_config(family="attention",
                                        encoder_top="head")).word_head is not None  # default
    assert small_config(encoder_top="conv5").word_loss_weight == 0.0  # not measured there
    assert small_config(encoder_top="conv5", word_loss=0.5).word_loss_weight == 0.5
    assert build_captioner(small_config(word_loss=1.0)).word_head is None  # frozen features
