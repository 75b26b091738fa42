"""``Shell``: the blocking twin of ``_shell_async.AsyncShell`` (see there), on ``websockets.sync``. A thread
sends the heartbeats."""

from __future__ import annotations

import contextlib
import threading
from types import TracebackType
from typing import TYPE_CHECKING

from pyslicer import shell_frames

from ._websocket import close_error, connect_options, handshake_error, vm_path, websocket_url

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from websockets.sync.client import ClientConnection

    from ._config import Endpoint

HEARTBEAT_SECONDS = 30.0


class Shell:
    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection
        self._stopped = threading.Event()
        self._ended = False
        self.exit_code: int | None = None
        """How the shell ended (None while it runs, or when the daemon did not say)."""
        self.close_reason = ""

    @classmethod
    def connect(
        cls,
        endpoint: Endpoint,
        headers: Mapping[str, str],
        hostname: str,
        params: Sequence[tuple[str, str]],
        size: tuple[int, int],
        open_timeout: float | None,
    ) -> Shell:
        from websockets.sync.client import connect, unix_connect

        url = websocket_url(endpoint, vm_path(hostname, "shell"), params)
        options = connect_options(headers, None, open_timeout)
        try:
            connection = unix_connect(endpoint.uds, url, **options) if endpoint.uds else connect(url, **options)
            connection.__enter__()  # as ``with connect(...)`` does (websockets 17.1 warns otherwise); close() ends it
        except Exception as exc:
            raise handshake_error(exc, url, endpoint) from exc
        shell = cls(connection)
        shell.resize(*size)
        threading.Thread(target=shell._beat, name="slicer-shell-heartbeat", daemon=True).start()
        return shell

    def _beat(self) -> None:
        with contextlib.suppress(Exception):
            while not self._stopped.wait(HEARTBEAT_SECONDS):
                self._connection.send(shell_frames.encode(shell_frames.HEARTBEAT))

    def read(self, timeout: float | None = None) -> bytes:
        """The terminal's next output; ``b""`` once the session has ended. Raises TimeoutError when nothing
        came within ``timeout`` seconds, SlicerConnectionError when the daemon closed the session abnormally."""
        from websockets.exceptions import ConnectionClosed

        while not self._ended:
            try:
                message = self._connection.recv(timeout)
            except ConnectionClosed as exc:
                self._end(exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else "")
                break
            if isinstance(message, str):
                continue
            frame = shell_frames.decode(message)
            if frame.type == shell_frames.DATA:
                return frame.payload
            if frame.type == shell_frames.SESSION_CLOSE:
                self.exit_code = shell_frames.exit_code_of(frame)
            elif frame.type == shell_frames.SHUTDOWN:
                self._ended = True
        return b""

    def _end(self, code: int | None, reason: str) -> None:
        self._ended = True
        self.close_reason = reason
        if self.exit_code is None and reason.startswith("exit status "):
            with contextlib.suppress(ValueError):
                self.exit_code = int(reason.removeprefix("exit status "))
        error = close_error(code, reason)
        if error is not None:
            raise error

    def write(self, data: bytes) -> None:
        """Send keystrokes (bytes as typed: ``b"\\x03"`` is Ctrl-C)."""
        self._send(shell_frames.data(data))

    def resize(self, cols: int, rows: int) -> None:
        self._send(shell_frames.window_size(cols, rows))

    def _send(self, message: bytes) -> None:
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed):  # the session is over: read() says how
            self._connection.send(message)

    def close(self) -> None:
        """Hang up (the guest's session gets SIGHUP) and close the WebSocket."""
        self._stopped.set()
        if not self._ended:
            self._send(shell_frames.encode(shell_frames.SHUTDOWN))
        self._connection.close()

    def __enter__(self) -> Shell:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
