"""From an HTTP answer to a result or an error: the parsers the ``Call``s name, and the error mapping.

The resource parsers name their model class and import ``.models`` (and with it pydantic) on the first answer
that needs one, so a client that only runs commands never loads pydantic. httpx is not imported here either:
``_socket_exec`` maps its answers and failures with the same functions, and no httpx.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ._exec_output import ExecResult, exec_result
from .errors import SlicerAPIError, SlicerConnectionError, SlicerResponseError

if TYPE_CHECKING:
    import httpx
    from pydantic import BaseModel, TypeAdapter

    from ._config import Endpoint

T = TypeVar("T")
Parser = Callable[["httpx.Response"], T]

ResourceName = Literal[
    "AgentHealth",
    "BackgroundExec",
    "BackgroundExecInfo",
    "BackgroundExit",
    "BackgroundKill",
    "Commit",
    "CommitDeleted",
    "CommitInfo",
    "CreatedNode",
    "DeleteResult",
    "ForkResult",
    "FsEntry",
    "HostGroup",
    "LifecycleResult",
    "LogsResult",
    "Node",
    "NodeStats",
    "Secret",
    "ServerInfo",
    "NodeDescription",
    "VMTags",
]
"""The classes of ``.models`` a response can be parsed into."""

STATUS_CODES = {
    400: "invalid_argument",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    408: "timeout",
    409: "conflict",
    410: "gone",
    500: "internal_error",
    501: "not_supported",
    503: "unavailable",
}
"""The daemon's error codes for each status, for answers that carry none."""

FATAL_READY_STATUSES = frozenset({401, 403, 404})
"""Statuses that mean "this VM will never become ready by waiting"; anything else is worth polling through."""

_MAX_ERROR_TEXT = 500


# -- errors ----------------------------------------------------------------------------------------


def api_error(response: httpx.Response) -> SlicerAPIError:
    """The error for a non-2xx response whose body has been read."""
    request = response.request
    return error_answer(
        response.status_code, response.reason_phrase, response.content, request.method, str(request.url)
    )


def error_answer(status: int, reason: str, content: bytes, method: str, url: str) -> SlicerAPIError:
    """The error for a non-2xx answer: the server's ``error`` and ``code``, else the body's text, else the status."""
    message = ""
    code: str | None = None
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]:
        message = body["error"]
        if isinstance(body.get("code"), str) and body["code"]:
            code = body["code"]
    else:
        message = content.decode("utf-8", "replace").strip()
        if len(message) > _MAX_ERROR_TEXT:
            message = message[:_MAX_ERROR_TEXT] + "..."
    if not message:
        message = f"HTTP {status} {reason or _phrase(status)}".strip()
    return SlicerAPIError(
        message, status=status, code=code or STATUS_CODES.get(status, "http_error"), method=method, url=url
    )


def _phrase(status: int) -> str:
    from http import HTTPStatus  # only for errors: its enum costs a millisecond at start-up

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def unreachable(endpoint: Endpoint, reason: str) -> SlicerConnectionError:
    return SlicerConnectionError(f"cannot reach slicer at {endpoint.url}: {reason}")


def no_answer(endpoint: Endpoint, what: str) -> SlicerConnectionError:
    return SlicerConnectionError(f"slicer at {endpoint.url} did not answer in time ({what})")


def broken_connection(endpoint: Endpoint, reason: str) -> SlicerConnectionError:
    return SlicerConnectionError(f"connection to slicer at {endpoint.url} failed: {reason}")


def connection_error(endpoint: Endpoint, exc: httpx.TransportError) -> SlicerConnectionError:
    import httpx  # loaded already: exc is one of its errors

    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        return unreachable(endpoint, "connection timed out")
    if isinstance(exc, (httpx.ConnectError, httpx.UnsupportedProtocol)):
        return unreachable(endpoint, reason)
    if isinstance(exc, httpx.TimeoutException):
        return no_answer(endpoint, type(exc).__name__)
    return broken_connection(endpoint, reason)


