"""Seeded inputs the benchmarks share (docs/benchmarks.md describes them): `photo_jpegs` and
`synthetic_captions`."""
import io

import numpy as np
from PIL import Image, ImageDraw

from data.vocabulary import END_ID, SPECIAL_TOKENS, START_ID

FEATURE_DIM = 2048  # ResNet50's pooled features


def photo_jpeg(rng: np.random.Generator, width: int, height: int, quality: int) -> bytes:
    """A vertical gradient, soft colour regions, texture, grain and a few hard-edged shapes: JPEG
    decoding cost depends on content, so neither flat colour nor noise."""
    def field(cell, amplitude, channels=3):  # smooth random field with features ~`cell` px
        small = rng.normal(0, amplitude, (max(2, height // cell), max(2, width // cell), channels))
        image = Image.fromarray(np.clip(small + 128, 0, 255).astype(np.uint8).squeeze())
        out = np.asarray(image.resize((width, height), Image.BICUBIC), np.float32) - 128
        return out if channels == 3 else out[:, :, None]

    top, bottom = rng.uniform(40, 220, size=(2, 3))
    ramp = np.linspace(0, 1, height)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp + field(90, 45) + field(12, 30, 1)
              + field(3, 30, 1) + rng.normal(0, 9, size=(height, width, 1)))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(4, 9)):
        x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
        box = (x0, y0, x0 + rng.integers(30, width // 2), y0 + rng.integers(30, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    pixels = np.asarray(image, np.float32) + field(2, 22, 1)  # texture on the objects too
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def photo_jpegs(count: int, width: int = 500, height: int = 375, quality: int = 94,
                seed: int = 0) -> list[bytes]:
    """`count` photo-like JPEGs; Flickr30k photos are at most 500 px on their long side."""
    rng = np.random.default_rng(seed)
    return [photo_jpeg(rng, width, height, quality) for _ in range(count)]


def synthetic_captions(images: int, captions_per_image: int = 5, vocab_size: int = 20_013,
                       mean_words: float = 14.0, seed: int = 0):
    """(features [images, 2048] float32, image row per caption, token lists [<start> w.. <end>]):
    lognormal words per caption (Flickr30k's right skew), at most 40 tokens (the training cap)."""
    rng = np.random.default_rng(seed)
    sigma = 0.4
    words = np.rint(rng.lognormal(np.log(mean_words) - sigma ** 2 / 2, sigma,
                                  images * captions_per_image))
    words = np.clip(words, 5, 38).astype(np.int64)
    ids = rng.integers(len(SPECIAL_TOKENS), vocab_size, int(words.sum()))
    tokens = [[START_ID, *chunk, END_ID] for chunk in np.split(ids, np.cumsum(words)[:-1])]
    rows = np.arange(len(tokens)) // captions_per_image
    features = rng.standard_normal((images, FEATURE_DIM), dtype=np.float32)
    return features, rows, tokens
