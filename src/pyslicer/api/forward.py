"""GET /vm/{hostname}/forward: one WebSocket per forwarded connection, raw bytes both ways.

The target is the ``X-Inlets-Upstream`` header (``host:port``, ``[v6]:port`` or ``unix:/path``), dialled by
the agent inside the guest. A missing or malformed header, an unknown VM or a stopped one is refused before
the upgrade with the usual JSON error; a target that refuses or cannot be reached is accepted and closed at
once with 1014 (bad gateway) and the guest's reason (``127.0.0.1:9: Connection refused``), which is what a
WebSocket client shows.

Half-close: Slicer's clients end a connection by closing the WebSocket, so when the upstream sends EOF the
WebSocket is closed (normally) after its last bytes. A client that sends ``X-Slicer-Half-Close: true`` (this
project's SDK) instead gets an empty binary message for that EOF, and may send one itself to half-close
towards the upstream; the WebSocket then closes once both ways have ended.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from pyslicer.api.websocket_sessions import (
    BAD_GATEWAY,
    INTERNAL_ERROR,
    NORMAL,
    close,
    documented,
    first_of,
    refuse,
    upgrade_required,
)
from pyslicer.daemon import Daemon
from pyslicer.daemon.forward import ForwardClosed, ForwardConnection, ForwardData, ForwardEnd, ForwardTarget
from pyslicer.errors import AgentError, InvalidArgument, SlicerError, UpstreamUnreachable

router = APIRouter()
UPSTREAM_HEADER = "x-inlets-upstream"
HALF_CLOSE_HEADER = "x-slicer-half-close"


def forward_target(websocket: WebSocket) -> ForwardTarget:
    """Raises InvalidArgument when the header is missing or malformed."""
    value = websocket.headers.get(UPSTREAM_HEADER)
    if not value:
        raise InvalidArgument(
            "the X-Inlets-Upstream header is required (host:port or unix:/path)", code="missing_upstream"
        )
    return ForwardTarget.parse(value)


MESSAGES = (
    "Raw bytes both ways as binary messages. Closes: 1000 when the connection ended, 1014 (bad gateway) with "
    "the guest's reason when the target refused or could not be reached, 1011 when it broke. With "
    "`X-Slicer-Half-Close: true` an empty message is EOF (a half-close), either way."
)
HEADERS = [
    {
        "name": "X-Inlets-Upstream",
        "in": "header",
        "required": True,
        "description": "where the guest connects: host:port, [v6]:port or unix:/path",
        "schema": {"type": "string"},
    },
    {
        "name": "X-Slicer-Half-Close",
        "in": "header",
        "required": False,
        "description": "true: EOF is an empty message both ways, instead of the upstream's EOF closing",
        "schema": {"type": "string", "enum": ["true", "false"]},
    },
]


@router.get(
    "/vm/{hostname}/forward",
    **documented("One TCP or unix socket connection from inside the VM, over a WebSocket", MESSAGES, HEADERS),
)
async def forward_without_upgrade(hostname: str) -> JSONResponse:
    return upgrade_required()


@router.websocket("/vm/{hostname}/forward")
async def forward(websocket: WebSocket, hostname: str) -> None:
    daemon: Daemon = websocket.app.state.daemon
    half_close = websocket.headers.get(HALF_CLOSE_HEADER, "").lower() in ("1", "true")
    try:
        connection = await daemon.forward(hostname, forward_target(websocket))
    except UpstreamUnreachable as exc:
        await websocket.accept()
        await close(websocket, BAD_GATEWAY, exc.message)
        return
    except SlicerError as exc:
        await refuse(websocket, exc)
        return
    code, reason = NORMAL, ""
    try:
        await websocket.accept()
        code, reason = await first_of(
            _from_client(websocket, connection, half_close), _to_client(websocket, connection, half_close)
        )
    except (WebSocketDisconnect, OSError, RuntimeError):
        pass
    except AgentError as exc:
        code, reason = INTERNAL_ERROR, exc.message
    finally:
        connection.cancel()
    await close(websocket, code, reason)


async def _from_client(websocket: WebSocket, connection: ForwardConnection, half_close: bool) -> tuple[int, str]:
    input_open = True
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return (NORMAL, "")
        payload = message.get("bytes")
        if payload is None:
            payload = (message.get("text") or "").encode()
        if not input_open:
            continue
        if payload:
            await connection.write(payload)
        elif half_close:
            connection.close_input()
            input_open = False


async def _to_client(websocket: WebSocket, connection: ForwardConnection, half_close: bool) -> tuple[int, str]:
    async for event in connection.events():
        if isinstance(event, ForwardData):
            await websocket.send_bytes(event.data)
        elif isinstance(event, ForwardEnd):
            if not half_close:
                return (NORMAL, "the upstream closed the connection")
            await websocket.send_bytes(b"")
        elif isinstance(event, ForwardClosed):
            return (INTERNAL_ERROR, event.error) if event.error else (NORMAL, "")
    return (NORMAL, "")
