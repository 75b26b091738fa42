"""POST /vm/{hostname}/exec: NDJSON frames streamed as they come, or one buffered answer.

With stdin=true the request body is the command's stdin while the answer streams. Starlette's
StreamingResponse consumes request-body messages in its disconnect listener, so this response
drives ASGI receive and send itself.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import json
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message as AsgiMessage
from starlette.types import Receive, Scope, Send

from pyslicer.api.errors import error_response
from pyslicer.api.nodes import daemon
from pyslicer.api.params import query_bool, query_int
from pyslicer.daemon.agent_link import AgentStream, Message, Output, OutputEnd
from pyslicer.daemon.daemon import utc_now
from pyslicer.errors import AgentError, InvalidArgument, NotSupported, SlicerError, Unavailable
from pyslicer.protocol import Channel

BUFFERED_LIMIT = 32 * 1024 * 1024
MAX_ID = 2**32 - 2  # (uid_t)-1 means "leave unchanged" to setreuid: it would run the command as root
CHANNEL_NAMES = {Channel.STDOUT: "stdout", Channel.STDERR: "stderr"}


@dataclass(frozen=True)
class ExecOptions:
    agent_request: dict[str, Any]
    stdin: bool
    buffered: bool
    base64: bool


def parse_exec_query(request: Request) -> ExecOptions:
    params = request.query_params
    cmd = params.get("cmd", "")
    if not cmd:
        raise InvalidArgument("cmd: a command is required", code="invalid_cmd")
    if query_bool(request, "background"):
        raise NotSupported("background: background exec is not supported on this build yet", code="background")
    stdio = params.get("stdio", "")
    if stdio not in ("", "text", "base64"):
        raise InvalidArgument(f"stdio: {stdio!r} is not one of text, base64", code="invalid_stdio")
    env = params.getlist("env")
    for item in env:
        if "=" not in item or item.startswith("="):
            raise InvalidArgument(f"env: {item!r} is not KEY=VALUE", code="invalid_env")
    stdin = query_bool(request, "stdin")
    buffered = query_bool(request, "buffered")
    if stdin and buffered:
        raise InvalidArgument("stdin is not supported with buffered=true", code="invalid_stdin")
    agent_request: dict[str, Any] = {
        "cmd": cmd,
        "args": params.getlist("args"),
        "env": env,
        "uid": query_int(request, "uid", maximum=MAX_ID),
        "gid": query_int(request, "gid", maximum=MAX_ID),
        "cwd": params.get("cwd") or None,
        "shell": params.get("shell") or None,
        "stdin": stdin,
    }
    return ExecOptions(agent_request, stdin, buffered, stdio == "base64")


class OutputText:
    """Turns output bytes into JSON strings: text (split characters kept whole) or base64."""

    def __init__(self, use_base64: bool) -> None:
        self.base64 = use_base64
        self._decoders = {ch: codecs.getincrementaldecoder("utf-8")("replace") for ch in CHANNEL_NAMES}

    def decode(self, channel: Channel, data: bytes, final: bool = False) -> str:
        if self.base64:
            return base64.b64encode(data).decode()
        return self._decoders[channel].decode(data, final)


def output_frame(channel: Channel, data: str, is_base64: bool) -> dict[str, Any]:
    """A typed output frame; the payload also goes under the channel's own name, which older
    clients (and the TypeScript SDK) read instead of ``data``."""
    name = CHANNEL_NAMES[channel]
    frame: dict[str, Any] = {"type": name, "data": data, name: data, "timestamp": utc_now()}
    if is_base64:
        frame["encoding"] = "base64"
    return frame


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _text(value: Any, default: str) -> str:
    return value if isinstance(value, str) else default


def started_frame(body: dict[str, Any]) -> dict[str, Any]:
    """Rebuilt from the fields we know: what the guest sends is input like any other."""
    return {
        "type": "started",
        "pid": _int(body.get("pid"), 0),
        "started_at": _text(body.get("started_at"), utc_now()),
        "timestamp": utc_now(),
    }


def exit_frame(body: dict[str, Any]) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "exit",
        "exit_code": _int(body.get("exit_code"), 1),
        "ended_at": _text(body.get("ended_at"), utc_now()),
        "timestamp": utc_now(),
    }
    if body.get("type") == "error":
        frame["error"] = _text(body.get("error"), "exec failed")
    elif isinstance(signal := body.get("signal"), str):
        frame["signal"] = signal
    return frame


async def exec_command(request: Request) -> Response:
    node = daemon(request).node(request.path_params["hostname"])
    options = parse_exec_query(request)
    stream = node.open_exec(options.agent_request)
    if options.buffered:
        return ExecBufferedResponse(stream, options)
    return ExecStreamResponse(stream, options)


class _ExecResponse(Response):
    """An exec answer that drives ASGI itself, with a task reading the request side meanwhile."""

    headers_to_send: ClassVar[Mapping[str, str]] = {"cache-control": "no-store"}

    def __init__(self, stream: AgentStream, options: ExecOptions) -> None:
        self.stream = stream
        self.options = options
        self.status_code = 200
        self.background = None
        self.init_headers(self.headers_to_send)

    @contextlib.asynccontextmanager
    async def _reading(self, listener: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
        """Run ``listener`` while the body of the block runs; the command stops with the block."""
        task = asyncio.get_running_loop().create_task(listener)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.stream.cancel()


class ExecBufferedResponse(_ExecResponse):
    """One JSON object once the command ends. The output is held as the bytes that arrived (at most
    BUFFERED_LIMIT) and encoded piece by piece while it is written, never as one big string; a client
    that leaves stops the command."""

    media_type = "application/json"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with self._reading(self._watch(receive)):
                chunks, tail = await self._collect()
        except SlicerError as exc:
            await error_response(exc)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        for piece in json_pieces(chunks, tail, self.options.base64):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.stream.cancel()

    async def _collect(self) -> tuple[dict[Channel, list[bytes]], dict[str, Any]]:
        chunks: dict[Channel, list[bytes]] = {Channel.STDOUT: [], Channel.STDERR: []}
        tail: dict[str, Any] = {"exit_code": 1, "error": "the command was cancelled"}
        size = 0
        async for event in self.stream:
            if isinstance(event, Output):
                size += len(event.data)
                if size > BUFFERED_LIMIT:
                    raise Unavailable(
                        f"output exceeds the {BUFFERED_LIMIT} byte buffer; use the streaming exec",
                        code="buffer_exhausted",
                    )
                chunks[event.channel].append(event.data)
                self.stream.consumed(len(event.data))
            elif isinstance(event, Message) and event.body.get("type") in ("exit", "error"):
                tail = {"exit_code": _int(event.body.get("exit_code"), 1)}
                if event.body.get("type") == "error":
                    tail["error"] = _text(event.body.get("error"), "exec failed")
        if self.options.base64:
            tail["encoding"] = "base64"
        return chunks, tail


def json_pieces(chunks: dict[Channel, list[bytes]], tail: dict[str, Any], use_base64: bool) -> Iterator[bytes]:
    """``{"stdout": ..., "stderr": ..., **tail}`` as a sequence of byte strings."""
    yield b"{"
    for channel, name in CHANNEL_NAMES.items():
        yield f'"{name}":"'.encode()
        if use_base64:
            carry = b""
            for chunk in chunks[channel]:
                data = carry + chunk
                whole = len(data) - len(data) % 3  # base64 pieces join cleanly only at 3-byte bounds
                yield base64.b64encode(data[:whole])
                carry = data[whole:]
            yield base64.b64encode(carry) + b'",'
        else:
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            for chunk in chunks[channel]:
                yield json.dumps(decoder.decode(chunk))[1:-1].encode()
            yield json.dumps(decoder.decode(b"", True))[1:-1].encode() + b'",'
    yield json.dumps(tail)[1:].encode()


class ExecStreamResponse(_ExecResponse):
    media_type = "application/x-ndjson"
    headers_to_send: ClassVar[Mapping[str, str]] = {"cache-control": "no-store", "x-content-type-options": "nosniff"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async with self._reading(self._listen(receive)):
            with contextlib.suppress(OSError):  # the client went away; leaving the block stops the command
                await self._relay(send)

    async def _listen(self, receive: Receive) -> None:
        """Feed the request body to stdin; a disconnect cancels the command."""
        stdin_open = self.options.stdin
        while True:
            message: AsgiMessage = await receive()
            if message["type"] == "http.disconnect":
                self.stream.cancel()
                return
            if message["type"] == "http.request" and stdin_open:
                if body := message.get("body", b""):
                    await self.stream.write(body)
                if not message.get("more_body", False):
                    self.stream.close_input()
                    stdin_open = False

    async def _relay(self, send: Send) -> None:
        text = OutputText(self.options.base64)
        ended = False

        async def emit(frame: dict[str, Any]) -> None:
            line = json.dumps(frame, separators=(",", ":")).encode() + b"\n"
            await send({"type": "http.response.body", "body": line, "more_body": True})

        try:
            async for event in self.stream:
                if isinstance(event, Output):
                    if data := text.decode(event.channel, event.data):
                        await emit(output_frame(event.channel, data, text.base64))
                    self.stream.consumed(len(event.data))
                elif isinstance(event, OutputEnd):
                    if not text.base64 and (rest := text.decode(event.channel, b"", final=True)):
                        await emit(output_frame(event.channel, rest, False))
                elif isinstance(event, Message):
                    body = event.body
                    if body.get("type") in ("exit", "error"):
                        ended = True
                        await emit(exit_frame(body))
                    elif body.get("type") == "started":
                        await emit(started_frame(body))
        except AgentError as exc:
            ended = True
            await emit(exit_frame({"type": "error", "error": exc.message, "exit_code": 1}))
        if not ended:
            await emit(exit_frame({"type": "error", "error": "the command was cancelled", "exit_code": 1}))
        await send({"type": "http.response.body", "body": b"", "more_body": False})
