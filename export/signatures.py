"""The serving contract as Keras ExportArchive endpoints (all batch-major, so TF Serving's batching
can merge requests):

  serving_default   image_bytes: string [-1]      -> caption, log_prob, error   (greedy)
  beam_search       image_bytes: string [-1]      -> caption, log_prob, error   (beam search)
  caption_features  features: float32 [-1, 2048]  -> caption, log_prob, error   (greedy)

Everything is in the graph: decode and check (data/images.py), ResNet50, the decoder loop
(model/decoding.py), id -> word lookup and the cleaning rule. Nothing here is a second copy.
"""
import keras
import tensorflow as tf

from data.images import decode_batch
from model.decoding import DecodeConfig, decode_features, ids_to_captions, words_table

SIGNATURES = ("serving_default", "beam_search", "caption_features")
IMAGE_INPUT = tf.TensorSpec([None], tf.string, name="image_bytes")


def build_archive(encoder: keras.Model, captioner: keras.Model, vocab_file: str,
                  decode: DecodeConfig) -> keras.export.ExportArchive:
    """Returns an ExportArchive with the three endpoints; call .write_out(path) on it."""
    table = words_table(vocab_file=vocab_file)
    feature_input = tf.TensorSpec([None, captioner.config.feature_dim], tf.float32, name="features")

    def caption(features, method):
        ids, log_prob = decode_features(captioner, features, decode, method)
        return ids_to_captions(ids, table), log_prob

    def from_images(image_bytes, method):
        images, errors = decode_batch(image_bytes)
        # ResNet's kernels reject an empty batch; an empty request gets empty outputs instead.
        features = tf.cond(tf.size(image_bytes) > 0,
                           lambda: tf.cast(encoder(images, training=False), tf.float32),
                           lambda: tf.zeros([0, captioner.config.feature_dim]))
        captions, log_prob = caption(features, method)
        ok = tf.equal(errors, "")  # a bad image gets an empty caption, never a failed batch
        return {"caption": tf.where(ok, captions, ""),
                "log_prob": tf.where(ok, log_prob, 0.0),
                "error": errors}

    def from_features(features):
        captions, log_prob = caption(features, "greedy")
        return {"caption": captions, "log_prob": log_prob,
                "error": tf.fill(tf.shape(captions), "")}

    archive = keras.export.ExportArchive()
    # Only the table: ExportArchive already saves every tf.Variable the endpoints capture (as
    # `_all_variables`). track(model) would add the Keras wrappers of those same variables, which
    # TensorFlow cannot tell apart from them, and write every weight twice (keras-team/keras#23553).
    archive.track(table)
    archive.add_endpoint("serving_default", lambda image_bytes: from_images(image_bytes, "greedy"),
                         input_signature=[IMAGE_INPUT])
    archive.add_endpoint("beam_search", lambda image_bytes: from_images(image_bytes, "beam"),
                         input_signature=[IMAGE_INPUT])
    archive.add_endpoint("caption_features", from_features, input_signature=[feature_input])
    return archive
