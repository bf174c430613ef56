"""Run an export through TensorFlow's C++ SavedModel loader, the `LoadSavedModel` that TF Serving's
SavedModelBundle calls, by way of TensorFlow's C API (`TF_LoadSessionFromSavedModel` in the
wheel's `libtensorflow_cc.so.2`), and feed/fetch the signatures by tensor name as the server does.

    python -m export.cc_loader models/captioner/1 --image a.jpg b.png
    python -m export.cc_loader models/captioner/1 --image a.jpg --signature beam_search --json

This module never imports TensorFlow's Python package: loading the C library next to it crashes
the process (clashing symbols). Signature names come from the MetaGraphDef the loader itself
returns, parsed with TensorBoard's copy of the protos (no TensorFlow import either). CcSavedModel
has SessionModel's interface and errors (export/loaded_model.py: LoadedModel, ModelLoadError,
ValueError for a bad request).
"""
import argparse
import ctypes
import importlib.util
import json
import sys
from pathlib import Path

if __name__ == "__main__":  # a command: TensorFlow's start-up noise is hidden before anything loads it
    from data.quiet import quiet_command
    quiet_command()

import numpy as np

from data.quiet import dropping_noise
from export.contract import IMAGE_SIGNATURES, SERVING_DEFAULT
from export.loaded_model import LoadedModel, ModelLoadError

SERVE_TAG = b"serve"
TF_STRING = 7
TSTRING_BYTES = 24  # sizeof(TF_TString) on 64-bit: a string tensor holds one per item
BFLOAT16 = 14
# TF_DataType -> numpy dtype for the numeric tensors a signature may take or return.
NUMPY_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 9: np.int64, 10: np.bool_,
                19: np.float16, BFLOAT16: np.uint16}  # bfloat16 travels as its raw 16 bits


class CcLoaderError(RuntimeError):
    """TensorFlow's C library is missing or unusable here, or it failed to run a signature."""


class _Buffer(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("length", ctypes.c_size_t),
                ("data_deallocator", ctypes.c_void_p)]


class _Output(ctypes.Structure):
    _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]


_p, _int, _size = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
_PROTOTYPES = {  # name: (restype, argtypes), as declared in tensorflow/c/c_api.h and friends
    "TF_NewStatus": (_p, []), "TF_DeleteStatus": (None, [_p]),
    "TF_GetCode": (_int, [_p]), "TF_Message": (ctypes.c_char_p, [_p]),
    "TF_NewGraph": (_p, []), "TF_DeleteGraph": (None, [_p]),
    "TF_NewSessionOptions": (_p, []), "TF_DeleteSessionOptions": (None, [_p]),
    "TF_NewBuffer": (ctypes.POINTER(_Buffer), []),
    "TF_DeleteBuffer": (None, [ctypes.POINTER(_Buffer)]),
    "TF_LoadSessionFromSavedModel": (_p, [_p, _p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p),
                                          _int, _p, ctypes.POINTER(_Buffer), _p]),
    "TF_CloseSession": (None, [_p, _p]), "TF_DeleteSession": (None, [_p, _p]),
    "TF_GraphOperationByName": (_p, [_p, ctypes.c_char_p]),
    "TF_SessionRun": (None, [_p, _p, ctypes.POINTER(_Output), ctypes.POINTER(_p), _int,
                             ctypes.POINTER(_Output), ctypes.POINTER(_p), _int, _p, _int, _p, _p]),
    "TF_AllocateTensor": (_p, [_int, ctypes.POINTER(ctypes.c_int64), _int, _size]),
    "TF_DeleteTensor": (None, [_p]), "TF_TensorType": (_int, [_p]),
    "TF_NumDims": (_int, [_p]), "TF_Dim": (ctypes.c_int64, [_p, _int]),
    "TF_TensorData": (_p, [_p]), "TF_TensorByteSize": (_size, [_p]),
    "TF_StringInit": (None, [_p]), "TF_StringCopy": (None, [_p, ctypes.c_char_p, _size]),
    "TF_StringGetDataPointer": (_p, [_p]), "TF_StringGetSize": (_size, [_p]),
    "TF_StringDealloc": (None, [_p]),
}


def find_library() -> Path:
    """`libtensorflow_cc.so.2` inside the installed tensorflow wheel, found without importing it."""
    spec = importlib.util.find_spec("tensorflow")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if (Path(folder) / "libtensorflow_cc.so.2").is_file():
            return Path(folder) / "libtensorflow_cc.so.2"
    raise CcLoaderError(f"libtensorflow_cc.so.2 not found in the tensorflow package ({folders})")


