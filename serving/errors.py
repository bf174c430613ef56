"""Errors shared by the local server and the client, named by gRPC's canonical status codes.

TF Serving reports every failure as a canonical code (INVALID_ARGUMENT, NOT_FOUND, ...): gRPC sends
the code itself, REST maps it to an HTTP status and a body `{"error": "message"}`. Both front ends of
serving.model_server and both transports of serving.client use this one table, so a bad request
looks the same whichever way it travelled. No TensorFlow here: clients stay light.
"""

# Canonical code -> HTTP status, as TF Serving's REST handler maps them (ToHTTPStatusCode).
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


class ServingError(Exception):
    """A request the model server refused or could not serve.

    code: canonical status name ("NOT_FOUND", ...); http_status: the HTTP status it came with
    (or would come with); message: the server's own words.
    """
    code = "UNKNOWN"

    def __init__(self, message: str, code: str | None = None, http_status: int | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.http_status = http_status or HTTP_STATUS.get(self.code, 500)

    def __str__(self):
        return f"{self.code} ({self.http_status}): {self.message}"


class InvalidArgumentError(ServingError):
    """The request itself is wrong (bad JSON, unknown signature or input, bad base64, ...)."""
    code = "INVALID_ARGUMENT"


class NotFoundError(ServingError):
    """Unknown model, version or label."""
    code = "NOT_FOUND"


class UnavailableError(ServingError):
    """Server down, not ready yet, or its batch queue is full: worth retrying later."""
    code = "UNAVAILABLE"


class DeadlineExceededError(ServingError):
    code = "DEADLINE_EXCEEDED"


class ResourceExhaustedError(ServingError):
    """Request over the size cap."""
    code = "RESOURCE_EXHAUSTED"


_BY_CODE = {cls.code: cls for cls in (InvalidArgumentError, NotFoundError, UnavailableError,
                                      DeadlineExceededError, ResourceExhaustedError)}


def error_for_code(code: str, message: str, http_status: int | None = None) -> ServingError:
    """The most specific ServingError for a canonical code name."""
    cls = _BY_CODE.get(code, ServingError)
    return cls(message, code=code, http_status=http_status)


def error_for_http(http_status: int, message: str) -> ServingError:
    """The ServingError for an HTTP error status (400 -> InvalidArgumentError, ...)."""
    by_status = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 503: "UNAVAILABLE",
                 504: "DEADLINE_EXCEEDED", 413: "RESOURCE_EXHAUSTED", 429: "RESOURCE_EXHAUSTED"}
    code = by_status.get(http_status, "UNKNOWN" if http_status >= 500 else "FAILED_PRECONDITION")
    return error_for_code(code, message, http_status)
