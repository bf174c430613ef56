"""The one caption-cleaning rule, used for training targets, evaluation references and the
exported model's output.

It is written in TensorFlow string ops so that the very same code runs eagerly on Python lists
(training, evaluation) and inside the exported SavedModel graph (serving).
"""
import tensorflow as tf

# Apostrophes vanish ("man's" -> "mans"); every other run of non-letters/digits becomes one space
# ("t-shirt," -> "t shirt"). RE2 character classes keep accented letters.
_APOSTROPHES = r"['’`]"
_NOT_WORD = r"[^\p{L}\p{N}]+"


def clean_caption_tensor(text: tf.Tensor) -> tf.Tensor:
    """Lower-cases, strips punctuation and collapses spaces of a string tensor (any shape)."""
    text = tf.strings.lower(text, encoding="utf-8")
    text = tf.strings.regex_replace(text, _APOSTROPHES, "")
    text = tf.strings.regex_replace(text, _NOT_WORD, " ")
    return tf.strings.strip(text)


def clean_captions(texts: list[str]) -> list[str]:
    """clean_caption_tensor for a Python list, in one vectorised call."""
    if not texts:
        return []
    cleaned = clean_caption_tensor(tf.constant(list(texts), dtype=tf.string)).numpy()
    return [c.decode("utf-8") for c in cleaned]


def caption_words(text: str) -> list[str]:
    """The tokens of an already-cleaned caption."""
    return text.split()
