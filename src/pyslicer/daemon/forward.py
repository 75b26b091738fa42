"""Forward: one TCP (or unix socket) connection made by the agent inside the guest, as typed events.

The target comes from the client (``X-Inlets-Upstream``: ``host:port``, ``[v6]:port`` or ``unix:/path``);
the guest dials it, so no guest networking is needed. Bytes go both ways under the stream's credit
windows; EOF either way is a half-close.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyslicer.daemon.agent_link import AgentStream, Message, Output, OutputEnd
from pyslicer.daemon.guest_input import str_or
from pyslicer.errors import AgentError, InvalidArgument, UpstreamUnreachable
from pyslicer.protocol import Event, Op

if TYPE_CHECKING:
    from pyslicer import protocol

CONNECT_TIMEOUT = 15.0  # the agent gives up after 10 s itself
MAX_UNIX_PATH = 107
MAX_HOST = 253


@dataclass(frozen=True, slots=True)
class ForwardTarget:
    """Where the guest connects: ``host`` and ``port``, or ``path`` (a unix socket)."""

    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, value: str) -> ForwardTarget:
        """``host:port``, ``[v6]:port`` or ``unix:/path``. Raises InvalidArgument (code ``invalid_upstream``)."""
        text = value.strip()
        if text.startswith("unix:"):
            path = text[len("unix:") :]
            if not path.startswith("/") or "\0" in path or len(path.encode()) > MAX_UNIX_PATH:
                raise InvalidArgument(
                    f"upstream {value!r}: a unix socket needs an absolute path of at most {MAX_UNIX_PATH} bytes",
                    code="invalid_upstream",
                )
            return cls(path=path)
        host, sep, port_text = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            sep = ""  # an IPv6 address needs brackets to carry a port
        if not sep or not host or len(host) > MAX_HOST or any(c in host for c in "\0/ []") or not port_text.isdigit():
            raise InvalidArgument(
                f"upstream {value!r} is not host:port, [v6]:port or unix:/path", code="invalid_upstream"
            )
        port = int(port_text)
        if not 0 < port < 65536:
            raise InvalidArgument(f"upstream {value!r}: port {port} is out of range", code="invalid_upstream")
        return cls(host=host, port=port)

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def to_wire(self) -> protocol.ForwardRequest:
        if self.path:
            return {"op": Op.FORWARD, "path": self.path}
        return {"op": Op.FORWARD, "host": self.host, "port": self.port}


@dataclass(frozen=True, slots=True)
class ForwardData:
    data: bytes


@dataclass(frozen=True, slots=True)
class ForwardEnd:
    """The upstream will send nothing more (it may still read: a half-close)."""


@dataclass(frozen=True, slots=True)
class ForwardClosed:
    """The connection is over: both ways ended (``error`` empty), or it broke (``error`` says how)."""

    error: str = ""


ForwardEvent = ForwardData | ForwardEnd | ForwardClosed


class ForwardConnection:
    """A connection from the guest to its target. Iterate ``events()`` once; the last is ForwardClosed.

    Iteration raises AgentError when the agent is lost."""

    def __init__(self, stream: AgentStream, target: ForwardTarget) -> None:
        self._stream = stream
        self.target = target

    @classmethod
    async def open(cls, stream: AgentStream, target: ForwardTarget) -> ForwardConnection:
        """Wait until the guest has connected. Raises UpstreamUnreachable (its message says why, e.g.
        ``127.0.0.1:9: Connection refused``), AgentError when the agent does not answer or goes away."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                async for event in stream:
                    if isinstance(event, Message):
                        kind = event.body.get("type")
                        if kind == Event.CONNECTED:
                            return cls(stream, target)
                        if kind == Event.ERROR:
                            error = str_or(event.body.get("error"), f"{target}: connection failed")
                            raise UpstreamUnreachable(error, code=_code(str_or(event.body.get("errno"), "")))
        except TimeoutError:
            stream.cancel()
            raise UpstreamUnreachable(f"{target}: connection timed out", code="upstream_timeout") from None
        except BaseException:
            stream.cancel()
            raise
        raise AgentError("the agent ended the forward before it connected")

    async def events(self) -> AsyncIterator[ForwardEvent]:
        async for event in self._stream:
            if isinstance(event, Output):
                yield ForwardData(event.data)
                self._stream.consumed(len(event.data))
            elif isinstance(event, OutputEnd):
                yield ForwardEnd()
            elif isinstance(event, Message):
                kind = event.body.get("type")
                if kind == Event.DONE:
                    yield ForwardClosed()
                    return
                if kind == Event.ERROR:
                    yield ForwardClosed(str_or(event.body.get("error"), "the connection failed"))
                    return
        yield ForwardClosed("the forward was cancelled")

    async def write(self, data: bytes) -> None:
        """Bytes for the upstream, sent as the guest's credit allows. Raises nothing."""
        await self._stream.write(data)

    def close_input(self) -> None:
        """No more bytes for the upstream (a half-close: it sees EOF, and may still answer)."""
        self._stream.close_input()

    def cancel(self) -> None:
        """Drop the connection at once. Safe to repeat."""
        self._stream.cancel()


def _code(errno_name: str) -> str:
    return {
        "ECONNREFUSED": "connection_refused",
        "ENOENT": "socket_not_found",
        "ETIMEDOUT": "upstream_timeout",
        "EHOSTUNREACH": "host_unreachable",
        "ENETUNREACH": "host_unreachable",
        "EACCES": "permission_denied",
    }.get(errno_name, "upstream_unreachable")
