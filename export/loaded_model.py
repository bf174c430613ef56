"""What both loaders share (export.artifact.SessionModel, export.cc_loader.CcSavedModel): the
interface they offer (`LoadedModel`: run, caption, close, context manager), the error a failed load
raises (`ModelLoadError`) and the request checks they and the development server make
(`find_signature`, `check_inputs`, in TF Serving's wording). Clients never need it: the names and
the response parser they use are export/contract.py's.
"""
import numpy as np

from export.contract import IMAGE_INPUT, SERVING_DEFAULT, CaptionResult, caption_results

DT_STRING = 7  # TensorFlow's DataType enum, as SignatureDefs store it
DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 7: "string", 9: "int64",
               10: "bool", 14: "bfloat16", 19: "float16"}


class ModelLoadError(RuntimeError):
    """A version could not be loaded (missing folder, not a SavedModel, no "serve" tag, ...)."""


def find_signature(signatures: dict, name: str):
    """The SignatureDef called `name` ("" = serving_default); ValueError if there is none."""
    if (name or SERVING_DEFAULT) not in signatures:
        raise ValueError(f'Serving signature name: "{name}" not found in signature def')
    return signatures[name or SERVING_DEFAULT]


def check_inputs(signature, inputs: dict) -> None:
    """ValueError, in TF Serving's words, for an unknown or missing input name, or a string fed to
    a number input (or the reverse): such a request must not reach the graph."""
    expected = "{" + ",".join(sorted(signature.inputs)) + "}"
    unknown, missing = sorted(set(inputs) - set(signature.inputs)), sorted(set(signature.inputs) - set(inputs))
    if unknown or missing:
        raise ValueError(f"input tensor alias {'not found in signature' if unknown else 'missing'}: "
                         f"{(unknown or missing)[0]}. Inputs expected to be in the set {expected}.")
    for name, value in inputs.items():
        want, got = signature.inputs[name].dtype, np.asarray(value).dtype
        if (got.kind in "OSU") != (want == DT_STRING):
            raise ValueError(f"Expects input '{name}' to be {DTYPE_NAMES.get(want, want)} "
                             f"but {got} is provided")


class LoadedModel:
    """What both loaders offer (export.artifact.SessionModel, export.cc_loader.CcSavedModel):
    `signatures` {name: SignatureDef}, `run(signature, inputs)` {output: array}, `caption`, `close`."""
    signatures: dict

    def run(self, signature: str, inputs: dict) -> dict:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def signature(self, name: str):
        return find_signature(self.signatures, name)

    def checked_signature(self, name: str, inputs: dict):
        """The SignatureDef to run, after the request checks every loader makes."""
        signature = self.signature(name)
        check_inputs(signature, inputs)
        return signature

    def caption(self, images: list[bytes], signature: str = SERVING_DEFAULT) -> list[CaptionResult]:
        """One CaptionResult per encoded image, in order; a bad image gets .error, never a raise."""
        return caption_results(self.run(signature, {IMAGE_INPUT: np.array(images, dtype=object)}),
                               len(images))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
