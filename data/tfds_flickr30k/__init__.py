"""TFDS builder "flickr30k_captions" over the user's manual download (any layout data.layouts
reads), and `tfds_records` to read the prepared dataset back as encoded bytes.

Importing this package registers the builder, after which `tfds.load("flickr30k_captions",
data_dir=...)` works.
"""
from data.tfds_flickr30k.flickr30k_captions import (  # noqa: F401
    NAME, TFDS_SPLITS, Flickr30kCaptions, prepare, tfds_records)
