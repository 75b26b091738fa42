"""The one place where the daemon's errors become HTTP statuses and ``{"error", "code"}`` bodies."""

from __future__ import annotations

from starlette.responses import JSONResponse

from pyslicer.errors import (
    Conflict,
    Gone,
    InvalidArgument,
    NotFound,
    NotSupported,
    PermissionDenied,
    SlicerError,
    Timeout,
    Unauthenticated,
    Unavailable,
)

# Most specific first: a subclass maps where its base does unless listed before it.
STATUS_BY_ERROR: tuple[tuple[type[SlicerError], int], ...] = (
    (InvalidArgument, 400),
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (NotFound, 404),
    (Timeout, 408),
    (Conflict, 409),
    (Gone, 410),
    (NotSupported, 501),
    (Unavailable, 503),
)
INTERNAL_ERROR = {"error": "internal error; see the daemon log", "code": "internal_error"}


def status_of(error: SlicerError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return status
    return 500


def error_response(error: SlicerError) -> JSONResponse:
    return JSONResponse(error.to_json(), status_code=status_of(error))
