"""A stand-in captioner SavedModel that honours the serving contract exactly: a test fixture (and
the serving benchmark's default), built in seconds where the real export needs a trained run.

Contract: export/contract.py (tag "serve"; its signature, input and output names and shapes).

Images go through data.images.decode_batch, so hostile images give the same per-item errors as the
real model. The "caption" names the colour nearest to the image's mean pixel (a Keras Dense layer
scores the palette, a StaticHashTable names the winner): deterministic and easy to assert on.
The model is written with keras.export.ExportArchive, the path TF Serving's session loader runs.

With attention=True (CLI --attention) serving_default and beam_search also return `attention`,
float32 [batch, MAX_NEW_TOKENS, 7, 7], exactly as an attention export does: one row per word of the
caption and one for <end>, zeros after, all zeros for a bad image. The colour word's row is a
softmax over the 7x7 cells of how close each cell's mean colour is to the named colour (so it
lights up where that colour is); the other words' (and <end>'s) rows light up where it is not
(uniform on a one-colour image). Computed in the graph, so tests can predict every map.

beam_search also returns `alternatives` and `alternative_scores` [batch, BEAM_WIDTH], as every
export does: the beam caption of the BEAM_WIDTH nearest palette colours, nearest first (so the
first is `caption`), each with the log-softmax of its colour's score; "" and 0 for a bad image.

    python -m tests.serving.standin_model models/standin     # writes models/standin/1/
"""
import argparse

import keras
import numpy as np
import tensorflow as tf

from data.images import decode_batch
from export.artifact import publish_version
from export.contract import (ALTERNATIVE_SCORES, ALTERNATIVES, ATTENTION, BEAM_SEARCH,
                             CAPTION_FEATURES, FEATURES_INPUT, IMAGE_INPUT, OUTPUTS, SERVING_DEFAULT)

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
MAX_NEW_TOKENS = 30  # the attention output's rows, as an export's default decode setting
GRID = 7  # attention cells per side, as ResNet50's last convolutional map at 224 px
SHARPNESS = 20.0  # softmax logit per unit of squared RGB distance (0..1 scale): a clear peak
BEAM_WIDTH = 3  # beam_search's alternatives per image, as an export's default decode setting


def greedy_caption(colour: str) -> str:
    return f"a {colour} image"


def beam_caption(colour: str) -> str:
    return f"a picture that is mostly {colour}"


