"""A run's encoder features and beam alternatives computed in this process: what an export of the
run must serve."""
from pathlib import Path


def encoder_features(run, files):
    """A loaded run's encoder features of image files, computed in this process the way its export
    computes them (data.images.decode_batch, then the run's ResNet50): float32 [n, *feature_shape]."""
    import numpy as np
    import tensorflow as tf
    from data.images import decode_batch
    from model.encoder import build_encoder
    pixels, errors = decode_batch(tf.constant([Path(f).read_bytes() for f in files]))
    assert not any(errors.numpy()), errors.numpy()
    encoder = build_encoder(run.encoder_config, run.model_config.feature_kind)
    return np.asarray(encoder(pixels, training=False), np.float32)


def in_process_alternatives(run, features, decode=None) -> list[list[tuple[str, float]]]:
    """beam_search's alternatives computed in this process by model.decoding (the decoder
    model.evaluate runs) with `decode` (a DecodeConfig; default the run's): per image, every
    beam's (caption, normalised score), best first."""
    import tensorflow as tf
    from model.decoding import decode_features, ids_to_captions, words_table
    captioner, table = run.load_captioner(), words_table(tokens=run.vocabulary.tokens)

    @tf.function(input_signature=[tf.TensorSpec([None, *features.shape[1:]], tf.float32)])
    def beams(batch):
        *_, ids, scores = decode_features(captioner, batch, decode or run.decode_config, "beam",
                                          return_beams=True)
        return ids_to_captions(ids, table), scores

    captions, scores = beams(tf.constant(features))
    return [[(c.decode(), float(s)) for c, s in zip(row, row_scores)]
            for row, row_scores in zip(captions.numpy(), scores.numpy())]
