"""TF Serving's JSON tensor rules (serving.rest_json) on small signatures, no server needed."""
import numpy as np
import pytest

from serving.errors import InvalidArgumentError
from serving.model_registry import Signature, TensorSpec
from serving.rest_json import format_predict_response, parse_predict_body

STRINGS = TensorSpec("x:0", np.dtype(object), (None,))
FLOATS = TensorSpec("f:0", np.dtype(np.float32), (None, 2))
ONE_INPUT = Signature("s", {"image_bytes": STRINGS}, {"caption": STRINGS})
TWO_INPUTS = Signature("t", {"image_bytes": STRINGS, "features": FLOATS}, {"caption": STRINGS})


def test_row_and_columnar_inputs():
    inputs, row = parse_predict_body({"instances": [{"b64": "aGk="}, "plain"]}, ONE_INPUT)
    assert row and inputs["image_bytes"].tolist() == [b"hi", b"plain"]
    inputs, row = parse_predict_body({"inputs": [{"b64": "aGk="}]}, ONE_INPUT)
    assert not row and inputs["image_bytes"].tolist() == [b"hi"]
    inputs, _ = parse_predict_body({"instances": [{"image_bytes": "a", "features": [1, 2]},
                                                  {"image_bytes": "b", "features": [3, 4]}]}, TWO_INPUTS)
    assert inputs["features"].dtype == np.float32 and inputs["features"].shape == (2, 2)
    inputs, _ = parse_predict_body({"inputs": {"image_bytes": ["a"], "features": [[1, 2]]}}, TWO_INPUTS)
    assert inputs["image_bytes"].tolist() == [b"a"]


@pytest.mark.parametrize("body", [
    {"instances": ["a"], "inputs": ["a"]},                  # both formats
    {},                                                      # neither
    {"instances": "a"},                                      # not a list
    {"instances": [{"b64": "%%%"}]},                         # bad base64
    {"instances": [1]},                                      # number for a string input
    {"instances": ["a", "b"], "signature_name": "t"},        # unnamed rows, two inputs (see below)
])
def test_invalid_bodies(body):
    signature = TWO_INPUTS if body.get("signature_name") == "t" else ONE_INPUT
    with pytest.raises(InvalidArgumentError):
        parse_predict_body(body, signature)


def test_outputs_lone_output_loses_its_name_and_bytes_outputs_are_b64():
    captions = np.array([b"a dog", b"a cat"], dtype=object)
    assert format_predict_response({"caption": captions}, row_format=True) == {"predictions": ["a dog", "a cat"]}
    assert format_predict_response({"caption": captions}, row_format=False) == {"outputs": ["a dog", "a cat"]}
    both = format_predict_response({"caption": captions, "thumb_bytes": np.array([b"\x00", b"\xff"], dtype=object)},
                                   row_format=True)
    assert both == {"predictions": [{"caption": "a dog", "thumb_bytes": {"b64": "AA=="}},
                                    {"caption": "a cat", "thumb_bytes": {"b64": "/w=="}}]}
    columns = format_predict_response({"caption": captions, "log_prob": np.array([-1.5, -2.0], np.float32)},
                                      row_format=False)
    assert columns == {"outputs": {"caption": ["a dog", "a cat"], "log_prob": [-1.5, -2.0]}}
