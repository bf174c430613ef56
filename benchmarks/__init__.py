"""Speed measurements, each run as `python -m benchmarks.NAME` from the repository root."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # set before any benchmark imports TensorFlow
