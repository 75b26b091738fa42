"""Full-duplex HTTP/1.1 transports for exec with stdin: the blocking one, and what it shares with the asyncio one
(``_duplex_async``).

httpcore writes the whole request body before it reads any of the response, so a command that answers while
stdin is still open (``cat``, a REPL, a long pipe into a chatty command) would stall or deadlock. Slicer streams
stdin as the request body *while* the NDJSON response streams back, so these transports speak HTTP/1.1 with h11
over one connection per request: a writer (thread or task) sends the body while the caller reads the response.

The two are written by hand, not generated like the clients: threads and a lock here, a task there, and only the
asyncio one speaks TLS.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import h11
import httpx

READ_SIZE = 65536


def request_head(request: httpx.Request) -> h11.Request:
    return h11.Request(method=request.method, target=request.url.raw_path, headers=request.headers.raw)


def response_for(head: h11.Response, stream: httpx.SyncByteStream | httpx.AsyncByteStream) -> httpx.Response:
    return httpx.Response(
        head.status_code,
        headers=head.headers.raw_items(),
        stream=stream,
        extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
    )


@contextlib.contextmanager
def connect_errors(request: httpx.Request) -> Iterator[None]:
    """Socket errors while connecting, as httpx names them (the sync and async transports share this)."""
    try:
        yield
    except TimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "timed out", request=request) from exc
    except OSError as exc:
        raise httpx.ConnectError(str(exc), request=request) from exc


@contextlib.contextmanager
def read_errors(request: httpx.Request) -> Iterator[None]:
    """Socket and HTTP errors while reading the response, as httpx names them."""
    try:
        yield
    except TimeoutError as exc:
        raise httpx.ReadTimeout(str(exc) or "timed out", request=request) from exc
    except OSError as exc:
        raise httpx.ReadError(str(exc), request=request) from exc
    except h11.RemoteProtocolError as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc


def timeouts(request: httpx.Request) -> tuple[float | None, float | None]:
    timeout = request.extensions.get("timeout", {})
    return timeout.get("connect"), timeout.get("read")


class DuplexTransport(httpx.BaseTransport):
    """Plain HTTP over TCP or a unix socket (TLS is not supported: ``ssl`` objects are not safe to read and
    write from two threads at once)."""

    speaks_tls = False

    def __init__(self, uds: str | None = None) -> None:
        self._uds = uds

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol(
                f"full-duplex exec supports http and unix sockets, not {request.url.scheme}", request=request
            )
        connect_timeout, read_timeout = timeouts(request)
        sock = self._connect(request, connect_timeout)
        sock.settimeout(read_timeout)
        exchange = _SyncExchange(sock, request)
        try:
            head = exchange.start()
        except BaseException:
            exchange.close()
            raise
        return response_for(head, _SyncBody(exchange))

    def _connect(self, request: httpx.Request, timeout: float | None) -> socket.socket:
        with connect_errors(request):
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
            self._send(request_head(self._request))
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
        with read_errors(self._request):
            while True:
                with self._lock:
                    event = self._conn.next_event()
                if event is h11.NEED_DATA:
                    data = self._sock.recv(READ_SIZE)
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
