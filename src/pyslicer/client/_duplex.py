"""Full-duplex HTTP/1.1 transports for exec with stdin.

httpcore writes the whole request body before it reads any of the response, so a command that answers while
stdin is still open (``cat``, a REPL, a long pipe into a chatty command) would stall or deadlock. Slicer streams
stdin as the request body *while* the NDJSON response streams back, so these transports speak HTTP/1.1 with h11
over one connection per request: a writer (thread or task) sends the body while the caller reads the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator

import h11
import httpx

_READ_SIZE = 65536


def _head(request: httpx.Request) -> h11.Request:
    return h11.Request(method=request.method, target=request.url.raw_path, headers=request.headers.raw)


def _response(head: h11.Response, stream: httpx.SyncByteStream | httpx.AsyncByteStream) -> httpx.Response:
    return httpx.Response(
        head.status_code,
        headers=head.headers.raw_items(),
        stream=stream,
        extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
    )


@contextlib.contextmanager
def _connect_errors(request: httpx.Request) -> Iterator[None]:
    """Socket errors while connecting, as httpx names them (the sync and async transports share this)."""
    try:
        yield
    except TimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "timed out", request=request) from exc
    except OSError as exc:
        raise httpx.ConnectError(str(exc), request=request) from exc


@contextlib.contextmanager
def _read_errors(request: httpx.Request) -> Iterator[None]:
    """Socket and HTTP errors while reading the response, as httpx names them."""
    try:
        yield
    except TimeoutError as exc:
        raise httpx.ReadTimeout(str(exc) or "timed out", request=request) from exc
    except OSError as exc:
        raise httpx.ReadError(str(exc), request=request) from exc
    except h11.RemoteProtocolError as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc


def _timeouts(request: httpx.Request) -> tuple[float | None, float | None]:
    timeout = request.extensions.get("timeout", {})
    return timeout.get("connect"), timeout.get("read")


# -- sync ------------------------------------------------------------------------------------------


class DuplexTransport(httpx.BaseTransport):
    """Plain HTTP over TCP or a unix socket (TLS is not supported: ``ssl`` objects are not safe to read and
    write from two threads at once)."""

    def __init__(self, uds: str | None = None) -> None:
        self._uds = uds

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol(
                f"full-duplex exec supports http and unix sockets, not {request.url.scheme}", request=request
            )
        connect_timeout, read_timeout = _timeouts(request)
        sock = self._connect(request, connect_timeout)
        sock.settimeout(read_timeout)
        exchange = _SyncExchange(sock, request)
        try:
            head = exchange.start()
        except BaseException:
            exchange.close()
            raise
        return _response(head, _SyncBody(exchange))

    def _connect(self, request: httpx.Request, timeout: float | None) -> socket.socket:
        with _connect_errors(request):
            if self._uds is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(timeout)
                    sock.connect(self._uds)
                except BaseException:
                    sock.close()
                    raise
                return sock
            sock = socket.create_connection((request.url.host, request.url.port or 80), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock


class _SyncExchange:
    def __init__(self, sock: socket.socket, request: httpx.Request) -> None:
        self._sock = sock
        self._request = request
        self._conn = h11.Connection(h11.CLIENT)
        # h11 is not thread-safe; socket I/O happens outside the lock so both directions flow.
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> h11.Response:
        try:
            self._send(_head(self._request))
        except OSError as exc:
            raise httpx.WriteError(str(exc), request=self._request) from exc
        threading.Thread(target=self._pump, name="slicer-exec-stdin", daemon=True).start()
        while True:
            event = self._next_event()
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):
                raise httpx.RemoteProtocolError(
                    f"connection closed before a response ({event!r})", request=self._request
                )

    def _send(self, event: h11.Event) -> None:
        with self._lock:
            data = self._conn.send(event)
        if data:
            self._sock.sendall(data)

    def _pump(self) -> None:
        stream = self._request.stream
        try:
            if not isinstance(stream, httpx.SyncByteStream):
                raise TypeError("sync transport needs a sync request body")
            for chunk in stream:
                if self._closed:
                    return
                if chunk:
                    self._send(h11.Data(data=chunk))
            self._send(h11.EndOfMessage())
        except Exception:
            # The server stopped reading (the command exited, or it answered early);
            # the response side reports whatever went wrong.
            return

    def _next_event(self) -> h11.Event:
        with _read_errors(self._request):
            while True:
                with self._lock:
                    event = self._conn.next_event()
                if event is h11.NEED_DATA:
                    data = self._sock.recv(_READ_SIZE)
                    with self._lock:
                        self._conn.receive_data(data)
                    continue
                if event is h11.PAUSED:
                    raise httpx.RemoteProtocolError("unexpected data after the response", request=self._request)
                assert isinstance(event, h11.Event)
                return event

    def iter_body(self) -> Iterator[bytes]:
        while True:
            event = self._next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


class _SyncBody(httpx.SyncByteStream):
    def __init__(self, exchange: _SyncExchange) -> None:
        self._exchange = exchange

    def __iter__(self) -> Iterator[bytes]:
        yield from self._exchange.iter_body()

    def close(self) -> None:
        self._exchange.close()


# -- async -----------------------------------------------------------------------------------------


class AsyncDuplexTransport(httpx.AsyncBaseTransport):
    """HTTP or HTTPS over TCP, or HTTP over a unix socket, on asyncio."""

    def __init__(self, uds: str | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self._uds = uds
        self._ssl_context = ssl_context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        connect_timeout, read_timeout = _timeouts(request)
        reader, writer = await self._connect(request, connect_timeout)
        exchange = _AsyncExchange(reader, writer, request, read_timeout)
        try:
            head = await exchange.start()
        except BaseException:
            await exchange.aclose()
            raise
        return _response(head, _AsyncBody(exchange))

    async def _connect(
        self, request: httpx.Request, timeout: float | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        url = request.url
        with _connect_errors(request):
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
            self._write(_head(self._request))
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
        with _read_errors(self._request):
            while True:
                event = self._conn.next_event()
                if event is h11.NEED_DATA:
                    async with asyncio.timeout(self._read_timeout):
                        data = await self._reader.read(_READ_SIZE)
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
