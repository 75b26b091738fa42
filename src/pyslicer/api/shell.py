"""GET /vm/{hostname}/shell: a WebSocket carrying Slicer's shell frames (``pyslicer.shell_frames``).

Before the upgrade the query and the VM are checked and the shell is started, so a bad request, an unknown
VM or a missing shell is an ordinary JSON error. Then: data frames are keystrokes, window size frames
resize the terminal, heartbeats are ignored, text messages too; shutdown (or session close) from the client
ends the session. The shell's exit is a session close frame (carrying the exit code) and a normal close with
the reason ``exit status N``. A malformed frame closes this session (1002) and hangs its shell up; a
client that vanishes hangs it up too.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import ValidationError
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from pyslicer import shell_frames
from pyslicer.api.dependencies import query_parameters
from pyslicer.api.errors import describe_validation
from pyslicer.api.websocket_sessions import (
    INTERNAL_ERROR,
    NORMAL,
    PROTOCOL_ERROR,
    close,
    documented,
    first_of,
    refuse,
    upgrade_required,
)
from pyslicer.daemon import Daemon
from pyslicer.daemon.shell import ShellExited, ShellOutput, ShellRequest, ShellSession
from pyslicer.errors import AgentError, InvalidArgument, SlicerError

router = APIRouter()

ClientEnd = tuple[Literal["gone", "shutdown", "malformed"], str]


def shell_request(websocket: WebSocket) -> ShellRequest:
    """Raises InvalidArgument naming the field."""
    names = ShellRequest.model_fields
    values = {name: value for name, value in websocket.query_params.items() if name in names}
    try:
        return ShellRequest.model_validate(values)
    except ValidationError as exc:
        raise describe_validation([{**error, "loc": ("query", *error["loc"])} for error in exc.errors()]) from None


MESSAGES = (
    "Binary messages, one frame each: a 5-byte header (type, big-endian uint32 length) and the payload. "
    "Types: 0x01 data, 0x02 window size (cols, rows: big-endian uint32), 0x03 shutdown, 0x04 heartbeat, "
    "0x05 session close (from the daemon: the shell exited; payload its exit code, big-endian int32). "
    "Closes: 1000 with `exit status N` when the shell exits, 1002 for a malformed frame, 1011 when the agent is lost."
)


@router.get(
    "/vm/{hostname}/shell",
    **documented("A login shell on a PTY in the VM, over a WebSocket", MESSAGES, query_parameters(ShellRequest)),
)
async def shell_without_upgrade(hostname: str) -> JSONResponse:
    return upgrade_required()


@router.websocket("/vm/{hostname}/shell")
async def shell(websocket: WebSocket, hostname: str) -> None:
    daemon: Daemon = websocket.app.state.daemon
    try:
        session = await daemon.shell(hostname, shell_request(websocket))
    except SlicerError as exc:
        await refuse(websocket, exc)
        return
    try:
        await websocket.accept()
        end = await first_of(_from_client(websocket, session), _to_client(websocket, session))
    except (WebSocketDisconnect, OSError, RuntimeError):
        end = ("gone", "")
    except AgentError as exc:
        end = ("agent", exc.message)
    finally:
        session.hang_up()
    kind, detail = end
    if kind == "exited":
        await close(websocket, NORMAL, detail)
    elif kind == "malformed":
        await close(websocket, PROTOCOL_ERROR, detail)
    elif kind == "agent":
        await close(websocket, INTERNAL_ERROR, detail)
    elif kind == "shutdown":
        await close(websocket, NORMAL, "shutdown")


async def _from_client(websocket: WebSocket, session: ShellSession) -> ClientEnd:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return ("gone", "")
        payload = message.get("bytes")
        if payload is None:
            continue  # text messages carry nothing in Slicer's protocol
        try:
            frame = shell_frames.decode(payload)
            if frame.type == shell_frames.DATA:
                await session.write(frame.payload)
            elif frame.type == shell_frames.WINDOW_SIZE:
                session.resize(*shell_frames.size_of(frame))
            elif frame.type in (shell_frames.SHUTDOWN, shell_frames.SESSION_CLOSE):
                return ("shutdown", "")
        except (shell_frames.FrameError, InvalidArgument) as exc:
            return ("malformed", f"malformed frame: {exc}")


async def _to_client(websocket: WebSocket, session: ShellSession) -> tuple[Literal["exited"], str]:
    async for event in session.events():
        if isinstance(event, ShellOutput):
            await websocket.send_bytes(shell_frames.data(event.data))
        elif isinstance(event, ShellExited):
            await websocket.send_bytes(shell_frames.session_close(event.exit_code))
            reason = f"killed by {event.signal}" if event.signal else f"exit status {event.exit_code}"
            return ("exited", reason)
    return ("exited", "exit status 1")
