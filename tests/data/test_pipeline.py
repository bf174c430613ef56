"""data/pipeline.py: element structure, teacher-forcing shift, padding, bucketing, order, seeds;
image-major batches (each image once, its captions pointing at it) from features or image files."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from data.layouts import load_dataset
from data.pipeline import (PipelineConfig, feature_table, caption_examples, evaluation_dataset,
                           image_file_dataset, image_major_dataset, training_dataset)

START, END = 1, 2


def _captions(num_images=12, per_image=3, seed=0, longest=30):
    """Token lists [START, words.., END] of varied lengths; word ids encode (caption, position)
    so every caption is recognisable in a batch."""
    rng = np.random.default_rng(seed)
    rows, token_lists = [], []
    for image in range(num_images):
        for _ in range(per_image):
            n_words = int(rng.integers(1, longest))
            caption_id = len(token_lists)
            token_lists.append([START] + [1000 + caption_id] * n_words + [END])
            rows.append(image)
    features = np.arange(num_images, dtype=np.float32)[:, None] * np.ones([1, 6], np.float32)
    return features, rows, token_lists


def _batches(dataset):
    return [(x["features"].numpy(), x["tokens"].numpy(), y.numpy()) for x, y in dataset]


def _feature_batches(features, batch_size):
    """The feature batches of one caption per row, in row order (what caption decoding reads)."""
    one_each = [[START, END]] * len(features)
    dataset = evaluation_dataset(features, range(len(features)), one_each,
                                 PipelineConfig(batch_size=batch_size))
    return [batch for batch, _, _ in _batches(dataset)]


def _caption_ids(batches):
    """Caption indices in dataset order (read back from the word ids / END-only captions)."""
    return [int(row[0]) - 1000 for _, _, targets in batches for row in targets]


def test_elements_shift_inputs_and_targets_and_pad_with_zero():
    features = np.array([[0.5, 1.5], [2.5, 3.5]], np.float32)
    tokens = [[START, 7, 8, END], [START, 9, END], [START, END]]
    dataset = evaluation_dataset(features, [1, 0, 1], tokens, PipelineConfig(batch_size=3))
    spec_inputs, spec_targets = dataset.element_spec
    assert spec_inputs["features"].dtype == tf.float32 and spec_inputs["tokens"].dtype == tf.int32
    assert spec_targets.dtype == tf.int32
    [(batch_features, inputs, targets)] = _batches(dataset)
    np.testing.assert_array_equal(batch_features, features[[1, 0, 1]])
    np.testing.assert_array_equal(inputs, [[START, 7, 8], [START, 9, 0], [START, 0, 0]])
    np.testing.assert_array_equal(targets, [[7, 8, END], [9, END, 0], [END, 0, 0]])


def test_training_batches_pad_to_their_longest_caption_not_the_global_one():
    features, rows, tokens = _captions(num_images=40, per_image=5, longest=40)
    config = PipelineConfig(batch_size=8, bucket_width=4, seed=1)
    batches = _batches(training_dataset(features, rows, tokens, config))
    global_longest = max(len(t) for t in tokens) - 1
    widths = []
    for batch_features, inputs, targets in batches:
        steps = (targets != 0).sum(axis=1)  # each caption's own T
        assert inputs.shape == targets.shape and targets.shape[1] == steps.max()
        assert steps.max() - steps.min() < config.bucket_width  # one bucket per batch
        np.testing.assert_array_equal((inputs != 0).sum(axis=1), steps)  # <end> not an input
        widths.append(targets.shape[1])
    assert max(widths) == global_longest and np.mean(widths) < global_longest / 1.5
    assert len(batches) == len(training_dataset(features, rows, tokens, config))  # cardinality
    assert sorted(_caption_ids(batches)) == list(range(len(tokens)))  # each caption once


def test_features_are_gathered_by_image_row():
    features, rows, tokens = _captions()
    for batch_features, _, targets in _batches(
            training_dataset(features, rows, tokens, PipelineConfig(batch_size=5))):
        expected = [rows[i] for i in (int(t[0]) - 1000 for t in targets)]
        np.testing.assert_array_equal(batch_features[:, 0], expected)


def test_evaluation_order_is_the_input_order_every_time():
    features, rows, tokens = _captions()
    dataset = evaluation_dataset(features, rows, tokens, PipelineConfig(batch_size=7))
    first, second = _batches(dataset), _batches(dataset)
    assert _caption_ids(first) == list(range(len(tokens)))
    for a, b in zip(first, second):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_shuffle_is_seeded_and_changes_every_epoch():
    features, rows, tokens = _captions(num_images=30)

    def epochs(seed, count=2):
        dataset = training_dataset(features, rows, tokens, PipelineConfig(batch_size=4, seed=seed))
        return [_caption_ids(_batches(dataset)) for _ in range(count)]

    first, second = epochs(seed=3)
    assert epochs(seed=3) == [first, second]  # a new dataset object, same sequence of epochs
    assert first != second  # reshuffled each epoch
    assert epochs(seed=4, count=1)[0] != first
    assert first != list(range(len(tokens)))


def test_max_caption_tokens_keeps_end_and_pad_to_fixes_the_width():
    features = np.zeros([1, 3], np.float32)
    tokens = [[START, 5, 6, 7, 8, END], [START, 5, END]]
    config = PipelineConfig(batch_size=2, max_caption_tokens=4, pad_to=6)
    [(_, inputs, targets)] = _batches(evaluation_dataset(features, [0, 0], tokens, config))
    np.testing.assert_array_equal(inputs, [[START, 5, 6, 0, 0, 0], [START, 5, 0, 0, 0, 0]])
    np.testing.assert_array_equal(targets, [[5, 6, END, 0, 0, 0], [5, END, 0, 0, 0, 0]])
    assert training_dataset(features, [0, 0], tokens, config).element_spec[1].shape[1] == 6
    with pytest.raises(ValueError, match="more than pad_to"):
        evaluation_dataset(features, [0, 0], tokens, PipelineConfig(pad_to=2))


def test_caption_examples_pack_tokens_as_a_ragged_tensor():
    examples = caption_examples([0, 2], [[START, 9, END], [START, END]])
    assert len(examples) == 2
    assert examples.tokens.to_list() == [[START, 9, END], [START, END]]
    assert examples.steps.tolist() == [2, 1]


def test_evaluation_feature_batches_keep_the_row_order():
    features = np.arange(20, dtype=np.float32).reshape(10, 2)
    batches = _feature_batches(features, 4)
    assert [len(b) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(batches), features)


def test_bad_inputs_are_named():
    features = np.zeros([2, 3], np.float32)
    with pytest.raises(ValueError, match="image row 5.*2 rows"):
        training_dataset(features, [5], [[START, END]], PipelineConfig())
    with pytest.raises(ValueError, match="one image row per caption"):
        training_dataset(features, [0, 1], [[START, END]], PipelineConfig())
    with pytest.raises(ValueError, match=r"at least \[<start>, <end>\]"):
        training_dataset(features, [0], [[START]], PipelineConfig())
    with pytest.raises(ValueError, match="2-D"):
        training_dataset(np.zeros(3), [0], [[START, END]], PipelineConfig())
    with pytest.raises(ValueError, match="batch_size"):
        PipelineConfig(batch_size=0)


def _spatial_maps(num_images, channels=3):
    """float16 [N, 7, 7, C] maps whose values encode image, cell and channel; divided by 7, so
    most were rounded when stored as float16 (as the feature cache's maps are)."""
    values = (np.arange(num_images)[:, None, None, None] * 1000 + np.arange(49).reshape(7, 7)[
        None, :, :, None] * 10 + np.arange(channels)) / 7.0
    return values.astype(np.float16)


def test_spatial_float16_maps_come_out_as_float32_batches_of_the_right_rows():
    maps = _spatial_maps(12)
    _, rows, tokens = _captions()
    for make in (training_dataset, evaluation_dataset):
        dataset = make(maps, rows, tokens, PipelineConfig(batch_size=5))
        spec = dataset.element_spec[0]["features"]
        assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, 7, 7, 3]
        for batch_features, _, targets in _batches(dataset):
            expected = [rows[i] for i in (int(t[0]) - 1000 for t in targets)]
            assert batch_features.dtype == np.float32
            # exactly the stored float16 values, widened: no second rounding
            np.testing.assert_array_equal(batch_features, maps[expected].astype(np.float32))
    batches = _feature_batches(maps, 5)
    assert [b.shape for b in batches] == [(5, 7, 7, 3), (5, 7, 7, 3), (2, 7, 7, 3)]
    assert all(b.dtype == np.float32 for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), maps.astype(np.float32))


