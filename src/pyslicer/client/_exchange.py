"""One HTTP/1.1 request and its answer on one blocking socket, full duplex, with h11 and without httpx.

httpcore writes the whole request body before it reads any of the answer, so a command that answers while
stdin is still open (``cat``, a REPL, a long pipe into a chatty command) would stall or deadlock. Slicer streams
stdin as the request body *while* the NDJSON answer streams back, so here a thread writes the body while the
caller reads. Two users: ``DuplexTransport`` (``_duplex``) wraps it for httpx, and ``SocketExecClient``
(``_socket_exec``) uses it as it is, so the CLI's ``vm exec`` never imports httpx.

Failures come out as the socket's ``OSError`` (``TimeoutError`` on a timeout) and h11's ``RemoteProtocolError``;
each user maps them to its own errors. No TLS: ``ssl`` sockets are not safe to read and write from two threads.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterable, Iterator

import h11

READ_SIZE = 65536


def connect(host: str, port: int, uds: str | None, timeout: float | None) -> socket.socket:
    """A socket connected to ``uds`` (a unix socket path) or else ``host:port`` (TCP, without Nagle's delay)."""
    if uds is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(uds)
        except BaseException:
            sock.close()
            raise
        return sock
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Exchange:
    """The request goes out with ``send_head`` (the body, if any, from a helper thread); the answer comes in
    with ``read_head`` and ``iter_body``. ``close`` ends both directions and closes the socket."""

    def __init__(
        self,
        sock: socket.socket,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: Iterable[bytes] | None,
    ) -> None:
        self._sock = sock
        self._head = h11.Request(method=method, target=target, headers=headers)
        self._body = body
        self._conn = h11.Connection(h11.CLIENT)
        # h11 is not thread-safe; socket I/O happens outside the lock so both directions flow.
        self._lock = threading.Lock()
        self._closed = False

    def send_head(self) -> None:
        """Send the request head, and start the body (``headers`` must frame it: a length, or chunked)."""
        self._send(self._head)
        if self._body is None:
            self._send(h11.EndOfMessage())
        else:
            threading.Thread(target=self._pump, args=(self._body,), name="slicer-exec-stdin", daemon=True).start()

    def read_head(self) -> h11.Response:
        while True:
            event = self._next_event()
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):
                raise h11.RemoteProtocolError(f"connection closed before a response ({event!r})")

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

    def _send(self, event: h11.Event) -> None:
        with self._lock:
            data = self._conn.send(event)
        if data:
            self._sock.sendall(data)

    def _pump(self, body: Iterable[bytes]) -> None:
        try:
            for chunk in body:
                if self._closed:
                    return
                if chunk:
                    self._send(h11.Data(data=chunk))
            self._send(h11.EndOfMessage())
        except Exception:
            # The server stopped reading (the command exited, or it answered early);
            # the reading side reports whatever went wrong.
            return

    def _next_event(self) -> h11.Event:
        while True:
            with self._lock:
                event = self._conn.next_event()
            if event is h11.NEED_DATA:
                data = self._sock.recv(READ_SIZE)
                with self._lock:
                    self._conn.receive_data(data)
                continue
            if event is h11.PAUSED:
                raise h11.RemoteProtocolError("unexpected data after the response")
            assert isinstance(event, h11.Event)
            return event
