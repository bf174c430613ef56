"""A DEVELOPMENT server: TF Serving's REST and gRPC API for one exported model, in Python, for
machines without Docker (development, the notebook, the Gradio page, tests). Production runs the
tensorflow/serving:2.21.0 container. It takes tensorflow_model_server's flags for what it does
(including --mixed_precision=bfloat16) and refuses the others:

    python -m serving.model_server --port=8500 --rest_api_port=8501 \\
        --model_name=captioner --model_base_path=models/captioner

How it handles versions, limits and errors: docs/serving.md#development-server-no-docker.
"""
import argparse
import base64
import binascii
import concurrent.futures
import dataclasses
import http.server
import json
import logging
import os
import re
import signal
import threading
from pathlib import Path

if __name__ == "__main__":  # a command: TensorFlow's start-up noise is hidden before anything loads it
    from data.quiet import quiet_command
    quiet_command()

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2
from tensorflow_serving.apis import model_service_pb2_grpc as model_grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc as predict_grpc
from tensorflow_serving.config import model_server_config_pb2

from export.artifact import SERVER_MIXED_PRECISIONS, SessionModel, list_versions, session_config
from export.contract import SERVING_DEFAULT
from serving.protocol import InvalidArgumentError, NotFoundError, ServingError, metadata_json, proto_json

log = logging.getLogger("serving.model_server")
HOST = "127.0.0.1"
MAX_REQUEST_BYTES = 16 << 20  # REST body or gRPC message; serving.client sends at most 8 MB
CONTAINER = ('docker run -p 127.0.0.1:8500:8500 -p 127.0.0.1:8501:8501 -v "$PWD/models/captioner:'
             '/models/captioner:ro" -v "$PWD/serving:/config:ro" tensorflow/serving:2.21.0 '
             '--model_config_file=/config/models.config')


@dataclasses.dataclass
class ServerSettings:
    port: int = 8500                  # gRPC
    rest_api_port: int = 8501         # 0: no REST
    model_name: str = ""
    model_base_path: str = ""
    model_config_file: str = ""       # a ModelServerConfig with one model, instead of the two above
    file_system_poll_wait_seconds: float = 1.0  # 0: load once, never poll
    mixed_precision: str = ""         # "bfloat16": grappler's oneDNN bf16 rewrite (AMX/AVX512-BF16 CPUs)


def parse_args(argv=None) -> ServerSettings:
    parser = argparse.ArgumentParser(prog="python -m serving.model_server", allow_abbrev=False,
                                     description="DEVELOPMENT server with TF Serving's REST and gRPC "
                                     f"API for one model. Production runs the container: {CONTAINER}")
    for field in dataclasses.fields(ServerSettings):
        parser.add_argument(f"--{field.name}", type=type(field.default), default=field.default,
                            help=f"as tensorflow_model_server's (default {field.default!r})")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"{unknown[0]} is a TF Serving feature this development server does not have; "
                     f"run the real server: {CONTAINER} {unknown[0]}")
    if not args.model_config_file and not (args.model_name and args.model_base_path):
        parser.error("give --model_name and --model_base_path, or --model_config_file")
    if args.mixed_precision not in SERVER_MIXED_PRECISIONS:
        parser.error(f"--mixed_precision must be one of {SERVER_MIXED_PRECISIONS}, got {args.mixed_precision!r}")
    return ServerSettings(**vars(args))


def model_source(settings: ServerSettings) -> tuple[str, str]:
    """(model name, base path), from the flags or from the config file's only model."""
    if not settings.model_config_file:
        return settings.model_name, os.path.abspath(settings.model_base_path)
    text = Path(settings.model_config_file).read_text()
    models = text_format.Parse(text, model_server_config_pb2.ModelServerConfig()).model_config_list.config
    if len(models) != 1:
        raise ValueError(f"{settings.model_config_file} lists {len(models)} models; this development "
                         "server serves one (several are a TF Serving feature)")
    if models[0].HasField("model_version_policy") or models[0].version_labels:
        log.warning("version policy and labels are TF Serving features, ignored here")
    return models[0].name, models[0].base_path


