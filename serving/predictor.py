"""Predict, shared by the REST and gRPC front ends: resolve the model version and signature, check
the inputs against the signature (before they can join a batch), run directly or through the batcher,
and apply the output filter."""
import concurrent.futures
import contextlib

import numpy as np

from serving.batching import Batcher
from serving.errors import DeadlineExceededError, InvalidArgumentError
from serving.model_registry import LoadedVersion, ModelRegistry, Signature


class Predictor:
    def __init__(self, registry: ModelRegistry, batcher: Batcher | None = None):
        self.registry = registry
        self.batcher = batcher

    @contextlib.contextmanager
    def version(self, name: str, version: int | None = None, label: str | None = None):
        """The requested LoadedVersion, held so that it is not unloaded while in use."""
        loaded = self.registry.acquire(name, version, label)
        try:
            yield loaded
        finally:
            loaded.release()

    def predict(self, loaded: LoadedVersion, signature: Signature, inputs: dict[str, np.ndarray],
                output_filter=(), timeout: float | None = None) -> dict[str, np.ndarray]:
        inputs = check_inputs(signature, inputs)
        unknown = [name for name in output_filter if name not in signature.outputs]
        if unknown:
            raise InvalidArgumentError(f"output tensor alias not found in signature: {unknown[0]}. "
                                       f"Outputs expected to be in the set {{{','.join(sorted(signature.outputs))}}}.")
        if self.batcher is None or _is_empty(inputs):
            outputs = loaded.run(signature, inputs, timeout)
        else:
            key = (loaded.model_name, loaded.version, id(loaded), signature.name)
            future = self.batcher.submit(key, lambda merged: loaded.run(signature, merged), inputs)
            try:
                outputs = future.result(timeout=timeout)
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise DeadlineExceededError(f"Request timed out after {timeout} s") from None
        if output_filter:
            outputs = {name: outputs[name] for name in output_filter}
        return outputs


def check_inputs(signature: Signature, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Exactly the signature's input aliases, with its dtypes and compatible shapes (TF Serving's
    messages), so a bad request is refused alone instead of failing a merged batch."""
    expected = "{" + ",".join(sorted(signature.inputs)) + "}"
    for alias in inputs:
        if alias not in signature.inputs:
            raise InvalidArgumentError(f"input tensor alias not found in signature: {alias}. "
                                       f"Inputs expected to be in the set {expected}.")
    missing = [alias for alias in signature.inputs if alias not in inputs]
    if missing:
        raise InvalidArgumentError(f"input size does not match signature: {len(inputs)}!="
                                   f"{len(signature.inputs)} len({{{','.join(sorted(inputs))}}}) != "
                                   f"len({expected}). Missing: {missing[0]}")
    checked = {}
    for alias, value in inputs.items():
        spec = signature.inputs[alias]
        value = np.asarray(value)
        if spec.dtype == np.object_:
            if value.dtype != np.object_ and value.size:
                raise InvalidArgumentError(f"Input '{alias}' expects strings (DT_STRING), got {value.dtype}")
            value = value.astype(object)
        else:
            if value.dtype == np.object_ or value.dtype.kind in "SU":
                raise InvalidArgumentError(f"Input '{alias}' expects {spec.dtype.name} numbers, got strings")
            value = value.astype(spec.dtype)
        if spec.shape is not None:
            if value.ndim != len(spec.shape) or any(
                    want is not None and got != want for got, want in zip(value.shape, spec.shape)):
                want = "[" + ",".join("-1" if d is None else str(d) for d in spec.shape) + "]"
                raise InvalidArgumentError(f"Input '{alias}' must have shape {want}, got {list(value.shape)}")
        checked[alias] = value
    return checked


def _is_empty(inputs: dict[str, np.ndarray]) -> bool:
    return any(np.ndim(v) == 0 or len(v) == 0 for v in inputs.values())
