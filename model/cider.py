"""CIDEr-D on token ids in TensorFlow ops: the reward of self-critical training.

The definition is pycocoevalcap 1.2's `CiderScorer` (the CIDEr-D papers report): n-grams of
1..4 tokens as tf-idf vectors with idf = log(images) - log(max(1, document frequency)), clipped
cosine similarity with each reference, a Gaussian penalty (sigma 6) on the difference of the two
captions' lengths, mean over n, mean over references, times 10. Two details follow pycocoevalcap
exactly: a caption's "length" is its number of bigrams, and an n-gram missing from the
references has document frequency 1.

Document frequencies come from the training split's references (`cider_references`), so a
batch's reward does not depend on which images share it. Captions are token ids ending in <end>
(it counts as a word, so the reward also says when to stop), then 0 (<pad>). A reference word
the vocabulary lacks gets an id of its own above the vocabulary: it can never match <unk>.

Everything is vectorised over the batch (equality masks over n-gram positions, sorted-key lookup
of document frequencies): no Python per caption inside the training step.
"""
import dataclasses
import math
from typing import Sequence

import numpy as np
import tensorflow as tf

from data.vocabulary import END_ID, PAD_ID

NGRAMS = 4
SIGMA = 6.0


@dataclasses.dataclass(frozen=True)
class CiderReferences:
    """The training references as CIDEr-D needs them."""
    tokens: np.ndarray     # int32 [images, references, length]: ids + <end>, 0-padded
    df_keys: np.ndarray    # int64 [M], sorted: every n-gram of the references
    log_df: np.ndarray     # float64 [M]: log(number of images whose references hold it)
    log_images: float      # log(number of images)
    base: int              # n-gram key radix: above every token id


def cider_references(captions: Sequence[Sequence[str]], vocabulary: Sequence[str]
                     ) -> CiderReferences:
    """From each image's cleaned reference captions and the vocabulary's tokens (id = index)."""
    if not captions or any(not refs for refs in captions):
        raise ValueError("cider_references needs at least one reference caption per image")
    ids = {token: i for i, token in enumerate(vocabulary)}
    encoded = [[[ids.setdefault(word, len(ids)) for word in ref.split()] + [END_ID]
                for ref in refs] for refs in captions]
    base = len(ids) + 1
    if base ** NGRAMS >= 2 ** 63:
        raise ValueError(f"{base - 1} distinct words: too many for int64 {NGRAMS}-gram keys")
    most_refs = max(len(refs) for refs in encoded)
    longest = max(len(ref) for refs in encoded for ref in refs)
    tokens = np.zeros([len(encoded), most_refs, longest], np.int32)
    for i, refs in enumerate(encoded):
        for j, ref in enumerate(refs):
            tokens[i, j, :len(ref)] = ref
    per_image = []  # each image's distinct n-gram keys: one document each
    for image in tokens:
        keys = [ngram_keys_np(image, n, base) for n in range(1, NGRAMS + 1)]
        per_image.append(np.unique(np.concatenate([k[k > 0] for k in keys])))
    df_keys, df = np.unique(np.concatenate(per_image), return_counts=True)
    return CiderReferences(tokens, df_keys.astype(np.int64), np.log(df.astype(np.float64)),
                           math.log(len(tokens)), base)


def ngram_keys_np(tokens: np.ndarray, n: int, base: int) -> np.ndarray:
    """int64 key of each n-gram along the last axis ([..., L - n + 1]); 0 where it holds <pad>."""
    tokens = tokens.astype(np.int64)
    length = tokens.shape[-1] - n + 1
    if length < 1:
        return np.zeros([*tokens.shape[:-1], 0], np.int64)
    keys = np.zeros([*tokens.shape[:-1], length], np.int64)
    valid = np.ones(keys.shape, bool)
    for j in range(n):
        part = tokens[..., j:j + length]
        keys += part * base ** j
        valid &= part != PAD_ID
    return np.where(valid, keys, 0)