class Versions:
    """The model's loaded versions. Readers take no lock: `current` is swapped in one assignment."""

    def __init__(self, name: str, base_path: str, mixed_precision: str = ""):
        self.name, self.base_path = name, base_path
        self.session_config = session_config(mixed_precision)
        self.current: tuple[int, SessionModel] | None = None  # the newest loaded version
        self.loaded: dict[int, SessionModel] = {}
        self.pinned: set[int] = set()  # versions asked for by number
        self.failed: dict[int, str] = {}  # version -> why it did not load
        self._loading = threading.Lock()  # one load at a time: no version is loaded twice

    def _load(self, version: int, path) -> SessionModel | None:
        if version in self.loaded or version in self.failed:
            return self.loaded.get(version)
        log.info("loading %s version %d from %s", self.name, version, path)
        try:
            model = SessionModel(path, self.session_config)
            records = model.warm_up()
        except Exception as error:  # a broken version must not take the server down
            log.error("failed to load %s version %d: %s", self.name, version, error)
            self.failed[version] = f"{type(error).__name__}: {error}"
            return None
        log.info("ran %d warmup records; %s version %d is AVAILABLE", records, self.name, version)
        self.loaded[version] = model
        return model

    def refresh(self) -> None:
        """One poll: serve the newest version that loads (tried newest first; None if none does);
        drop versions neither served, pinned nor on disk. Dropped, not closed: a request still running
        holds its own reference to the session, which is freed when the last such request returns."""
        with self._loading:
            on_disk = list_versions(self.base_path)
            newest_first = ((v, self._load(v, on_disk[v])) for v in sorted(on_disk, reverse=True))
            self.current = next(((v, model) for v, model in newest_first if model is not None), None)
            keep = self.pinned | {self.current and self.current[0]}  # pinned + the served one
            for version in [v for v in self.loaded if v not in on_disk or v not in keep]:
                del self.loaded[version]

    def get(self, name: str, version: int | None = None) -> tuple[int, SessionModel]:
        current = self.current  # read once: a swap meanwhile cannot mix two versions
        if name == self.name and version is None and current:
            return current
        model = self.loaded.get(version) if name == self.name else None
        path = list_versions(self.base_path).get(version) if name == self.name and not model else None
        if path is not None:
            with self._loading:
                model = self._load(version, path)
        if model is None:
            wanted = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise NotFoundError(f"Servable not found for request: {wanted}")
        self.pinned.add(version)
        return version, model

    def status(self, name: str, version: int | None = None):
        if version is not None:
            self.get(name, version)  # loads a pinned version, or raises NOT_FOUND
        rows = {**{number: "" for number in self.loaded}, **self.failed} if name == self.name else {}
        rows = sorted((n, error) for n, error in rows.items() if version in (None, n))
        if not rows:
            raise NotFoundError(f"Could not find any versions of model {name}")
        return get_model_status_pb2.GetModelStatusResponse(model_version_status=[  # error_code 2: UNKNOWN
            {"version": n, "state": "END" if error else "AVAILABLE",
             "status": {"error_code": 2 if error else 0, "error_message": error}} for n, error in rows[::-1]])

    def metadata(self, name: str, version: int | None = None):
        number, model = self.get(name, version)
        response = get_model_metadata_pb2.GetModelMetadataResponse(
            model_spec={"name": name, "version": {"value": number}})
        response.metadata["signature_def"].Pack(
            get_model_metadata_pb2.SignatureDefMap(signature_def=model.signatures))
        return response


def checked(call, *args):
    """call(*args), the model's complaints about the request turned into INVALID_ARGUMENT."""
    try:
        return call(*args)
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as error:
        raise InvalidArgumentError(getattr(error, "message", str(error))) from None


# --- REST: TF Serving's JSON (api_rest.md) ------------------------------------------------------
ROUTE = re.compile(r"/v1/models/(?P<name>[^/:]+)(?:/(?P<kind>versions|labels)/(?P<ref>[^/:]+))?"
                   r"(?P<action>/metadata|:predict)?")


def is_b64(value) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def to_array(value, name: str, sig) -> np.ndarray:
    """A JSON value as the input tensor `name` wants: strings (or {"b64": ...}) as bytes."""
    def strings(item):
        if isinstance(item, list):
            return [strings(i) for i in item]
        if isinstance(item, str) or is_b64(item):
            return item.encode() if isinstance(item, str) else base64.b64decode(item["b64"], validate=True)
        raise ValueError(f"expects strings or {{\"b64\": ...}} objects, got {str(item)[:80]}")
    info = sig.inputs.get(name)
    try:
        if info is None or info.dtype == tf.string.as_datatype_enum:
            return np.array(strings(value) if info else value, dtype=object)
        return np.array(value, dtype=tf.dtypes.as_dtype(info.dtype).as_numpy_dtype)
    except (binascii.Error, TypeError, ValueError) as error:
        raise InvalidArgumentError(f"Input '{name}' is not a valid tensor: {error}") from None


