"""The blocking twin of ``_forward_async`` (see there): ``ForwardStream`` on ``websockets.sync``, and a
``Forwarder`` that serves each listener and each connection on threads of its own."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

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

    from websockets.sync.client import ClientConnection

    from ._config import Endpoint

__all__ = ["ForwardStream", "Forwarder", "Listener"]


class ForwardStream:
    def __init__(self, connection: ClientConnection, upstream: str) -> None:
        self._connection = connection
        self.upstream = upstream
        self._eof = False

    @classmethod
    def connect(
        cls, endpoint: Endpoint, headers: Mapping[str, str], hostname: str, upstream: str, open_timeout: float | None
    ) -> ForwardStream:
        from websockets.sync.client import connect, unix_connect

        url = websocket_url(endpoint, vm_path(hostname, "forward"))
        options = connect_options(headers, forward_headers(upstream), open_timeout)
        try:
            connection = unix_connect(endpoint.uds, url, **options) if endpoint.uds else connect(url, **options)
            connection.__enter__()  # as ``with connect(...)`` does (websockets 17.1 warns otherwise); close() ends it
        except Exception as exc:
            raise handshake_error(exc, url, endpoint) from exc
        return cls(connection, upstream)

    def read(self, timeout: float | None = None) -> bytes:
        """The next bytes from the target; ``b""`` once it sent EOF. Raises SlicerUpstreamError when the target
        refused the connection, SlicerConnectionError when the daemon ended it abnormally, TimeoutError when
        nothing came within ``timeout`` seconds."""
        from websockets.exceptions import ConnectionClosed

        if self._eof:
            return b""
        try:
            message = self._connection.recv(timeout)
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

    def write(self, data: bytes) -> None:
        """Raises SlicerUpstreamError or SlicerConnectionError once the connection is closed."""
        from websockets.exceptions import ConnectionClosed

        try:
            for start in range(0, len(data), CHUNK):
                self._connection.send(data[start : start + CHUNK])
        except ConnectionClosed as exc:
            raise closed_error(exc) from None

    def close_write(self) -> None:
        """No more bytes for the target: it reads EOF, and may still answer."""
        from websockets.exceptions import ConnectionClosed

        try:
            self._connection.send(b"")
        except ConnectionClosed as exc:
            raise closed_error(exc) from None

    def close(self) -> None:
        self._connection.close()


class Forwarder:
    """Local listeners, each forwarding every connection it accepts to its target in the guest."""

    def __init__(
        self, open_stream: Callable[[str], ForwardStream], specs: Sequence[ForwardSpec], on_error: ErrorCallback | None
    ) -> None:
        self._open_stream = open_stream
        self._specs = specs
        self._on_error = on_error
        self._sockets: list[socket.socket] = []
        self._live: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.listeners: list[Listener] = []

    @classmethod
    def start(
        cls,
        open_stream: Callable[[str], ForwardStream],
        specs: Sequence[str],
        on_error: ErrorCallback | None = None,
    ) -> Forwarder:
        """Bind every listener (all or none: OSError for one that cannot be bound, ValueError for a bad spec)."""
        parsed = [parse_forward_spec(spec) for spec in specs]
        if not parsed:
            raise ValueError("no forward specs given")
        forwarder = cls(open_stream, parsed, on_error)
        try:
            for spec in parsed:
                forwarder._bind(spec)
        except BaseException:
            forwarder.close()
            raise
        return forwarder

    def _bind(self, spec: ForwardSpec) -> None:
        if spec.listen_path:
            remove_stale_socket(spec.listen_path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sockets.append(sock)
            sock.bind(spec.listen_path)
            os.chmod(spec.listen_path, 0o660)
            listener = Listener(spec.spec, spec.listen_path, spec.upstream, 0)
        else:
            infos = socket.getaddrinfo(spec.listen_host, spec.listen_port, type=socket.SOCK_STREAM)
            family, _, _, _, address = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            self._sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            port = sock.getsockname()[1]
            listener = Listener(spec.spec, f"{spec.listen_host}:{port}", spec.upstream, port)
        sock.listen(128)
        self.listeners.append(listener)
        threading.Thread(target=self._accept, args=(spec, sock), name="slicer-forward", daemon=True).start()

    def _accept(self, spec: ForwardSpec, sock: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                local, _ = sock.accept()
            except OSError:
                return  # closed
            with self._lock:
                self._live.add(local)
            threading.Thread(target=self._serve, args=(spec, local), daemon=True).start()

    def _serve(self, spec: ForwardSpec, local: socket.socket) -> None:
        stream: ForwardStream | None = None
        errors: list[Exception] = []  # the first of the two directions' is the one reported
        try:
            stream = self._open_stream(spec.upstream)
            down = threading.Thread(target=self._downstream, args=(stream, local, errors), daemon=True)
            down.start()
            try:
                while data := local.recv(CHUNK):
                    stream.write(data)
                stream.close_write()
            except Exception as exc:
                errors.append(exc)
                with contextlib.suppress(OSError):
                    local.shutdown(socket.SHUT_RDWR)
            down.join()
        except Exception as exc:
            errors.append(exc)
        finally:
            if errors and self._on_error is not None and not self._closed.is_set():
                self._on_error(spec, errors[0])
            with self._lock:
                self._live.discard(local)
            local.close()
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()

    @staticmethod
    def _downstream(stream: ForwardStream, local: socket.socket, errors: list[Exception]) -> None:
        try:
            while data := stream.read():
                local.sendall(data)
            local.shutdown(socket.SHUT_WR)
        except Exception as exc:
            errors.append(exc)
            with contextlib.suppress(OSError):
                local.shutdown(socket.SHUT_RDWR)  # ends the other direction's recv too

    def serve_forever(self) -> None:
        """Return once ``close`` has been called (from another thread or a signal handler)."""
        while not self._closed.wait(0.5):
            pass

    def close(self) -> None:
        """Stop listening, drop every connection, remove the unix sockets made."""
        self._closed.set()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        with self._lock:
            live, self._live = self._live, set()
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for spec in self._specs:
            if spec.listen_path:
                with contextlib.suppress(OSError):
                    remove_stale_socket(spec.listen_path)

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