# -- parsers ---------------------------------------------------------------------------------------


def describe(response: httpx.Response) -> str:
    return f"{response.request.method} {response.request.url.path}"


def json_body(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content) if response.content else None
    except ValueError as exc:
        raise SlicerResponseError(f"{describe(response)} answered with invalid JSON: {exc}") from exc


def resource(name: ResourceName) -> Parser[Any]:
    """A parser into the model class ``name``."""

    def parse(response: httpx.Response) -> Any:
        from pydantic import ValidationError

        body = json_body(response)
        try:
            return _model_class(name).model_validate(body)
        except ValidationError as exc:
            raise SlicerResponseError(f"unexpected answer to {describe(response)}: {exc}") from exc

    return parse


def lifecycle_result(response: httpx.Response) -> Any:
    """A JSON answer as a ``LifecycleResult``; Slicer's plain-text one as an empty one."""
    if not response.headers.get("content-type", "").startswith("application/json"):
        return _model_class("LifecycleResult")()
    return resource("LifecycleResult")(response)


def resource_list(name: ResourceName) -> Parser[list[Any]]:
    """A parser into a list of ``name``; ``null`` (a Go nil slice) is an empty list."""

    def parse(response: httpx.Response) -> list[Any]:
        from pydantic import ValidationError

        body = json_body(response)
        try:
            items: list[Any] = _list_adapter(name).validate_python([] if body is None else body)
        except ValidationError as exc:
            raise SlicerResponseError(f"unexpected answer to {describe(response)}: {exc}") from exc
        return items

    return parse


def only_item(name: ResourceName) -> Parser[Any]:
    """A parser of a list that must hold exactly one ``name`` (``GET /node/{hostname}/stats``)."""
    parse_list = resource_list(name)

    def parse(response: httpx.Response) -> Any:
        items = parse_list(response)
        if len(items) != 1:
            raise SlicerResponseError(f"{describe(response)} answered {len(items)} entries, not one")
        return items[0]

    return parse


def _model_class(name: ResourceName) -> type[BaseModel]:
    from . import models

    cls: type[BaseModel] = getattr(models, name)
    return cls


@functools.cache
def _list_adapter(name: ResourceName) -> TypeAdapter[list[Any]]:
    from pydantic import TypeAdapter

    return TypeAdapter(list[_model_class(name)])  # type: ignore[arg-type,misc]


def text(response: httpx.Response) -> str:
    return response.text


def healthz(response: httpx.Response) -> str:
    # The spec says text "OK", the reference page JSON {"status": "ok"}: accept both.
    try:
        body = json.loads(response.content)
    except ValueError:
        return response.text.strip().lower() or "ok"
    if isinstance(body, dict) and isinstance(body.get("status"), str):
        return str(body["status"])
    return "ok"


def ready(response: httpx.Response) -> bool:
    """``HEAD /vm/{h}/health``: 2xx is ready, a status waiting can't fix raises, anything else is not ready."""
    if response.is_success:
        return True
    if response.status_code in FATAL_READY_STATUSES:
        raise api_error(response)
    return False


def buffered_exec(response: httpx.Response) -> ExecResult:
    return exec_result(json_body(response), describe(response))


def secret(response: httpx.Response) -> Any:
    """A created or updated secret's metadata; None from a server that answers with no body (Slicer's)."""
    if not response.content.strip():
        return None
    return resource("Secret")(response)


def nothing(response: httpx.Response) -> None:
    """For calls whose body the client reads itself (a streaming exec)."""
    return None


def exists(response: httpx.Response) -> bool:
    """``fs/stat`` as a test: 2xx is True, a 404 for the path (not for the VM) False, anything else raises."""
    if response.is_success:
        return True
    error = api_error(response)
    if response.status_code == 404 and error.code == "path_not_found":
        return False
    raise error