def rest_inputs(request: dict, sig) -> tuple[dict, bool]:
    """(inputs by name, row format?) from {"instances": [...]} or {"inputs": ...}."""
    if ("instances" in request) == ("inputs" in request):
        raise InvalidArgumentError("Give exactly one of 'instances' (rows) or 'inputs' (columns)")
    rows = "instances" in request
    data = request["instances" if rows else "inputs"]
    if rows and isinstance(data, list) and data and all(isinstance(row, dict) and not is_b64(row) for row in data):
        data = {name: [row.get(name) for row in data] for name in data[0]}
    elif not isinstance(data, dict) or is_b64(data):
        if len(sig.inputs) != 1:
            raise InvalidArgumentError(f"Name the inputs {sorted(sig.inputs)} of this signature")
        data = {next(iter(sig.inputs)): data}
    return {name: to_array(value, name, sig) for name, value in data.items()}, rows


def to_json(value: np.ndarray, name: str):
    """Strings as text, or {"b64": ...} for outputs named *_bytes, as TF Serving prints them."""
    if value.dtype != object:
        return value.tolist()
    return np.vectorize(lambda s: {"b64": base64.b64encode(s).decode()} if name.endswith("_bytes")
                        else s.decode("utf-8", "replace"), otypes=[object])(value).tolist()


def rest_predict(versions: Versions, name: str, version: int | None, body: bytes) -> dict:
    try:
        request = json.loads(body)
    except ValueError as error:
        raise InvalidArgumentError(f"JSON Parse error: {error}") from None
    if not isinstance(request, dict):
        raise InvalidArgumentError("JSON Value: the request body must be a JSON object")
    signature = request.get("signature_name") or SERVING_DEFAULT
    _, model = versions.get(name, version)
    inputs, rows = rest_inputs(request, checked(model.signature, signature))
    outputs = checked(model.run, signature, inputs)
    columns = {key: to_json(outputs[key], key) for key in sorted(outputs)}
    if len(columns) == 1:  # a lone output loses its name
        return {"predictions" if rows else "outputs": next(iter(columns.values()))}
    return ({"predictions": [dict(zip(columns, row)) for row in zip(*columns.values())]} if rows
            else {"outputs": columns})


class RestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, which clients' sessions rely on
    disable_nagle_algorithm = True  # headers and body go in two writes: Nagle would delay the body
    log_message = lambda self, *args: None  # noqa: E731  (a line per request is noise here)

    def do_GET(self) -> None:  # and do_POST
        method = self.command
        try:
            status, payload = 200, self.route(method, self.body())
        except ServingError as error:
            status, payload = error.http_status, {"error": error.message}
        except Exception as error:  # a bug here must still answer, in TF Serving's shape
            log.exception("REST %s %s", method, self.path)
            status, payload = 500, {"error": f"{type(error).__name__}: {error}"}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_GET

    def body(self) -> bytes:
        size = declared = int(self.headers.get("Content-Length") or 0)
        if size <= MAX_REQUEST_BYTES:
            return self.rfile.read(size)
        while size > 0:  # read and drop it, so the client gets the error, not a reset connection
            chunk = self.rfile.read(min(size, 1 << 20))
            size = size - len(chunk) if chunk else 0
        raise ServingError(f"Request body of {declared} bytes is over this server's limit of "
                           f"{MAX_REQUEST_BYTES}", code="RESOURCE_EXHAUSTED", http_status=413)

    def route(self, method: str, body: bytes) -> dict:
        match = ROUTE.fullmatch(self.path.split("?")[0])
        if not match or (method == "POST") != (match["action"] == ":predict") or (
                match["kind"] == "versions" and not match["ref"].isdigit()):
            raise InvalidArgumentError(f"Malformed request: {method} {self.path}")
        if match["kind"] == "labels":
            raise NotFoundError(f"Unrecognized servable version label: {match['ref']} (labels are "
                                "a TF Serving feature; this development server has none)")
        name, version, versions = match["name"], match["ref"] and int(match["ref"]), self.server.versions
        if match["action"] == ":predict":
            return rest_predict(versions, name, version, body)
        if match["action"] == "/metadata":
            return metadata_json(versions.metadata(name, version))
        return proto_json(versions.status(name, version))


