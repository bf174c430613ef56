"""The serving contract (export/contract.py: its names and shapes) as Keras ExportArchive
endpoints, all batch-major so that TF Serving's batching can merge requests.

An attention model's `attention` output: row i is where the model looked for word i of the
caption, the next row for <end>, zeros after (model.decoding.aligned_attention); all zeros for a
bad image. beam_search's `alternatives` / `alternative_scores`: every beam's caption, best first,
with its length-normalised log-probability (the first is `caption`); "" and 0 for a bad image.

Everything is in the graph: decode and check (data/images.py), ResNet50, the decoder loop
(model/decoding.py), id -> word lookup and the cleaning rule. Nothing here is a second copy.
"""
import functools

import keras
import tensorflow as tf

from data.images import decode_batch
from export.contract import (ALTERNATIVE_SCORES, ALTERNATIVES, ATTENTION, BEAM_SEARCH,
                             CAPTION_FEATURES, FEATURES_INPUT, IMAGE_INPUT, OUTPUTS, SERVING_DEFAULT)
from model.decoding import decode_features, ids_to_captions, words_table
from model.settings import DecodeConfig

IMAGE_SPEC = tf.TensorSpec([None], tf.string, name=IMAGE_INPUT)


def build_archive(encoder: keras.Model, captioner: keras.Model, vocab_file: str,
                  decode: DecodeConfig) -> keras.export.ExportArchive:
    """Returns an ExportArchive with the three endpoints; call .write_out(path) on it."""
    table = words_table(vocab_file=vocab_file)
    feature_shape = captioner.config.feature_shape
    with_attention = captioner.config.attention
    feature_input = tf.TensorSpec([None, *feature_shape], tf.float32, name=FEATURES_INPUT)

    def caption(features, method, maps):
        """(captions [B], log_prob [B], attention maps or None, beam search's (captions, scores)
        [B, beam_width] each, best first, or None)."""
        ids, log_prob, *extra = decode_features(captioner, features, decode, method, maps,
                                                return_beams=method == "beam")
        attention = extra.pop(0) if maps else None
        beams = (ids_to_captions(extra[0], table), extra[1]) if extra else None
        return ids_to_captions(ids, table), log_prob, attention, beams

    # Image decoding with ResNet50, and each decoder (method, with or without attention maps), as
    # functions the endpoints call: each is traced once for all the endpoints that use it, not
    # once per endpoint (and saving traces everything twice: once to list the variables, once
    # inside the save).
    @tf.function(input_signature=[IMAGE_SPEC], autograph=False)
    def features_of(image_bytes):
        images, errors = decode_batch(image_bytes)
        # ResNet's kernels reject an empty batch; an empty request gets empty outputs instead.
        features = tf.cond(tf.size(image_bytes) > 0,
                           lambda: tf.cast(encoder(images, training=False), tf.float32),
                           lambda: tf.zeros([0, *feature_shape]))
        return features, errors

    @functools.cache
    def decoder(method: str, maps: bool):
        return tf.function(lambda features: caption(features, method, maps),
                           input_signature=[feature_input], autograph=False)

    def from_images(image_bytes, method):
        features, errors = features_of(image_bytes)
        captions, log_prob, attention, beams = decoder(method, with_attention)(features)
        ok = tf.equal(errors, "")  # a bad image gets an empty caption, never a failed batch
        outputs = dict(zip(OUTPUTS, (tf.where(ok, captions, ""), tf.where(ok, log_prob, 0.0), errors)))
        if attention is not None:
            outputs[ATTENTION] = tf.where(ok[:, None, None, None], attention, 0.0)
        if beams is not None:
            outputs[ALTERNATIVES] = tf.where(ok[:, None], beams[0], "")
            outputs[ALTERNATIVE_SCORES] = tf.where(ok[:, None], beams[1], 0.0)
        return outputs

    def from_features(features):
        captions, log_prob, _, _ = decoder("greedy", False)(features)  # no maps to record
        return dict(zip(OUTPUTS, (captions, log_prob, tf.fill(tf.shape(captions), ""))))

    archive = keras.export.ExportArchive()
    # Only the table: ExportArchive already saves every tf.Variable the endpoints capture (as
    # `_all_variables`). track(model) would add the Keras wrappers of those same variables, which
    # TensorFlow cannot tell apart from them, and write every weight twice (keras-team/keras#23553).
    archive.track(table)
    archive.add_endpoint(SERVING_DEFAULT, lambda image_bytes: from_images(image_bytes, "greedy"),
                         input_signature=[IMAGE_SPEC])
    archive.add_endpoint(BEAM_SEARCH, lambda image_bytes: from_images(image_bytes, "beam"),
                         input_signature=[IMAGE_SPEC])
    archive.add_endpoint(CAPTION_FEATURES, from_features, input_signature=[feature_input])
    return archive
