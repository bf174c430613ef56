"""A stand-in captioner SavedModel that honours the serving contract exactly: a test fixture (and
the serving benchmark's default), built in seconds where the real export needs a trained run.

Contract (see the export stage): tag "serve"; signatures
- serving_default / beam_search: image_bytes DT_STRING [-1] -> caption DT_STRING [-1],
  log_prob DT_FLOAT [-1], error DT_STRING [-1] ("" when fine);
- caption_features: features DT_FLOAT [-1, 2048] -> the same outputs.

Images go through data.images.decode_batch, so hostile images give the same per-item errors as the
real model. The "caption" names the colour nearest to the image's mean pixel (a Keras Dense layer
scores the palette, a StaticHashTable names the winner): deterministic and easy to assert on.
The model is written with keras.export.ExportArchive, the path TF Serving's session loader runs.

    python -m tests.standin_model models/standin     # writes models/standin/1/
"""
import argparse

import keras
import numpy as np
import tensorflow as tf

from data.images import decode_batch
from export.artifact import publish_version

FEATURE_DIM = 2048
# Palette the stand-in can name: (name, RGB).
PALETTE = [
    ("black", (0, 0, 0)), ("white", (255, 255, 255)), ("red", (220, 30, 30)),
    ("green", (30, 180, 30)), ("blue", (30, 30, 220)), ("yellow", (240, 220, 30)),
    ("grey", (128, 128, 128)), ("orange", (250, 140, 20)), ("purple", (130, 40, 160)),
]
COLOUR_NAMES = [name for name, _ in PALETTE]
# ResNet50 "caffe" preprocessing subtracts these BGR means; the stand-in adds them back.
_BGR_MEANS = (103.939, 116.779, 123.68)


def greedy_caption(colour: str) -> str:
    return f"a {colour} image"


def beam_caption(colour: str) -> str:
    return f"a picture that is mostly {colour}"


def _palette_scorer() -> keras.Model:
    """Dense layer whose argmax is the nearest palette colour: -|x-c|^2 = 2x.c - |c|^2 - |x|^2."""
    colours = np.array([rgb for _, rgb in PALETTE], np.float32) / 255.0
    inputs = keras.Input([3])
    dense = keras.layers.Dense(len(PALETTE), name="palette")
    model = keras.Model(inputs, dense(inputs), name="standin_captioner")
    dense.set_weights([2.0 * colours.T, -np.sum(colours ** 2, axis=1)])
    return model


class _StandIn:
    """Holds the tracked Keras model and lookup table; its methods are the endpoints."""

    def __init__(self):
        self.scorer = _palette_scorer()
        keys = tf.range(len(PALETTE), dtype=tf.int64)
        self.greedy_table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            keys, tf.constant([greedy_caption(c) for c in COLOUR_NAMES])), default_value="")
        self.beam_table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            keys, tf.constant([beam_caption(c) for c in COLOUR_NAMES])), default_value="")

    def _caption_rgb(self, rgb01, table, errors):
        """rgb01 [n, 3] in 0..1 -> contract outputs; failed items get caption "" and log_prob 0."""
        logits = self.scorer(rgb01) * 20.0
        best = tf.argmax(logits, axis=1)
        log_prob = tf.reduce_max(tf.nn.log_softmax(logits, axis=1), axis=1)
        ok = tf.equal(errors, "")
        return {"caption": tf.where(ok, table.lookup(best), ""),
                "log_prob": tf.where(ok, log_prob, 0.0),
                "error": errors}

    def _caption_images(self, image_bytes, table):
        pixels, errors = decode_batch(image_bytes)  # [n, 224, 224, 3] BGR minus means
        bgr = tf.reduce_mean(pixels, axis=[1, 2]) + tf.constant(_BGR_MEANS)
        rgb01 = tf.reverse(bgr, axis=[1]) / 255.0
        return self._caption_rgb(rgb01, table, errors)

    def serving_default(self, image_bytes):
        return self._caption_images(image_bytes, self.greedy_table)

    def beam_search(self, image_bytes):
        return self._caption_images(image_bytes, self.beam_table)

    def caption_features(self, features):
        # The first three features play the role of an RGB colour in 0..1.
        errors = tf.fill(tf.shape(features)[:1], "")
        return self._caption_rgb(features[:, :3], self.greedy_table, errors)


def write_standin(export_dir: str) -> str:
    """Writes the stand-in SavedModel to export_dir (which must not exist yet) and returns it."""
    standin = _StandIn()
    archive = keras.export.ExportArchive()
    archive.track(standin.scorer)
    archive.track(standin.greedy_table)
    archive.track(standin.beam_table)
    images = [tf.TensorSpec([None], tf.string, name="image_bytes")]
    archive.add_endpoint("serving_default", standin.serving_default, input_signature=images)
    archive.add_endpoint("beam_search", standin.beam_search, input_signature=images)
    archive.add_endpoint("caption_features", standin.caption_features,
                         input_signature=[tf.TensorSpec([None, FEATURE_DIM], tf.float32,
                                                         name="features")])
    archive.write_out(export_dir, verbose=False)
    return export_dir


def publish_standin(base_path, version="auto") -> str:
    """Publishes the stand-in as <base_path>/<version> (atomically, as every export is)."""
    return str(publish_version(base_path, lambda folder, _: write_standin(str(folder)), version))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_path", help="model base folder; the stand-in is written to <base>/<version>")
    parser.add_argument("--version", type=int, default=1)
    args = parser.parse_args()
    print(publish_standin(args.base_path, args.version))


if __name__ == "__main__":
    main()