# --- gRPC: tensorflow-serving-api's PredictionService and ModelService ---------------------------
def grpc_errors(method):
    def answer(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as error:
            context.abort(getattr(grpc.StatusCode, error.code, grpc.StatusCode.UNKNOWN), error.message)
    return answer


def model_spec(spec) -> tuple[str, int | None]:
    if spec.version_label:
        raise NotFoundError(f"Unrecognized servable version label: {spec.version_label}")
    return spec.name, spec.version.value if spec.HasField("version") else None


class GrpcApi(predict_grpc.PredictionServiceServicer, model_grpc.ModelServiceServicer):
    def __init__(self, versions: Versions):
        self.versions = versions

    @grpc_errors
    def Predict(self, request, context):
        inputs = checked(lambda: {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
        signature = request.model_spec.signature_name or SERVING_DEFAULT
        number, model = self.versions.get(*model_spec(request.model_spec))
        outputs = checked(model.run, signature, inputs)
        spec = {"name": request.model_spec.name, "version": {"value": number}, "signature_name": signature}
        return predict_pb2.PredictResponse(
            model_spec=spec, outputs={name: tf.make_tensor_proto(value) for name, value in outputs.items()})

    @grpc_errors
    def GetModelMetadata(self, request, context):  # the signature_def field, whatever was asked
        return self.versions.metadata(*model_spec(request.model_spec))

    @grpc_errors
    def GetModelStatus(self, request, context):
        return self.versions.status(*model_spec(request.model_spec))


# --- the server ---------------------------------------------------------------------------------
def serve(settings: ServerSettings):
    """Loads the newest version, then opens the ports (as TF Serving does), polls; returns stop()."""
    versions, stopping = Versions(*model_source(settings), settings.mixed_precision), threading.Event()
    versions.refresh()
    grpc_server = grpc.server(concurrent.futures.ThreadPoolExecutor(16), options=[
        ("grpc.max_receive_message_length", MAX_REQUEST_BYTES), ("grpc.so_reuseport", 0)])
    predict_grpc.add_PredictionServiceServicer_to_server(GrpcApi(versions), grpc_server)
    model_grpc.add_ModelServiceServicer_to_server(GrpcApi(versions), grpc_server)
    grpc_server.add_insecure_port(f"{HOST}:{settings.port}")  # raises RuntimeError if taken
    grpc_server.start()
    log.info("Running gRPC ModelServer at %s:%d (development server) ...", HOST, settings.port)
    port = settings.rest_api_port
    rest = http.server.ThreadingHTTPServer((HOST, port), RestHandler) if port else None
    if rest:
        rest.versions = versions
        threading.Thread(target=rest.serve_forever, daemon=True).start()
        log.info("Exporting HTTP/REST API at %s:%d (development server) ...", HOST, port)

    def poll():
        while not stopping.wait(settings.file_system_poll_wait_seconds):
            try:
                versions.refresh()
            except Exception:  # e.g. the base folder briefly gone: try again at the next poll
                log.exception("version poll failed")
    if settings.file_system_poll_wait_seconds > 0:
        threading.Thread(target=poll, daemon=True).start()

    def stop():
        stopping.set()
        if rest:
            rest.shutdown()
            rest.server_close()
        grpc_server.stop(grace=2).wait()
    return stop


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tf.get_logger().handlers.clear()  # its own handler printed each TensorFlow line a second time
    tf.get_logger().setLevel(logging.WARNING)  # its INFO lines ("Restoring parameters") are noise here
    settings = parse_args(argv)
    stopping = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):  # Python runs handlers in the main thread
        signal.signal(number, lambda *_: stopping.set())
    try:
        stop = serve(settings)
    except (OSError, RuntimeError, ValueError, text_format.ParseError) as error:
        log.error("%s", error)
        return 1
    while not stopping.wait(0.5):  # woken between waits by a signal handler
        pass
    stop()
    return 0


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    os._exit(code)  # skip tearing down TensorFlow's and gRPC's native state (slow, nothing to save)
