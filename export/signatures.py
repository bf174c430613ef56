"""The serving contract as Keras ExportArchive endpoints (all batch-major, so TF Serving's batching
can merge requests):

  serving_default   image_bytes: string [-1]      -> caption, log_prob, error   (greedy)
  beam_search       image_bytes: string [-1]      -> caption, log_prob, error   (beam search)
  caption_features  features: float32 [-1, 2048]  -> caption, log_prob, error   (greedy)

An attention model (model/attention.py) takes features [-1, 7, 7, 2048] in caption_features, and
its serving_default and beam_search add
  attention: float32 [-1, max_new_tokens, 7, 7]: row i is where the model looked for word i of
             the caption, the next row for <end>, zeros after (model.decoding.aligned_attention);
             all zeros for a bad image.

Everything is in the graph: decode and check (data/images.py), ResNet50, the decoder loop
(model/decoding.py), id -> word lookup and the cleaning rule. Nothing here is a second copy.
"""
import keras
import tensorflow as tf

from data.images import decode_batch
from model.decoding import DecodeConfig, decode_features, ids_to_captions, words_table

SIGNATURES = ("serving_default", "beam_search", "caption_features")
OUTPUTS = ("caption", "log_prob", "error")  # of every signature; attention models add "attention"
IMAGE_INPUT = tf.TensorSpec([None], tf.string, name="image_bytes")


def build_archive(encoder: keras.Model, captioner: keras.Model, vocab_file: str,
                  decode: DecodeConfig) -> keras.export.ExportArchive:
    """Returns an ExportArchive with the three endpoints; call .write_out(path) on it."""
    table = words_table(vocab_file=vocab_file)
    feature_shape = captioner.config.feature_shape
    with_attention = captioner.config.attention
    feature_input = tf.TensorSpec([None, *feature_shape], tf.float32, name="features")

    def caption(features, method, maps=False):
        ids, log_prob, *attention = decode_features(captioner, features, decode, method, maps)
        return ids_to_captions(ids, table), log_prob, attention

    def from_images(image_bytes, method):
        images, errors = decode_batch(image_bytes)
        # ResNet's kernels reject an empty batch; an empty request gets empty outputs instead.
        features = tf.cond(tf.size(image_bytes) > 0,
                           lambda: tf.cast(encoder(images, training=False), tf.float32),
                           lambda: tf.zeros([0, *feature_shape]))
        captions, log_prob, attention = caption(features, method, with_attention)
        ok = tf.equal(errors, "")  # a bad image gets an empty caption, never a failed batch
        outputs = {"caption": tf.where(ok, captions, ""),
                   "log_prob": tf.where(ok, log_prob, 0.0),
                   "error": errors}
        if attention:
            outputs["attention"] = tf.where(ok[:, None, None, None], attention[0], 0.0)
        return outputs

    def from_features(features):
        captions, log_prob, _ = caption(features, "greedy")
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
