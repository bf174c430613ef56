"""Data stage: dataset readers, splits, vocabulary, TFDS builder, tf.data pipelines, feature cache."""
