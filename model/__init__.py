"""model stage."""
from data.quiet import quiet_tensorflow
quiet_tensorflow()  # before anything imports TensorFlow (data/quiet.py)
