"""TF Serving's JSON tensor format (api_rest.md, json_tensor.cc): predict request bodies to arrays and
outputs back to JSON.

Request: `{"signature_name": ..., "instances": [...]}` (row format) or `{"inputs": ...}` (columnar),
never both. Row format with one input: a plain list of values; with several (or named): a list of
objects. Binary strings as `{"b64": "<standard base64>"}`. Response: row -> `{"predictions": [...]}`,
columnar -> `{"outputs": ...}`; a lone output loses its name; string outputs are plain JSON strings
unless the output name ends in `_bytes` (then `{"b64": ...}`).
"""
import base64
import binascii

import numpy as np

from serving.errors import InvalidArgumentError
from serving.model_registry import Signature


def parse_predict_body(body, signature: Signature) -> tuple[dict[str, np.ndarray], bool]:
    """-> (inputs by alias, row_format)."""
    if not isinstance(body, dict):
        raise InvalidArgumentError("JSON Value: request body must be a JSON object")
    has_rows, has_columns = "instances" in body, "inputs" in body
    if has_rows and has_columns:
        raise InvalidArgumentError("Not a valid JSON: both 'instances' and 'inputs' keys found; "
                                   "use exactly one (row or columnar format)")
    if not (has_rows or has_columns):
        raise InvalidArgumentError("Missing 'inputs' or 'instances' key")
    if has_rows:
        return _parse_rows(body["instances"], signature), True
    return _parse_columns(body["inputs"], signature), False


def _is_named(value) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _is_b64(value) -> bool:
    return isinstance(value, dict) and list(value) == ["b64"]


def _parse_rows(instances, signature: Signature) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise InvalidArgumentError("'instances' must be a JSON list")
    if instances and _is_named(instances[0]):
        keys = set(instances[0])
        for i, row in enumerate(instances):
            if not _is_named(row) or set(row) != keys:
                raise InvalidArgumentError(f"Failed to process element: {i} of 'instances' list: every "
                                           f"element must be an object with the keys {sorted(keys)}")
        columns = {key: [row[key] for row in instances] for key in keys}
    else:
        if len(signature.inputs) != 1:
            raise InvalidArgumentError(f"'instances' must be a list of objects naming the inputs "
                                       f"{sorted(signature.inputs)} of this signature")
        columns = {next(iter(signature.inputs)): instances}
    return {alias: _to_array(value, signature, alias) for alias, value in columns.items()}


def _parse_columns(inputs, signature: Signature) -> dict[str, np.ndarray]:
    if _is_named(inputs):
        return {alias: _to_array(value, signature, alias) for alias, value in inputs.items()}
    if len(signature.inputs) != 1:
        raise InvalidArgumentError(f"'inputs' must be an object naming the inputs "
                                   f"{sorted(signature.inputs)} of this signature")
    alias = next(iter(signature.inputs))
    return {alias: _to_array(inputs, signature, alias)}


def _to_array(value, signature: Signature, alias: str) -> np.ndarray:
    spec = signature.inputs.get(alias)
    if spec is None:
        raise InvalidArgumentError(f"input tensor alias not found in signature: {alias}. Inputs "
                                   f"expected to be in the set {{{','.join(sorted(signature.inputs))}}}.")
    try:
        if spec.dtype == np.object_:
            return np.array(_strings(value, alias), dtype=object)
        return np.array(value, dtype=spec.dtype)
    except (ValueError, TypeError) as e:
        if isinstance(e, InvalidArgumentError):
            raise
        raise InvalidArgumentError(f"Input '{alias}' is not a valid {spec.dtype.name} tensor: {e}") from e


def _strings(value, alias: str):
    """Nested JSON of strings / {"b64": ...} -> nested lists of bytes."""
    if isinstance(value, list):
        return [_strings(v, alias) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    if _is_b64(value) and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgumentError(f"Unable to base64 decode the value of input '{alias}'") from None
    raise InvalidArgumentError(f"Input '{alias}' expects strings or {{\"b64\": ...}} objects, "
                               f"got {str(value)[:80]}")


def _to_json(value: np.ndarray, name: str):
    """Array -> nested JSON values; strings decoded, or {"b64"} for outputs named *_bytes."""
    if value.dtype == np.object_ or value.dtype.kind == "S":
        def convert(item):
            if name.endswith("_bytes"):
                return {"b64": base64.b64encode(item).decode("ascii")}
            return item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
        flat = [convert(item) for item in value.reshape(-1)]
        return np.array(flat, dtype=object).reshape(value.shape).tolist() if value.ndim else flat[0]
    return value.tolist()


def format_predict_response(outputs: dict[str, np.ndarray], row_format: bool) -> dict:
    names = sorted(outputs)
    if not row_format:
        if len(names) == 1:
            return {"outputs": _to_json(outputs[names[0]], names[0])}
        return {"outputs": {name: _to_json(outputs[name], name) for name in names}}
    sizes = {name: (np.shape(outputs[name])[0] if np.ndim(outputs[name]) else None) for name in names}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise InvalidArgumentError(f"Row format needs every output to share the batch dimension, "
                                   f"got first dimensions {sizes}; use the columnar 'inputs' format")
    columns = {name: _to_json(outputs[name], name) for name in names}
    rows = next(iter(sizes.values()))
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    return {"predictions": [{name: columns[name][i] for name in names} for i in range(rows)]}