def test_float16_features_stay_float16_in_the_variable_float32_stay_float32():
    """Half the memory for spatial maps; pooled float32 features are not touched."""
    assert feature_table(_spatial_maps(2)).dtype == tf.float16
    pooled = np.arange(6, dtype=np.float32).reshape(3, 2) / 3
    table = feature_table(pooled)
    assert table.dtype == tf.float32
    np.testing.assert_array_equal(table.numpy(), pooled)
    assert feature_table(pooled.astype(np.float64)).dtype == tf.float32  # as before
    assert feature_table(table) is table  # shared by the datasets given it, not copied
    pooled16 = pooled.astype(np.float16)
    [batch] = _feature_batches(pooled16, 3)
    np.testing.assert_array_equal(batch, pooled16.astype(np.float32))


@pytest.mark.slow  # fast tier: test_spatial_float16_maps_come_out_as_float32_batches_of_the_right_rows
def test_keras_fit_runs_on_spatial_float16_features():
    maps = _spatial_maps(8, channels=6)
    _, rows, tokens = _captions(num_images=8, per_image=2, longest=6)
    tokens = [[t if t < 1000 else 3 for t in ids] for ids in tokens]  # vocabulary of 4
    feature_in = keras.Input((7, 7, 6), name="features")
    token_in = keras.Input((None,), dtype="int32", name="tokens")
    embedded = keras.layers.Embedding(4, 4, mask_zero=True)(token_in)
    state = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(feature_in))
    hidden = keras.layers.LSTM(4, return_sequences=True)(embedded, initial_state=[state, state])
    model = keras.Model({"features": feature_in, "tokens": token_in},
                        keras.layers.Dense(4)(hidden))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(training_dataset(maps, rows, tokens, PipelineConfig(batch_size=4)),
                        epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


def test_flickr30k_sized_input_builds_and_iterates():
    """29k x 2048 features (238 MB) and 145k captions: in memory, first batch promptly."""
    features = np.zeros([29_000, 2048], np.float32)
    rows = np.repeat(np.arange(29_000), 5)
    tokens = [[START, 5, 6, END]] * len(rows)
    dataset = training_dataset(features, rows, tokens, PipelineConfig())
    x, y = next(iter(dataset))
    assert x["features"].shape == (128, 2048) and y.shape == (128, 3)


@pytest.mark.slow  # the shared trained runs fit the captioner on these datasets too
def test_keras_fit_runs_several_epochs_over_the_dataset():
    features, rows, tokens = _captions(num_images=8, per_image=2, longest=6)
    tokens = [[t if t < 1000 else 3 for t in ids] for ids in tokens]  # vocabulary of 4
    feature_in = keras.Input((6,), name="features")
    token_in = keras.Input((None,), dtype="int32", name="tokens")
    embedded = keras.layers.Embedding(4, 4, mask_zero=True)(token_in)
    state = keras.layers.Dense(4)(feature_in)
    hidden = keras.layers.LSTM(4, return_sequences=True)(embedded, initial_state=[state, state])
    model = keras.Model({"features": feature_in, "tokens": token_in},
                        keras.layers.Dense(4)(hidden))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(training_dataset(features, rows, tokens, PipelineConfig(batch_size=4)),
                        validation_data=evaluation_dataset(features, rows, tokens,
                                                           PipelineConfig(batch_size=4)),
                        epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2


# --- image-major batches (one row per image, its captions pointing at it: model/top.py's feed)

def test_image_major_dataset_holds_every_caption_once_with_its_image():
    features = np.arange(6, dtype=np.float32)[:, None] * np.ones([6, 3], np.float32)
    rows = [4, 4, 1, 1, 1, 5, 0, 4]
    tokens = [[1, 10 + i, 2] if i % 2 else [1, 10 + i, 7, 2] for i in range(len(rows))]
    config = PipelineConfig(batch_size=3, seed=1)  # 3 captions' worth: 2 of the 4 images
    batches = list(image_major_dataset(features, rows, tokens, config))
    assert len(batches) == 2
    seen = []
    for inputs, targets in batches:
        image_of = inputs["features"].numpy()[inputs["image_index"].numpy(), 0]
        words = inputs["tokens"].numpy()[:, 1]
        seen += list(zip(words, image_of))
        np.testing.assert_array_equal(targets.numpy()[:, 0], words)
    assert sorted(seen) == sorted((10 + i, float(r)) for i, r in enumerate(rows))
    unshuffled = [b[0]["features"].numpy()[:, 0] for b in
                  image_major_dataset(features, rows, tokens, config, shuffle=False)]
    assert np.concatenate(unshuffled).tolist() == [0, 1, 4, 5]


def test_image_major_training_batches_images_of_similar_longest_captions():
    """Every caption of a batch is padded to its longest: training batches images whose longest
    captions fall in one bucket_width-wide bucket; every caption still comes once an epoch."""
    rng = np.random.default_rng(4)
    rows = np.repeat(np.arange(40), 3)
    tokens = [[1] + [5] * int(rng.integers(1, 20)) + [2] for _ in rows]
    config = PipelineConfig(batch_size=12, seed=0, bucket_width=4)  # 4 images a batch
    dataset = image_major_dataset(np.zeros([40, 2], np.float32), rows, tokens, config)
    longest = np.array([max(len(t) - 1 for t, r in zip(tokens, rows) if r == image)
                        for image in range(40)])
    boundaries = np.arange(5, longest.max() + 1, 4)
    seen = 0
    for inputs, _ in dataset:
        images = inputs["features"].shape[0]
        index = inputs["image_index"].numpy()
        steps = (inputs["tokens"].numpy() > 0).sum(1)   # <start> + words, per caption
        per_image = [steps[index == i].max() for i in range(images)]
        assert len(set(np.searchsorted(boundaries, per_image, side="right"))) == 1
        assert inputs["tokens"].shape[1] == max(per_image)
        seen += len(index)
    assert seen == len(rows) and int(dataset.cardinality()) == len(list(dataset))


def test_image_file_dataset_leaves_out_a_broken_image_with_its_captions(tmp_path, small_builtin):
    good = [image.path for image in load_dataset(small_builtin).images[:2]]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(good[0].read_bytes()[:300])
    files = [str(good[0]), str(broken), str(good[1])]
    rows, tokens = [0, 1, 1, 2], [[1, 5, 2], [1, 6, 2], [1, 7, 2], [1, 8, 2]]
    batches = list(image_file_dataset(files, rows, tokens, PipelineConfig(batch_size=8),
                                      shuffle=False))
    assert len(batches) == 1
    inputs, targets = batches[0]
    assert inputs["images"].shape == (2, 224, 224, 3)
    assert inputs["tokens"][:, 1].numpy().tolist() == [5, 8]  # the broken image's are gone
    assert inputs["image_index"].numpy().tolist() == [0, 1]
