"""Errors shared by the development server and the client, named by gRPC's canonical status codes.

TF Serving reports every failure as a canonical code: gRPC sends the code itself, REST an HTTP status
and a body `{"error": "message"}`. One table here, so a bad request looks the same whichever way it
travelled. No TensorFlow here: clients stay light.
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


def error_for_code(code: str, message: str, http_status: int | None = None) -> ServingError:
    """The most specific ServingError for a canonical code name."""
    return _BY_CODE.get(code, ServingError)(message, code=code, http_status=http_status)


def error_for_http(http_status: int, message: str) -> ServingError:
    """The ServingError for an HTTP error status (400 -> InvalidArgumentError, ...)."""
    codes = {status: code for code, status in HTTP_STATUS.items()} | {400: "INVALID_ARGUMENT",
                                                                      413: "RESOURCE_EXHAUSTED"}
    code = codes.get(http_status, "UNKNOWN" if http_status >= 500 else "FAILED_PRECONDITION")
    return error_for_code(code, message, http_status)