def _attention_rows(caption: str) -> np.ndarray:
    """Which map each attention row shows for a caption template: 2 = the colour word's map,
    1 = the map of everywhere else (the other words and <end>), 0 = zeros (after <end>)."""
    words = caption.split()
    kinds = np.zeros([MAX_NEW_TOKENS], np.int32)
    kinds[:len(words) + 1] = 1
    kinds[words.index("{colour}")] = 2
    return kinds


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

    def __init__(self, attention: bool = False):
        self.attention = attention
        self.scorer = _palette_scorer()
        keys = tf.range(len(PALETTE), dtype=tf.int64)
        self.greedy_table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            keys, tf.constant([greedy_caption(c) for c in COLOUR_NAMES])), default_value="")
        self.beam_table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            keys, tf.constant([beam_caption(c) for c in COLOUR_NAMES])), default_value="")

    def _caption_rgb(self, rgb01, table, errors, beams=False):
        """rgb01 [n, 3] in 0..1 -> contract outputs; failed items get caption "" and log_prob 0.
        beams: also the alternatives of the BEAM_WIDTH nearest colours."""
        log_probs = tf.nn.log_softmax(self.scorer(rgb01) * 20.0, axis=1)
        scores, nearest = tf.math.top_k(log_probs, BEAM_WIDTH)  # [n, BEAM_WIDTH], best first
        ok = tf.equal(errors, "")
        captions = table.lookup(tf.cast(nearest, tf.int64))
        outputs = dict(zip(OUTPUTS, (tf.where(ok, captions[:, 0], ""), tf.where(ok, scores[:, 0], 0.0),
                                     errors)))
        if beams:
            outputs[ALTERNATIVES] = tf.where(ok[:, None], captions, "")
            outputs[ALTERNATIVE_SCORES] = tf.where(ok[:, None], scores, 0.0)
        return outputs

    def _caption_images(self, image_bytes, table, template):
        pixels, errors = decode_batch(image_bytes)  # [n, 224, 224, 3] BGR minus means
        bgr = tf.reduce_mean(pixels, axis=[1, 2]) + tf.constant(_BGR_MEANS)
        rgb01 = tf.reverse(bgr, axis=[1]) / 255.0
        outputs = self._caption_rgb(rgb01, table, errors, beams=table is self.beam_table)
        if self.attention:
            outputs[ATTENTION] = self._attention(pixels, rgb01, errors, template)
        return outputs

    def _attention(self, pixels, rgb01, errors, template):
        """float32 [n, MAX_NEW_TOKENS, 7, 7] for captions made from template (see the docstring)."""
        cell = pixels.shape[1] // GRID  # 32 pixels: cell [r, c] is a band of the whole image
        cells_bgr = tf.nn.avg_pool2d(pixels, cell, cell, "VALID") + tf.constant(_BGR_MEANS)
        cells = tf.reverse(cells_bgr, axis=[3]) / 255.0  # [n, 7, 7, 3] RGB in 0..1
        colours = tf.constant([rgb for _, rgb in PALETTE], tf.float32) / 255.0
        named = tf.gather(colours, tf.argmax(self.scorer(rgb01), axis=1))  # the caption's colour
        distance = tf.reduce_sum(tf.square(cells - named[:, None, None, :]), axis=3)
        def cell_softmax(logits):  # [n, 7, 7] -> [n, 1, 7, 7] summing to 1 over the 49 cells
            return tf.reshape(tf.nn.softmax(tf.reshape(logits, [-1, GRID * GRID])), [-1, 1, GRID, GRID])

        kinds = tf.constant(_attention_rows(template))[None, :, None, None]  # [1, rows, 1, 1]
        rows = tf.where(kinds == 2, cell_softmax(-SHARPNESS * distance),  # where the colour is
                        tf.where(kinds == 1, cell_softmax(SHARPNESS * distance), 0.0))  # where not
        ok = tf.equal(errors, "")[:, None, None, None]
        return tf.where(ok, rows, 0.0)

    def serving_default(self, image_bytes):
        return self._caption_images(image_bytes, self.greedy_table, greedy_caption("{colour}"))

    def beam_search(self, image_bytes):
        return self._caption_images(image_bytes, self.beam_table, beam_caption("{colour}"))

    def caption_features(self, features):
        # The first three features play the role of an RGB colour in 0..1.
        errors = tf.fill(tf.shape(features)[:1], "")
        return self._caption_rgb(features[:, :3], self.greedy_table, errors)


def write_standin(export_dir: str, attention: bool = False) -> str:
    """Writes the stand-in SavedModel to export_dir (which must not exist yet) and returns it;
    attention=True adds the `attention` output to serving_default and beam_search."""
    standin = _StandIn(attention)
    archive = keras.export.ExportArchive()
    archive.track(standin.scorer)
    archive.track(standin.greedy_table)
    archive.track(standin.beam_table)
    images = [tf.TensorSpec([None], tf.string, name=IMAGE_INPUT)]
    archive.add_endpoint(SERVING_DEFAULT, standin.serving_default, input_signature=images)
    archive.add_endpoint(BEAM_SEARCH, standin.beam_search, input_signature=images)
    archive.add_endpoint(CAPTION_FEATURES, standin.caption_features,
                         input_signature=[tf.TensorSpec([None, FEATURE_DIM], tf.float32,
                                                         name=FEATURES_INPUT)])
    archive.write_out(export_dir, verbose=False)
    return export_dir


def publish_standin(base_path, version="auto", attention: bool = False) -> str:
    """Publishes the stand-in as <base_path>/<version> (atomically, as every export is)."""
    return str(publish_version(base_path, lambda folder, _: write_standin(str(folder), attention),
                               version))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_path", help="model base folder; the stand-in is written to <base>/<version>")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--attention", action="store_true",
                        help="also serve per-word attention maps, as an attention export does")
    args = parser.parse_args()
    print(publish_standin(args.base_path, args.version, args.attention))


if __name__ == "__main__":
    main()
