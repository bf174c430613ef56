"""Data stage: dataset readers, splits, vocabulary, TFDS builder, tf.data pipelines, feature cache."""
from data.quiet import quiet_tensorflow
quiet_tensorflow()  # before anything imports TensorFlow (data/quiet.py)