_lib = None


def _c_api():
    """The C library, loaded once. Plain CDLL (RTLD_LOCAL): see the module docstring."""
    global _lib
    if "tensorflow" in sys.modules:
        raise CcLoaderError("TensorFlow's Python package is imported in this process; the C API "
                            "must run in a process without it (python -m export.cc_loader)")
    if _lib is None:
        with dropping_noise():  # the library prints TensorFlow's start-up lines as it loads
            lib = ctypes.CDLL(str(find_library()))
        for name, (restype, argtypes) in _PROTOTYPES.items():
            getattr(lib, name).restype = restype
            getattr(lib, name).argtypes = argtypes
        _lib = lib
    return _lib


class _Status:
    """A TF_Status that turns an error code into an exception naming the export."""

    def __init__(self, lib, export_dir):
        self.lib, self.export_dir, self.handle = lib, export_dir, lib.TF_NewStatus()

    def check(self, doing: str, error: type = CcLoaderError):
        if self.lib.TF_GetCode(self.handle) != 0:  # TF_OK
            message = self.lib.TF_Message(self.handle).decode(errors="replace")
            raise error(f"{self.export_dir}: {doing} failed: {message}")

    def delete(self):
        self.lib.TF_DeleteStatus(self.handle)


def _parse_meta_graph(serialized: bytes):
    # TensorBoard ships byte-compatible copies of TF's protos that import no TensorFlow.
    from tensorboard.compat.proto import meta_graph_pb2
    return meta_graph_pb2.MetaGraphDef.FromString(serialized)


class CcSavedModel(LoadedModel):
    """A SavedModel loaded by the C++ loader (tag "serve"), its signatures run by tensor names."""

    def __init__(self, export_dir):
        self.export_dir = str(export_dir)
        self.lib = lib = _c_api()
        self.graph, self.session = lib.TF_NewGraph(), None
        options, meta_graph, status = (lib.TF_NewSessionOptions(), lib.TF_NewBuffer(),
                                       _Status(lib, self.export_dir))
        try:
            tags = (ctypes.c_char_p * 1)(SERVE_TAG)
            with dropping_noise():  # the first session probes for a GPU (see data/quiet.py)
                self.session = lib.TF_LoadSessionFromSavedModel(
                    options, None, self.export_dir.encode(), tags, 1, self.graph, meta_graph,
                    status.handle)
            status.check("loading the SavedModel", ModelLoadError)
            self.meta_graph = _parse_meta_graph(
                ctypes.string_at(meta_graph.contents.data, meta_graph.contents.length))
            self.signatures = dict(self.meta_graph.signature_def)
        except BaseException:
            self.close()
            raise
        finally:
            lib.TF_DeleteBuffer(meta_graph)
            lib.TF_DeleteSessionOptions(options)
            status.delete()

    def _output(self, tensor_name: str) -> _Output:
        op_name, _, index = tensor_name.partition(":")
        op = self.lib.TF_GraphOperationByName(self.graph, op_name.encode())
        if not op:
            raise CcLoaderError(f"{self.export_dir}: no operation {op_name!r} in the graph")
        return _Output(op, int(index or 0))

    def run(self, signature: str, inputs: dict) -> dict:
        sig = self.checked_signature(signature, inputs)
        in_names, out_names = sorted(sig.inputs), sorted(sig.outputs)
        feeds = (_Output * len(in_names))(*(self._output(sig.inputs[n].name) for n in in_names))
        fetches = (_Output * len(out_names))(*(self._output(sig.outputs[n].name)
                                                for n in out_names))
        in_tensors = (_p * len(in_names))()
        out_tensors = (_p * len(out_names))()
        status = _Status(self.lib, self.export_dir)
        try:
            for i, name in enumerate(in_names):
                in_tensors[i] = _to_tensor(self.lib, inputs[name], sig.inputs[name].dtype)
            self.lib.TF_SessionRun(self.session, None, feeds, in_tensors, len(in_names), fetches,
                                   out_tensors, len(out_names), None, 0, None, status.handle)
            status.check(f"running signature {signature!r}")
            return {name: _from_tensor(self.lib, out_tensors[i])
                    for i, name in enumerate(out_names)}
        finally:
            for tensor in in_tensors:
                _delete_input_tensor(self.lib, tensor)
            for tensor in out_tensors:
                if tensor:
                    self.lib.TF_DeleteTensor(tensor)
            status.delete()

    def close(self):
        lib = self.lib
        if self.session:
            status = _Status(lib, self.export_dir)
            lib.TF_CloseSession(self.session, status.handle)
            lib.TF_DeleteSession(self.session, status.handle)
            status.delete()
            self.session = None
        if self.graph:
            lib.TF_DeleteGraph(self.graph)
            self.graph = None


