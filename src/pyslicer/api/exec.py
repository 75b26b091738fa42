"""POST /vm/{hostname}/exec: NDJSON frames streamed as they come, or one buffered answer.

The daemon runs the command and hands back typed events; this module only turns them into frames.
With stdin=true the request body is the command's stdin while the answer streams. Starlette's
StreamingResponse consumes request-body messages in its disconnect listener, so these responses
drive ASGI receive and send themselves.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import json
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from typing import Annotated, Any, ClassVar, Literal

from fastapi import APIRouter
from pydantic import Field
from starlette.responses import Response
from starlette.types import Message as AsgiMessage
from starlette.types import Receive, Scope, Send

from pyslicer.api import background
from pyslicer.api.dependencies import DaemonDep, query_of, query_parameters
from pyslicer.api.errors import ERROR_RESPONSES, error_response
from pyslicer.api.schemas import ExecFrame, ExecResult
from pyslicer.api.streaming import alongside, call_on_disconnect
from pyslicer.daemon import ExecExited, ExecFailed, ExecOutcome, ExecOutput, ExecProcess, ExecRequest, ExecStarted
from pyslicer.daemon.exec import Flag, OutputStream
from pyslicer.daemon.timestamps import utc_now
from pyslicer.errors import AgentError, InvalidArgument, SlicerError

NDJSON = "application/x-ndjson"


class ExecQuery(ExecRequest):
    """The exec request as Slicer's query string: the command, and how to answer."""

    buffered: Flag = False
    stdio: Literal["", "text", "base64"] = ""
    background: Flag = Field(default=False, description="start it detached and answer 201 with an exec_id")
    ring_bytes: int = Field(default=0, ge=0, description="with background: the output ring's cap (0: 1 MiB)")


router = APIRouter(responses=ERROR_RESPONSES)


@router.post(
    "/vm/{hostname}/exec",
    summary="Run a command: NDJSON frames as they come, or one JSON object with buffered=true",
    response_class=Response,
    openapi_extra={
        "parameters": query_parameters(ExecQuery),
        "requestBody": {
            "required": False,
            "description": "the command's stdin, with stdin=true (read while the answer streams)",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
    },
    responses={
        200: {
            "description": "frames (started, stdout/stderr, exit), one JSON object a line; or with "
            "buffered=true one ExecResult",
            "content": {
                NDJSON: {"schema": ExecFrame.model_json_schema(ref_template="#/components/schemas/{model}")},
                "application/json": {
                    "schema": ExecResult.model_json_schema(ref_template="#/components/schemas/{model}")
                },
            },
        },
    },
)
async def exec_command(daemon: DaemonDep, hostname: str, query: Annotated[ExecQuery, query_of(ExecQuery)]) -> Response:
    if query.background:
        return await background.start(
            daemon,
            hostname,
            query,
            ring_bytes=query.ring_bytes,
            use_base64=query.stdio == "base64",
            buffered=query.buffered,
        )
    if query.stdin and query.buffered:
        raise InvalidArgument("stdin is not supported with buffered=true", code="invalid_stdin")
    process = daemon.exec(hostname, query)
    use_base64 = query.stdio == "base64"
    if query.buffered:
        return ExecBufferedResponse(process, use_base64=use_base64)
    return ExecStreamResponse(process, use_base64=use_base64, stdin=query.stdin)


# -- frames ------------------------------------------------------------------------------------------


class OutputText:
    """Turns output bytes into JSON strings: text (split characters kept whole) or base64."""

    def __init__(self, use_base64: bool) -> None:
        self.base64 = use_base64
        self._decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("stdout", "stderr")}

    def decode(self, stream: OutputStream, data: bytes) -> str:
        if self.base64:
            return base64.b64encode(data).decode()
        return self._decoders[stream].decode(data)

    def flush(self) -> Iterator[tuple[OutputStream, str]]:
        """What is left of a character cut at the end of each stream."""
        if not self.base64:
            for name, decoder in self._decoders.items():
                if rest := decoder.decode(b"", True):
                    yield name, rest  # type: ignore[misc]  # the keys are OutputStream names


def output_frame(stream: OutputStream, data: str, is_base64: bool) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": stream, "data": data, stream: data, "timestamp": utc_now()}
    if is_base64:
        frame["encoding"] = "base64"
    return frame


def started_frame(event: ExecStarted) -> dict[str, Any]:
    return {"type": "started", "pid": event.pid, "started_at": event.started_at, "timestamp": utc_now()}


def exit_frame(event: ExecExited | ExecFailed) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "exit",
        "exit_code": event.exit_code,
        "ended_at": event.ended_at,
        "timestamp": utc_now(),
    }
    if isinstance(event, ExecFailed):
        frame["error"] = event.error
    elif event.signal is not None:
        frame["signal"] = event.signal
    return frame


