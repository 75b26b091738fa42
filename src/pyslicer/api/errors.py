"""The one place where errors become HTTP: the daemon's errors by class, validation errors naming the
field, Starlette's own (404, 405), a client that left, and anything unexpected."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from pyslicer.api.schemas import ErrorBody
from pyslicer.errors import (
    Conflict,
    Gone,
    InsufficientStorage,
    InvalidArgument,
    NotFound,
    NotSupported,
    PermissionDenied,
    SlicerError,
    StorageError,
    Timeout,
    Unauthenticated,
    Unavailable,
    UpstreamUnreachable,
)

log = logging.getLogger(__name__)

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
    (UpstreamUnreachable, 502),
    (Unavailable, 503),
    (InsufficientStorage, 413),  # not 507: an answer in 5xx says the daemon failed, and it did not
    (StorageError, 500),
)
INTERNAL_ERROR = {"error": "internal error; see the daemon log", "code": "internal_error"}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "invalid request; the message names the field"),
        (401, "missing or invalid bearer token"),
        (404, "no such host group or VM"),
        (409, "the VM is not in a state that allows this"),
        (503, "the VM's agent is not reachable"),
    )
}


def status_of(error: SlicerError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return status
    return 500


def error_response(error: SlicerError) -> JSONResponse:
    return JSONResponse(error.to_json(), status_code=status_of(error))


def describe_validation(errors: Sequence[Any]) -> InvalidArgument:
    """FastAPI's validation errors as one 400 naming each field (``cmd: ...; uid: ...``)."""
    problems: list[str] = []
    code = "invalid_body"
    for index, error in enumerate(errors):
        loc = [str(part) for part in error.get("loc", ())]
        where, fields = (loc[0], loc[1:]) if loc and loc[0] in ("query", "path", "body", "header") else ("", loc)
        if error.get("type") == "json_invalid":
            message = f"request body is not valid JSON: {error.get('ctx', {}).get('error', 'invalid')}"
            fields = []
        else:
            message = str(error.get("msg", "invalid"))
            if error.get("type") == "missing":
                message = "a value is required"
        name = ".".join(fields)
        problems.append(f"{name}: {message}" if name else message)
        if index == 0 and where in ("query", "path", "header") and fields:
            code = f"invalid_{fields[0]}"
    return InvalidArgument("; ".join(problems), code=code)


async def slicer_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SlicerError)
    return error_response(exc)


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(describe_validation(exc.errors()))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 400: "invalid_body"}.get(exc.status_code, "http_error")
    return JSONResponse({"error": str(exc.detail), "code": code}, status_code=exc.status_code, headers=exc.headers)


async def client_gone(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "the client disconnected", "code": "client_disconnected"}, status_code=400)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after this answer; RequestMetrics logs it once and keeps the connection usable.
    return JSONResponse(INTERNAL_ERROR, status_code=500)


HANDLERS: dict[Any, Any] = {
    SlicerError: slicer_error,
    RequestValidationError: validation_error,
    HTTPException: http_error,
    ClientDisconnect: client_gone,
    Exception: unexpected_error,
}