def _to_tensor(lib, value, dtype: int):
    """A new TF_Tensor holding value: a list of bytes for TF_STRING, else a numeric array."""
    if dtype == TF_STRING:
        items = [bytes(v) for v in np.asarray(value, dtype=object).reshape(-1)]
        dims = (ctypes.c_int64 * 1)(len(items))
        tensor = lib.TF_AllocateTensor(TF_STRING, dims, 1, TSTRING_BYTES * len(items))
        base = lib.TF_TensorData(tensor)
        for i, item in enumerate(items):
            lib.TF_StringInit(base + i * TSTRING_BYTES)
            lib.TF_StringCopy(base + i * TSTRING_BYTES, item, len(item))
        return tensor
    if dtype not in NUMPY_DTYPES or dtype == BFLOAT16:
        raise CcLoaderError(f"feeding TF_DataType {dtype} is not supported")
    array = np.ascontiguousarray(value, dtype=NUMPY_DTYPES[dtype])
    dims = (ctypes.c_int64 * array.ndim)(*array.shape)
    tensor = lib.TF_AllocateTensor(dtype, dims, array.ndim, array.nbytes)
    ctypes.memmove(lib.TF_TensorData(tensor), array.ctypes.data, array.nbytes)
    return tensor


def _delete_input_tensor(lib, tensor):
    if not tensor:
        return
    if lib.TF_TensorType(tensor) == TF_STRING:
        # TF_AllocateTensor's buffer is raw memory: the strings copied into it are freed here.
        base = lib.TF_TensorData(tensor)
        for i in range(lib.TF_TensorByteSize(tensor) // TSTRING_BYTES):
            lib.TF_StringDealloc(base + i * TSTRING_BYTES)
    lib.TF_DeleteTensor(tensor)


def _from_tensor(lib, tensor) -> np.ndarray:
    """A numpy copy of an output tensor (bytes objects for strings), shaped like it."""
    shape = tuple(lib.TF_Dim(tensor, d) for d in range(lib.TF_NumDims(tensor)))
    dtype, base = lib.TF_TensorType(tensor), lib.TF_TensorData(tensor)
    if dtype == TF_STRING:
        count = int(np.prod(shape, dtype=np.int64))
        items = [ctypes.string_at(lib.TF_StringGetDataPointer(base + i * TSTRING_BYTES),
                                  lib.TF_StringGetSize(base + i * TSTRING_BYTES))
                 for i in range(count)]
        return np.array(items, dtype=object).reshape(shape)
    if dtype not in NUMPY_DTYPES:
        raise CcLoaderError(f"reading TF_DataType {dtype} is not supported")
    raw = ctypes.string_at(base, lib.TF_TensorByteSize(tensor))
    array = np.frombuffer(raw, dtype=NUMPY_DTYPES[dtype]).reshape(shape).copy()
    if dtype == BFLOAT16:  # bfloat16 is the top half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _row(image: str, result) -> dict:
    """A CaptionResult as plain JSON-able values (CaptionResult.as_json: beam_search's alternatives
    as [{caption, score}], [] for greedy), attention maps as nested lists when served."""
    row = {"image": image, **result.as_json()}
    if result.attention is not None:
        row["attention"] = result.attention.tolist()
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", help="a version folder (holding saved_model.pb)")
    p.add_argument("--image", nargs="*", default=[], help="image files to caption")
    p.add_argument("--signature", nargs="+", default=[SERVING_DEFAULT], choices=IMAGE_SIGNATURES,
                   help="one or more image signatures")
    p.add_argument("--json", action="store_true",
                   help="print {signature: [{image, caption, log_prob, error, alternatives"
                        "[, attention]}, ...]}")
    args = p.parse_args(argv)
    try:
        images = [Path(f).read_bytes() for f in args.image]
        with CcSavedModel(args.model) as model:
            results = {s: [_row(name, r) for name, r in zip(args.image, model.caption(images, s))]
                       for s in args.signature}
    except (OSError, ModelLoadError, CcLoaderError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for signature, rows in results.items():
        print(f"[{signature}]")
        for row in rows:
            text = row["caption"] if not row["error"] else "ERROR: " + row["error"]
            print(f"{row['image']}\t{text}\t(log_prob {row['log_prob']:.2f})")
            for beam in row["alternatives"]:
                print(f"  {beam['score']:8.3f}  {beam['caption']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
