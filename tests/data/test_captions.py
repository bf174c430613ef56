import tensorflow as tf

from data.captions import caption_words, clean_caption_tensor, clean_captions


def test_lower_case_punctuation_and_spaces():
    assert clean_captions(["  A man's T-shirt,  is RED!  ",
                           "Two young, White males are outside near many bushes ."]) == \
        ["a mans t shirt is red", "two young white males are outside near many bushes"]


def test_special_tokens_and_empty():
    # tokens must be dropped first
    assert clean_captions(["<start> a dog <end>", "...!!"]) == ["start a dog end", ""]
    assert clean_captions([]) == []


def test_non_ascii_letters_are_kept():
    assert clean_captions(["Ünïcode CAFÉ ok"]) == ["ünïcode café ok"]


def test_same_rule_in_graph_and_in_python():
    texts = ["A Dog,  running!", "x-ray's   view"]
    graph_fn = tf.function(clean_caption_tensor)
    in_graph = [t.decode() for t in graph_fn(tf.constant(texts)).numpy()]
    assert in_graph == clean_captions(texts) == ["a dog running", "x rays view"]


def test_caption_words():
    assert caption_words("a red circle") == ["a", "red", "circle"]
