"""The asyncio full-duplex HTTP/1.1 transport for exec with stdin (see ``_duplex`` for why)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import h11
import httpx

from ._duplex import connect_errors, read_errors, request_head, response_for, timeouts
from ._exchange import READ_SIZE


class AsyncDuplexTransport(httpx.AsyncBaseTransport):
    """HTTP or HTTPS over TCP, or HTTP over a unix socket, on asyncio."""

    speaks_tls = True

    def __init__(self, uds: str | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self._uds = uds
        self._ssl_context = ssl_context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        connect_timeout, read_timeout = timeouts(request)
        reader, writer = await self._connect(request, connect_timeout)
        exchange = _AsyncExchange(reader, writer, request, read_timeout)
        try:
            head = await exchange.start()
        except BaseException:
            await exchange.aclose()
            raise
        return response_for(head, _AsyncBody(exchange))

    async def _connect(
        self, request: httpx.Request, timeout: float | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        url = request.url
        with connect_errors(request):
            async with asyncio.timeout(timeout):
                if self._uds is not None:
                    return await asyncio.open_unix_connection(self._uds)
                if url.scheme == "https":
                    context = self._ssl_context or ssl.create_default_context()
                    return await asyncio.open_connection(
                        url.host, url.port or 443, ssl=context, server_hostname=url.host
                    )
                if url.scheme != "http":
                    raise httpx.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}", request=request)
                return await asyncio.open_connection(url.host, url.port or 80)


class _AsyncExchange:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: httpx.Request,
        read_timeout: float | None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._request = request
        self._read_timeout = read_timeout
        self._conn = h11.Connection(h11.CLIENT)
        self._pump_task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> h11.Response:
        try:
            self._write(request_head(self._request))
            await self._writer.drain()
        except OSError as exc:
            raise httpx.WriteError(str(exc), request=self._request) from exc
        self._pump_task = asyncio.create_task(self._pump())
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):
                raise httpx.RemoteProtocolError(
                    f"connection closed before a response ({event!r})", request=self._request
                )

    def _write(self, event: h11.Event) -> None:
        data = self._conn.send(event)
        if data:
            self._writer.write(data)

    async def _pump(self) -> None:
        stream = self._request.stream
        try:
            if not isinstance(stream, httpx.AsyncByteStream):
                raise TypeError("async transport needs an async request body")
            async for chunk in stream:
                if chunk:
                    self._write(h11.Data(data=chunk))
                    await self._writer.drain()
            self._write(h11.EndOfMessage())
            await self._writer.drain()
        except Exception:
            # As in the sync transport: the response side reports failures.
            return

    async def _next_event(self) -> h11.Event:
        with read_errors(self._request):
            while True:
                event = self._conn.next_event()
                if event is h11.NEED_DATA:
                    async with asyncio.timeout(self._read_timeout):
                        data = await self._reader.read(READ_SIZE)
                    self._conn.receive_data(data)
                    continue
                if event is h11.PAUSED:
                    raise httpx.RemoteProtocolError("unexpected data after the response", request=self._request)
                assert isinstance(event, h11.Event)
                return event

    async def iter_body(self) -> AsyncIterator[bytes]:
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pump_task is not None:
            self._pump_task.cancel()
        self._writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, exchange: _AsyncExchange) -> None:
        self._exchange = exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._exchange.iter_body():
            yield chunk

    async def aclose(self) -> None:
        await self._exchange.aclose()
