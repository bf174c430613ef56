"""TF Serving's REST API (port 8501) on FastAPI.

    GET  /v1/models/NAME[/versions/N|/labels/L]            model status
    GET  /v1/models/NAME[/versions/N|/labels/L]/metadata   signature defs
    POST /v1/models/NAME[/versions/N|/labels/L]:predict    row ("instances") or columnar ("inputs")

Errors are `{"error": "message"}` with TF Serving's HTTP statuses (400 invalid argument, 404 not
found, 413 over the size cap, 503 unavailable, 504 timeout). Predict bodies are read on the event loop with a
size cap; JSON decoding and the model run in the thread pool, so requests run concurrently.
"""
import json
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import api_protos, rest_json
from serving.errors import InvalidArgumentError, ResourceExhaustedError, ServingError
from serving.predictor import Predictor

def json_response(payload, status: int = 200) -> Response:
    # json.dumps (not FastAPI's JSONResponse) so NaN/Infinity print as TF Serving prints them.
    return Response(json.dumps(payload), status_code=status, media_type="application/json")


def error_response(error: ServingError) -> Response:
    return json_response({"error": error.message}, error.http_status)


def _version_number(text: str | None, request: Request) -> int | None:
    if text is None:
        return None
    if not text.isdigit():
        raise InvalidArgumentError(f"Malformed request: {request.method} {request.url.path}")
    return int(text)


def create_app(predictor: Predictor, max_request_bytes: int, timeout_seconds: float,
               metrics=None) -> FastAPI:
    """The REST app; `metrics` (serving.metrics.Metrics) adds the Prometheus path when given."""
    app = FastAPI(title="TF Serving REST API (local development server)",
                  docs_url=None, redoc_url=None, openapi_url=None)
    registry = predictor.registry

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, error: ServingError):
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        message = (f"Malformed request: {request.method} {request.url.path}"
                   if error.status_code in (404, 405) else str(error.detail))
        return json_response({"error": message}, error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        return json_response({"error": f"Malformed request: {request.method} {request.url.path}"}, 400)

    # --- status and metadata -------------------------------------------------------------------
    def status(request, name, version=None, label=None):
        response = api_protos.model_status(registry, name, _version_number(version, request), label)
        return json_response(api_protos.to_json_dict(response))

    def metadata(request, name, version=None, label=None):
        with predictor.version(name, _version_number(version, request), label) as loaded:
            return json_response(api_protos.metadata_json(api_protos.model_metadata(loaded)))

    @app.get("/v1/models/{name}")
    def get_status(request: Request, name: str):
        return status(request, name)

    @app.get("/v1/models/{name}/versions/{version}")
    def get_version_status(request: Request, name: str, version: str):
        return status(request, name, version=version)

    @app.get("/v1/models/{name}/labels/{label}")
    def get_label_status(request: Request, name: str, label: str):
        return status(request, name, label=label)

    @app.get("/v1/models/{name}/metadata")
    def get_metadata(request: Request, name: str):
        return metadata(request, name)

    @app.get("/v1/models/{name}/versions/{version}/metadata")
    def get_version_metadata(request: Request, name: str, version: str):
        return metadata(request, name, version=version)

    @app.get("/v1/models/{name}/labels/{label}/metadata")
    def get_label_metadata(request: Request, name: str, label: str):
        return metadata(request, name, label=label)

    # --- predict -------------------------------------------------------------------------------
    async def predict(request: Request, name: str, version: str | None = None, label: str | None = None):
        started = time.monotonic()
        try:
            body = await _read_capped_body(request, max_request_bytes)
            number = _version_number(version, request)
            result = await run_in_threadpool(_predict_sync, predictor, body, name, number, label,
                                             timeout_seconds)
            response = json_response(result)
        except ServingError as error:
            response = error_response(error)
        if metrics is not None:
            metrics.observe_request(name, "predict", response.status_code, time.monotonic() - started)
        return response

    @app.post("/v1/models/{name}:predict")
    async def post_predict(request: Request, name: str):
        return await predict(request, name)

    @app.post("/v1/models/{name}/versions/{version}:predict")
    async def post_version_predict(request: Request, name: str, version: str):
        return await predict(request, name, version=version)

    @app.post("/v1/models/{name}/labels/{label}:predict")
    async def post_label_predict(request: Request, name: str, label: str):
        return await predict(request, name, label=label)

    if metrics is not None:
        @app.get(metrics.path)
        def prometheus():
            return Response(metrics.render(registry), media_type="text/plain; version=0.0.4")
    return app


def _predict_sync(predictor: Predictor, body: bytes, name, version, label, timeout_seconds):
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidArgumentError(f"JSON Parse error: {e}") from None
    with predictor.version(name, version, label) as loaded:
        signature_name = payload.get("signature_name", "") if isinstance(payload, dict) else ""
        if not isinstance(signature_name, str):
            raise InvalidArgumentError("'signature_name' must be a string")
        signature = loaded.signature(signature_name)
        inputs, row_format = rest_json.parse_predict_body(payload, signature)
        outputs = predictor.predict(loaded, signature, inputs, timeout=timeout_seconds)
        return rest_json.format_predict_response(outputs, row_format)


async def _read_capped_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes. The rest of an oversized body is
    still read (and dropped) so the client gets the error instead of a reset connection."""
    declared = request.headers.get("content-length", "")
    too_big = declared.isdigit() and int(declared) > limit
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            too_big = True
        if not too_big:
            chunks.append(chunk)
    if too_big:
        raise ResourceExhaustedError(f"Request body of {max(total, int(declared or 0))} bytes is over "
                                     f"the {limit}-byte limit of this server", http_status=413)
    return b"".join(chunks)