def result_tail(outcome: ExecOutcome, use_base64: bool) -> dict[str, Any]:
    end = outcome.end
    tail: dict[str, Any] = {"exit_code": end.exit_code}
    if isinstance(end, ExecFailed):
        tail["error"] = end.error
    elif end.signal is not None:
        tail["signal"] = end.signal
    if use_base64:
        tail["encoding"] = "base64"
    if outcome.started is not None:
        tail["pid"] = outcome.started.pid
        tail["started_at"] = outcome.started.started_at
    tail["ended_at"] = end.ended_at
    return tail


def json_pieces(chunks: Mapping[str, list[bytes]], tail: dict[str, Any], use_base64: bool) -> Iterator[bytes]:
    """``{"stdout": ..., "stderr": ..., **tail}`` as a sequence of byte strings, never one big string."""
    yield b"{"
    for name in ("stdout", "stderr"):
        yield f'"{name}":"'.encode()
        if use_base64:
            carry = b""
            for chunk in chunks[name]:
                data = carry + chunk
                whole = len(data) - len(data) % 3  # base64 pieces join cleanly only at 3-byte bounds
                yield base64.b64encode(data[:whole])
                carry = data[whole:]
            yield base64.b64encode(carry) + b'",'
        else:
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            for chunk in chunks[name]:
                yield json.dumps(decoder.decode(chunk))[1:-1].encode()
            yield json.dumps(decoder.decode(b"", True))[1:-1].encode() + b'",'
    yield json.dumps(tail, separators=(",", ":"))[1:].encode()


# -- responses ---------------------------------------------------------------------------------------


class _ExecResponse(Response):
    """An exec answer that drives ASGI itself, with a task reading the request side meanwhile."""

    headers_to_send: ClassVar[Mapping[str, str]] = {"cache-control": "no-store"}

    def __init__(self, process: ExecProcess, *, use_base64: bool) -> None:
        self.process = process
        self.use_base64 = use_base64
        self.status_code = 200
        self.background = None
        self.init_headers(self.headers_to_send)

    @contextlib.asynccontextmanager
    async def _reading(self, listener: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
        """Run ``listener`` while the body of the block runs; the command stops with the block."""
        try:
            async with alongside(listener):
                yield
        finally:
            self.process.cancel()


class ExecBufferedResponse(_ExecResponse):
    """One JSON object once the command ends, encoded piece by piece while it is written; a client that
    leaves stops the command."""

    media_type = "application/json"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with self._reading(call_on_disconnect(receive, self.process.cancel)):
                outcome = await self.process.collect()
        except SlicerError as exc:
            await error_response(exc)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        chunks = {"stdout": outcome.stdout, "stderr": outcome.stderr}
        for piece in json_pieces(chunks, result_tail(outcome, self.use_base64), self.use_base64):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class ExecStreamResponse(_ExecResponse):
    media_type = NDJSON
    headers_to_send: ClassVar[Mapping[str, str]] = {"cache-control": "no-store", "x-content-type-options": "nosniff"}

    def __init__(self, process: ExecProcess, *, use_base64: bool, stdin: bool) -> None:
        super().__init__(process, use_base64=use_base64)
        self.stdin = stdin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async with self._reading(self._listen(receive)):
            with contextlib.suppress(OSError):  # the client went away; leaving the block stops the command
                await self._relay(send)

    async def _listen(self, receive: Receive) -> None:
        """Feed the request body to stdin; a disconnect cancels the command."""
        stdin_open = self.stdin
        while True:
            message: AsgiMessage = await receive()
            if message["type"] == "http.disconnect":
                self.process.cancel()
                return
            if message["type"] == "http.request" and stdin_open:
                if body := message.get("body", b""):
                    await self.process.write_stdin(body)
                if not message.get("more_body", False):
                    self.process.close_stdin()
                    stdin_open = False

    async def _relay(self, send: Send) -> None:
        text = OutputText(self.use_base64)

        async def emit(frame: dict[str, Any]) -> None:
            line = json.dumps(frame, separators=(",", ":")).encode() + b"\n"
            await send({"type": "http.response.body", "body": line, "more_body": True})

        try:
            async for event in self.process.events():
                if isinstance(event, ExecOutput):
                    if data := text.decode(event.stream, event.data):
                        await emit(output_frame(event.stream, data, text.base64))
                elif isinstance(event, ExecStarted):
                    await emit(started_frame(event))
                else:
                    for stream, rest in text.flush():
                        await emit(output_frame(stream, rest, False))
                    await emit(exit_frame(event))
        except AgentError as exc:
            await emit(exit_frame(ExecFailed(exc.message, 1)))
        await send({"type": "http.response.body", "body": b"", "more_body": False})
