"""What the development server and the client share of TF Serving's API, so that both transports
look alike: errors by gRPC canonical code (REST sends an HTTP status and `{"error": "message"}`),
and status and metadata as REST prints them. No TensorFlow at import: clients stay light.
"""
# Canonical code -> HTTP status, as TF Serving's REST handler maps the codes clients meet.
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429,
               "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "FAILED_PRECONDITION": 400}


class ServingError(Exception):
    """A request the model server refused or could not serve: `code` ("NOT_FOUND", ...), the
    `http_status` it came (or would come) with, and the server's own `message`."""
    code = "UNKNOWN"

    def __init__(self, message: str, code: str | None = None, http_status: int | None = None):
        super().__init__(message)
        self.message, self.code = message, code or self.code
        self.http_status = http_status or HTTP_STATUS.get(self.code, 500)

    def __str__(self):
        return f"{self.code} ({self.http_status}): {self.message}"


class InvalidArgumentError(ServingError):
    """The request itself is wrong (bad JSON, unknown signature or input, bad base64, ...)."""
    code = "INVALID_ARGUMENT"


class NotFoundError(ServingError):
    """Unknown model or version."""
    code = "NOT_FOUND"


class UnavailableError(ServingError):
    """Server down or not ready yet: worth retrying later."""
    code = "UNAVAILABLE"


_BY_CODE = {cls.code: cls for cls in ServingError.__subclasses__()}
_BY_HTTP = {status: code for code, status in HTTP_STATUS.items()} | {400: "INVALID_ARGUMENT",
                                                                   413: "RESOURCE_EXHAUSTED"}


def error_for_code(code: str, message: str, http_status: int | None = None) -> ServingError:
    """The most specific ServingError for a canonical code name."""
    return _BY_CODE.get(code, ServingError)(message, code=code, http_status=http_status)


def error_for_http(http_status: int, message: str) -> ServingError:
    """The ServingError for an HTTP error status (400 -> InvalidArgumentError, ...)."""
    code = _BY_HTTP.get(http_status, "UNKNOWN" if http_status >= 500 else "FAILED_PRECONDITION")
    return error_for_code(code, message, http_status)


def proto_json(message) -> dict:
    """A proto as TF Serving's REST API prints it (so both transports answer alike)."""
    from google.protobuf import json_format
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def metadata_json(response) -> dict:
    """A GetModelMetadataResponse as REST prints it: the packed SignatureDefMap unpacked."""
    from tensorflow_serving.apis import get_model_metadata_pb2
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    return {"model_spec": proto_json(response.model_spec),
            "metadata": {"signature_def": proto_json(signatures)}}
