"""Word vocabulary built from the training split's cleaned captions only.

Ids 0-3 are reserved (<pad>, <start>, <end>, <unk>); then words seen at least `min_count` times,
most frequent first (ties alphabetical, so the same captions always give the same ids). Saved as
plain text: vocab.txt (one token per line, line number = id) and vocab.json (settings). The
original project built its vocabulary from every caption, test set included; this one never
sees validation or test captions.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
from typing import Iterable

from data.captions import caption_words
from data.files import atomic_write

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)
# Their ids, the same in every vocabulary: the decoder, the loss (<pad> = 0 is masked) and the
# exported model rely on them.
PAD_ID, START_ID, END_ID, UNK_ID = range(len(SPECIAL_TOKENS))
TOKENS_FILE = "vocab.txt"
SETTINGS_FILE = "vocab.json"


class VocabularyError(ValueError):
    """A saved vocabulary that is missing or does not match its settings."""


@dataclasses.dataclass
class Vocabulary:
    tokens: list[str]
    min_count: int
    coverage: float  # share of training word occurrences that are in the vocabulary
    _ids: dict[str, int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if tuple(self.tokens[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise VocabularyError(f"a vocabulary must start with {SPECIAL_TOKENS}, "
                                  f"got {self.tokens[:len(SPECIAL_TOKENS)]}")
        self._ids = {token: i for i, token in enumerate(self.tokens)}
        if len(self._ids) != len(self.tokens):
            repeated = [t for t, n in collections.Counter(self.tokens).items() if n > 1]
            raise VocabularyError(f"vocabulary tokens repeat: {repeated[:5]}")

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 5) -> "Vocabulary":
        """From already-cleaned training captions; words seen < min_count times become <unk>."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts = collections.Counter()
        for caption in captions:
            counts.update(caption_words(caption))
        for token in SPECIAL_TOKENS:  # a literal "<unk>" in a caption is just an unknown word
            counts.pop(token, None)
        kept = sorted((w for w, n in counts.items() if n >= min_count),
                      key=lambda w: (-counts[w], w))
        total = sum(counts.values())
        covered = sum(counts[w] for w in kept)
        return cls(tokens=list(SPECIAL_TOKENS) + kept, min_count=min_count,
                   coverage=covered / total if total else 0.0)

    # --- ids -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def start_id(self) -> int:
        return START_ID

    @property
    def end_id(self) -> int:
        return END_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    def token_id(self, word: str) -> int:
        return self._ids.get(word, self.unk_id)

    def encode(self, caption: str) -> list[int]:
        """[<start>, ids..., <end>] of an already-cleaned caption; unknown words -> <unk>."""
        return ([self.start_id] + [self.token_id(w) for w in caption_words(caption)]
                + [self.end_id])

    # --- files ---------------------------------------------------------------------------------
    def settings(self) -> dict:
        return {"min_count": self.min_count, "size": len(self), "coverage": self.coverage,
                "special_tokens": {token: i for i, token in enumerate(SPECIAL_TOKENS)},
                "tokens_file": TOKENS_FILE}

    def save(self, directory) -> None:
        directory = pathlib.Path(directory)
        atomic_write(directory / TOKENS_FILE, "\n".join(self.tokens) + "\n")
        atomic_write(directory / SETTINGS_FILE, json.dumps(self.settings(), indent=2) + "\n")

    @classmethod
    def load(cls, directory) -> "Vocabulary":
        directory = pathlib.Path(directory)
        tokens_path, settings_path = directory / TOKENS_FILE, directory / SETTINGS_FILE
        for path in (tokens_path, settings_path):
            if not path.is_file():
                raise VocabularyError(f"vocabulary file {path} is missing; expected "
                                      f"{TOKENS_FILE} and {SETTINGS_FILE} written by "
                                      f"Vocabulary.save")
        try:
            settings = json.loads(settings_path.read_text(encoding="utf-8"))
            min_count, size = int(settings["min_count"]), int(settings["size"])
            coverage = float(settings["coverage"])
            special = settings["special_tokens"]
        except (ValueError, KeyError, TypeError) as error:
            raise VocabularyError(f"{settings_path} is not a vocabulary settings file "
                                  f"(min_count, size, coverage, special_tokens): {error}") from None
        tokens = tokens_path.read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        if len(tokens) != size:
            raise VocabularyError(f"{tokens_path} holds {len(tokens)} tokens but {settings_path} "
                                  f"says size {size}")
        if special != {token: i for i, token in enumerate(SPECIAL_TOKENS)}:
            raise VocabularyError(f"{settings_path} has special tokens {special}, expected "
                                  f"{dict(zip(SPECIAL_TOKENS, range(len(SPECIAL_TOKENS))))}")
        if any(not t or len(t.split()) != 1 for t in tokens):
            raise VocabularyError(f"{tokens_path} has empty or space-containing tokens")
        if not 0.0 <= coverage <= 1.0:  # also refuses NaN
            raise VocabularyError(f"{settings_path}: coverage {coverage} is not in [0, 1]")
        try:
            return cls(tokens=tokens, min_count=min_count, coverage=coverage)
        except VocabularyError as error:
            raise VocabularyError(f"{tokens_path}: {error}") from None
