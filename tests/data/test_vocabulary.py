"""Vocabulary rules: reserved ids, min count, deterministic order, coverage, files, OOV."""
import json

import pytest

from data.vocabulary import END, PAD, START, UNK, Vocabulary, VocabularyError


CAPTIONS = ["a dog runs", "a dog sits", "a cat runs", "a bird"]
# counts: a 4, dog 2, runs 2, sits 1, cat 1, bird 1  (11 words)


def test_reserved_ids_min_count_and_tie_order():
    vocab = Vocabulary.build(CAPTIONS, min_count=2)
    assert vocab.tokens == [PAD, START, END, UNK, "a", "dog", "runs"]  # dog/runs tie: by word
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)
    assert len(vocab) == 7 and vocab.min_count == 2
    assert Vocabulary.build(CAPTIONS, min_count=1).tokens[4:] == [
        "a", "dog", "runs", "bird", "cat", "sits"]
    assert Vocabulary.build(reversed(CAPTIONS), min_count=1).tokens == Vocabulary.build(
        CAPTIONS, min_count=1).tokens


def test_default_min_count_is_five():
    vocab = Vocabulary.build(["x y"] * 5 + ["y"] * 4 + ["z"])
    assert vocab.min_count == 5
    assert vocab.tokens[4:] == ["y", "x"]


def test_coverage_on_a_hand_made_case():
    vocab = Vocabulary.build(CAPTIONS, min_count=2)
    assert vocab.coverage == pytest.approx(8 / 11)  # a 4 + dog 2 + runs 2 of 11 occurrences
    assert Vocabulary.build(CAPTIONS, min_count=1).coverage == 1.0
    assert Vocabulary.build([], min_count=1).coverage == 0.0


def test_encode_and_unknown_words():
    # ids -> text is model/decoding.py's ids_to_captions, the one path (tested there).
    vocab = Vocabulary.build(CAPTIONS, min_count=2)
    ids = vocab.encode("a dog eats")
    assert ids == [1, 4, 5, 3, 2]
    assert [vocab.tokens[i] for i in ids] == [START, "a", "dog", UNK, END]
    assert vocab.encode("") == [1, 2]
    # A literal "<unk>" in a caption is just an unknown word, not a second <unk> entry.
    assert Vocabulary.build(["<unk> <unk> a"], min_count=1).tokens == [PAD, START, END, UNK, "a"]


def test_save_load_round_trip_plain_text(tmp_path):
    vocab = Vocabulary.build(CAPTIONS + ["un garçon à vélo"] * 2, min_count=2)
    vocab.save(tmp_path)
    lines = (tmp_path / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert lines == vocab.tokens and lines[:4] == [PAD, START, END, UNK]
    settings = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert settings["min_count"] == 2 and settings["size"] == len(vocab)
    assert settings["coverage"] == vocab.coverage
    assert settings["special_tokens"] == {PAD: 0, START: 1, END: 2, UNK: 3}
    loaded = Vocabulary.load(tmp_path)
    assert loaded == vocab
    assert loaded.encode("un garçon") == vocab.encode("un garçon")


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(VocabularyError, match="vocab.txt is missing"):
        Vocabulary.load(tmp_path)
    Vocabulary.build(CAPTIONS, min_count=1).save(tmp_path)
    tokens = tmp_path / "vocab.txt"
    tokens.write_text("\n".join(tokens.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(VocabularyError, match="holds 9 tokens but .*size 10"):
        Vocabulary.load(tmp_path)
    tokens.write_text("\n".join(["<unk>", "<start>", "<end>", "<pad>"] + list("abcdef")) + "\n")
    with pytest.raises(VocabularyError, match="vocab.txt: a vocabulary must start with"):
        Vocabulary.load(tmp_path)
    (tmp_path / "vocab.json").write_text("[]")
    with pytest.raises(VocabularyError, match="not a vocabulary settings file"):
        Vocabulary.load(tmp_path)


def test_min_count_must_be_positive():
    with pytest.raises(ValueError, match="min_count must be >= 1, got 0"):
        Vocabulary.build(CAPTIONS, min_count=0)