class CiderD:
    """cider_d(candidates [N, L], references [N, R, L']) -> float64 [N], in graph ops."""

    def __init__(self, references: CiderReferences):
        self.base = references.base
        self.log_images = tf.constant(references.log_images, tf.float64)
        self.df_keys = tf.constant(references.df_keys)
        self.log_df = tf.constant(references.log_df)

    def __call__(self, candidates, references):
        candidates = tf.cast(candidates, tf.int64)
        references = tf.cast(references, tf.int64)
        refs_per_image = tf.shape(references)[1]
        flat_refs = tf.reshape(references, [-1, tf.shape(references)[2]])      # [N*R, L']
        repeated = tf.repeat(candidates, refs_per_image, axis=0)                 # [N*R, L]
        penalty = tf.exp(-tf.square(_length(repeated) - _length(flat_refs)) / (2 * SIGMA ** 2))
        per_order = []
        for n in range(1, NGRAMS + 1):
            hyp, hyp_ok = self._keys(candidates, n)
            hyp_rep, hyp_rep_ok = self._keys(repeated, n)
            ref, ref_ok = self._keys(flat_refs, n)
            hyp_idf, ref_idf = self._idf(hyp), self._idf(ref)
            hyp_tf = _count(hyp, hyp, hyp_ok)                                    # [N, A]
            both_tf = _count(hyp_rep, ref, ref_ok)                               # [N*R, A]
            hyp_tf_rep = tf.repeat(hyp_tf, refs_per_image, axis=0)
            idf_rep = tf.repeat(hyp_idf, refs_per_image, axis=0)
            mask = tf.cast(hyp_rep_ok, tf.float64)
            # Over distinct n-grams = over positions, each divided by its count in the caption.
            clipped = tf.minimum(hyp_tf_rep, both_tf) * both_tf / tf.maximum(hyp_tf_rep, 1.0)
            overlap = tf.reduce_sum(mask * tf.square(idf_rep) * clipped, -1)
            hyp_norm = tf.sqrt(tf.reduce_sum(tf.cast(hyp_ok, tf.float64) * hyp_tf
                                             * tf.square(hyp_idf), -1))
            ref_norm = tf.sqrt(tf.reduce_sum(tf.cast(ref_ok, tf.float64)
                                             * _count(ref, ref, ref_ok) * tf.square(ref_idf), -1))
            norms = tf.repeat(hyp_norm, refs_per_image, axis=0) * ref_norm
            similarity = tf.where(norms > 0, overlap / tf.where(norms > 0, norms, 1.0), overlap)
            per_order.append(similarity * penalty)
        scores = tf.reshape(tf.reduce_mean(tf.stack(per_order, -1), -1), [-1, refs_per_image])
        real = tf.cast(references[:, :, 0] != PAD_ID, tf.float64)                # [N, R]
        return 10.0 * tf.reduce_sum(scores * real, -1) / tf.maximum(tf.reduce_sum(real, -1), 1.0)

    def _keys(self, tokens, n):
        """(keys [B, L - n + 1], valid [B, L - n + 1]) of the n-grams of each row."""
        length = tf.maximum(tf.shape(tokens)[1] - n + 1, 0)
        keys = tf.zeros([tf.shape(tokens)[0], length], tf.int64)
        valid = tf.ones([tf.shape(tokens)[0], length], tf.bool)
        for j in range(n):
            part = tokens[:, j:j + length]
            keys += part * self.base ** j
            valid &= part != PAD_ID
        return keys, valid

    def _idf(self, keys):
        """log(images) - log(document frequency), with frequency 1 for unseen n-grams."""
        position = tf.searchsorted(self.df_keys, tf.reshape(keys, [-1]))
        position = tf.minimum(position, tf.size(self.df_keys, out_type=position.dtype) - 1)
        found = tf.gather(self.df_keys, position) == tf.reshape(keys, [-1])
        log_df = tf.where(found, tf.gather(self.log_df, position), 0.0)
        return self.log_images - tf.reshape(log_df, tf.shape(keys))


def _count(keys, others, others_valid):
    """How often each of keys [B, A] occurs among the valid others [B, C] of its row."""
    same = (keys[:, :, None] == others[:, None, :]) & others_valid[:, None, :]
    return tf.reduce_sum(tf.cast(same, tf.float64), -1)


def _length(tokens):
    """pycocoevalcap's caption length: its number of bigrams."""
    words = tf.reduce_sum(tf.cast(tokens != PAD_ID, tf.float64), -1)
    return tf.maximum(words - 1.0, 0.0)
