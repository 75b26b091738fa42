"""``AsyncShell``: a shell in a VM over the ``/vm/{h}/shell`` WebSocket (``_shell.py``: its blocking twin).

Read the terminal's output with ``read()`` (``b""`` once the session is over; ``exit_code`` then says how
the shell ended), type with ``write()``, ``resize()`` when the terminal changes, ``close()`` to hang up.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import TYPE_CHECKING

from pyslicer import shell_frames

from ._websocket import close_error, connect_options, handshake_error, vm_path, websocket_url

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from websockets.asyncio.client import ClientConnection

    from ._config import Endpoint

HEARTBEAT_SECONDS = 30.0


class AsyncShell:
    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection
        self._heartbeat: asyncio.Task[None] | None = None
        self._ended = False
        self.exit_code: int | None = None
        """How the shell ended (None while it runs, or when the daemon did not say)."""
        self.close_reason = ""

    @classmethod
    async def connect(
        cls,
        endpoint: Endpoint,
        headers: Mapping[str, str],
        hostname: str,
        params: Sequence[tuple[str, str]],
        size: tuple[int, int],
        open_timeout: float | None,
    ) -> AsyncShell:
        from websockets.asyncio.client import connect, unix_connect

        url = websocket_url(endpoint, vm_path(hostname, "shell"), params)
        options = connect_options(headers, None, open_timeout)
        try:
            connection = await (unix_connect(endpoint.uds, url, **options) if endpoint.uds else connect(url, **options))
        except Exception as exc:
            raise handshake_error(exc, url, endpoint) from exc
        shell = cls(connection)
        await shell.resize(*size)
        shell._heartbeat = asyncio.get_running_loop().create_task(shell._beat())
        return shell

    async def _beat(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                await asyncio.sleep(HEARTBEAT_SECONDS)
                await self._connection.send(shell_frames.encode(shell_frames.HEARTBEAT))

    async def read(self) -> bytes:
        """The terminal's next output; ``b""`` once the session has ended. Raises SlicerConnectionError when the
        daemon closed it abnormally (a malformed frame, a lost agent)."""
        from websockets.exceptions import ConnectionClosed

        while not self._ended:
            try:
                message = await self._connection.recv()
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

    async def write(self, data: bytes) -> None:
        """Send keystrokes (bytes as typed: ``b"\\x03"`` is Ctrl-C)."""
        await self._send(shell_frames.data(data))

    async def resize(self, cols: int, rows: int) -> None:
        await self._send(shell_frames.window_size(cols, rows))

    async def _send(self, message: bytes) -> None:
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed):  # the session is over: read() says how
            await self._connection.send(message)

    async def close(self) -> None:
        """Hang up (the guest's session gets SIGHUP) and close the WebSocket."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if not self._ended:
            await self._send(shell_frames.encode(shell_frames.SHUTDOWN))
        await self._connection.close()

    async def __aenter__(self) -> AsyncShell:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
