"""Port forwarding over ``/vm/{h}/forward`` (``_forward.py``: its blocking twin).

``AsyncForwardStream`` is one connection to a target in the guest: raw bytes both ways, ``close_write()`` a
half-close (this client asks the daemon for half-close with ``X-Slicer-Half-Close``). ``AsyncForwarder``
listens locally (TCP or unix sockets, ``-L`` specs) and opens one stream per accepted connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._forward_spec import (
    CHUNK,
    ErrorCallback,
    ForwardSpec,
    Listener,
    forward_headers,
    parse_forward_spec,
    remove_stale_socket,
)
from ._websocket import (
    close_error,
    closed_error,
    connect_options,
    handshake_error,
    vm_path,
    websocket_url,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from websockets.asyncio.client import ClientConnection

    from ._config import Endpoint


class AsyncForwardStream:
    def __init__(self, connection: ClientConnection, upstream: str) -> None:
        self._connection = connection
        self.upstream = upstream
        self._eof = False

    @classmethod
    async def connect(
        cls, endpoint: Endpoint, headers: Mapping[str, str], hostname: str, upstream: str, open_timeout: float | None
    ) -> AsyncForwardStream:
        from websockets.asyncio.client import connect, unix_connect

        url = websocket_url(endpoint, vm_path(hostname, "forward"))
        options = connect_options(headers, forward_headers(upstream), open_timeout)
        try:
            connection = await (unix_connect(endpoint.uds, url, **options) if endpoint.uds else connect(url, **options))
        except Exception as exc:
            raise handshake_error(exc, url, endpoint) from exc
        return cls(connection, upstream)

    async def read(self) -> bytes:
        """The next bytes from the target; ``b""`` once it sent EOF. Raises SlicerUpstreamError when the target
        refused the connection (the first read says so) or SlicerConnectionError when the daemon ended it
        abnormally."""
        from websockets.exceptions import ConnectionClosed

        if self._eof:
            return b""
        try:
            message = await self._connection.recv()
        except ConnectionClosed as exc:
            self._eof = True
            error = close_error(exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else "")
            if error is not None:
                raise error from None
            return b""
        data = message.encode() if isinstance(message, str) else message
        if not data:
            self._eof = True
        return data

    async def write(self, data: bytes) -> None:
        """Raises SlicerUpstreamError or SlicerConnectionError once the connection is closed."""
        from websockets.exceptions import ConnectionClosed

        try:
            for start in range(0, len(data), CHUNK):
                await self._connection.send(data[start : start + CHUNK])
        except ConnectionClosed as exc:
            raise closed_error(exc) from None

    async def close_write(self) -> None:
        """No more bytes for the target: it reads EOF, and may still answer."""
        from websockets.exceptions import ConnectionClosed

        try:
            await self._connection.send(b"")
        except ConnectionClosed as exc:
            raise closed_error(exc) from None

    async def close(self) -> None:
        await self._connection.close()


class AsyncForwarder:
    """Local listeners, each forwarding every connection it accepts to its target in the guest."""

    def __init__(
        self,
        open_stream: Callable[[str], Any],
        specs: Sequence[ForwardSpec],
        on_error: ErrorCallback | None,
    ) -> None:
        self._open_stream = open_stream
        self._specs = specs
        self._on_error = on_error
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        self.listeners: list[Listener] = []

    @classmethod
    async def start(
        cls, open_stream: Callable[[str], Any], specs: Sequence[str], on_error: ErrorCallback | None = None
    ) -> AsyncForwarder:
        """Bind every listener (all or none: OSError for one that cannot be bound, ValueError for a bad spec)."""
        parsed = [parse_forward_spec(spec) for spec in specs]
        if not parsed:
            raise ValueError("no forward specs given")
        forwarder = cls(open_stream, parsed, on_error)
        try:
            for spec in parsed:
                await forwarder._bind(spec)
        except BaseException:
            await forwarder.close()
            raise
        return forwarder

    async def _bind(self, spec: ForwardSpec) -> None:
        def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.get_running_loop().create_task(self._serve(spec, reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        if spec.listen_path:
            remove_stale_socket(spec.listen_path)
            server = await asyncio.start_unix_server(handle, spec.listen_path)
            os.chmod(spec.listen_path, 0o660)
            self._servers.append(server)
            self.listeners.append(Listener(spec.spec, spec.listen_path, spec.upstream, 0))
            return
        server = await asyncio.start_server(handle, spec.listen_host, spec.listen_port)
        self._servers.append(server)
        port = server.sockets[0].getsockname()[1]
        self.listeners.append(Listener(spec.spec, f"{spec.listen_host}:{port}", spec.upstream, port))

    async def _serve(self, spec: ForwardSpec, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream: AsyncForwardStream | None = None
        try:
            stream = await self._open_stream(spec.upstream)
            await asyncio.gather(self._upstream(reader, stream), self._downstream(stream, writer))
        except Exception as exc:
            if self._on_error is not None:
                self._on_error(spec, exc)
        finally:
            writer.close()
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.close()

    @staticmethod
    async def _upstream(reader: asyncio.StreamReader, stream: AsyncForwardStream) -> None:
        while data := await reader.read(CHUNK):
            await stream.write(data)
        await stream.close_write()

    @staticmethod
    async def _downstream(stream: AsyncForwardStream, writer: asyncio.StreamWriter) -> None:
        while data := await stream.read():
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def serve_forever(self) -> None:
        """Return once ``close`` has been called."""
        await self._closed.wait()

    async def close(self) -> None:
        """Stop listening, drop every connection, remove the unix sockets made."""
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for spec in self._specs:
            if spec.listen_path:
                with contextlib.suppress(OSError):
                    remove_stale_socket(spec.listen_path)
        self._closed.set()

    async def __aenter__(self) -> AsyncForwarder:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
