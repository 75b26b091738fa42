"""What the WebSocket routes (shell, forward) share: refusing before the upgrade with the usual JSON error,
closing without caring whether the client is still there, and running the two directions of a session.

A refusal before ``accept`` is an HTTP answer (``{"error", "code"}`` with the error's status) through the
WebSocket denial response extension, which uvicorn offers; a server without it gets a close (HTTP 403).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from pyslicer.api.errors import error_response
from pyslicer.api.schemas import ErrorBody
from pyslicer.errors import SlicerError

NORMAL = 1000
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
INTERNAL_ERROR = 1011
BAD_GATEWAY = 1014
MAX_REASON_BYTES = 123  # a close frame's payload is at most 125 bytes, 2 of them the code


def upgrade_required() -> JSONResponse:
    """The answer to a plain GET on a WebSocket route (426, as RFC 9110 has it)."""
    body = {"error": "this endpoint is a WebSocket: send an upgrade request", "code": "upgrade_required"}
    return JSONResponse(body, status_code=426, headers={"upgrade": "websocket", "connection": "Upgrade"})


def documented(summary: str, messages: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    """The route arguments of the plain-GET twin of a WebSocket route: what the OpenAPI document says of it
    (FastAPI leaves WebSocket routes out)."""
    return {
        "summary": summary,
        "response_class": JSONResponse,
        "status_code": 426,
        "openapi_extra": {"parameters": parameters},
        "responses": {
            101: {"description": f"Switching Protocols: a WebSocket. {messages}"},
            426: {"description": "a plain GET without the upgrade", "model": ErrorBody},
            401: {"description": "missing or invalid bearer token", "model": ErrorBody},
            404: {"description": "no such VM", "model": ErrorBody},
            409: {"description": "the VM is not running", "model": ErrorBody},
            503: {"description": "the VM's agent is not reachable", "model": ErrorBody},
        },
    }


async def refuse(websocket: WebSocket, error: SlicerError) -> None:
    """Answer the upgrade request with the error as JSON and its status."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(error))
    else:
        await websocket.close(code=1008, reason=reason_text(error.message))


def reason_text(text: str) -> str:
    """``text`` cut to what a close frame can carry (whole UTF-8 characters)."""
    encoded = text.encode()
    if len(encoded) <= MAX_REASON_BYTES:
        return text
    return encoded[: MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."


async def close(websocket: WebSocket, code: int = NORMAL, reason: str = "") -> None:
    """Close the WebSocket unless it is closed already (the client may have gone)."""
    if websocket.application_state == WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        await websocket.close(code=code, reason=reason_text(reason))


async def first_of(*coroutines: Coroutine[Any, Any, Any]) -> Any:
    """Run the coroutines as tasks and return the result of the first to finish; the others are cancelled.
    The first's exception, if it raised, is raised."""
    tasks = [asyncio.get_running_loop().create_task(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return next(iter(done)).result()
