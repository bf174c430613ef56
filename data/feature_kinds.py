"""The kinds of ResNet50 feature a cache holds (model/encoder.py builds them): per-image shape and
storage dtype. A leaf module, without TensorFlow: the export and serving stages read these shapes
without loading the feature cache's code."""

FEATURE_DIM = 2048
GRID = 7  # ResNet50 downsamples 224 px by 32: a 7x7 grid of locations
SPATIAL_SHAPE = (GRID, GRID, FEATURE_DIM)
CONV4_SHAPE = (2 * GRID, 2 * GRID, 1024)
# Maps are float16 on disk (half the bytes; their values are far inside float16's range), the
# pooled vector float32.
FEATURE_KINDS = {"pooled": ((FEATURE_DIM,), "float32"), "spatial": (SPATIAL_SHAPE, "float16"),
                 "conv4": (CONV4_SHAPE, "float16")}
