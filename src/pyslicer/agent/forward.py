"""One forwarded connection for one stream: the agent dials ``host:port`` (or a unix socket) inside the guest
and passes bytes both ways, so a host port reaches a guest server with no guest networking at all.

Bytes from the upstream are read only while the host has granted credit; bytes from the host are written as
the socket takes them, each chunk's credit going back once written. EOF either way is a half-close
(``shutdown(SHUT_WR)`` towards the upstream); the stream ends once both ways have ended, or at the first
error (a refused connection, a reset), which the host gets as a ``ForwardError`` with the errno's name.
Uses ``_socket`` (the C half of ``socket``, without its enum classes) to keep the import cheap under TCG.
"""

from __future__ import annotations

import _socket
import errno
import os
import sys

from pyslicer.agent.session import StreamSession
from pyslicer.protocol import HEADER, INITIAL_WINDOW, MAX_PAYLOAD, Channel, Event, FrameType, window_payload

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from pyslicer.agent.loop import Timer

CONNECT_TIMEOUT = 10.0
# A unix socket whose listen backlog is full refuses a non-blocking connect with EAGAIN (a blocking one would
# wait for room): dial again after this, until CONNECT_TIMEOUT.
BACKLOG_RETRY = 0.01
# Under TCG every syscall and context switch is dear: bytes move to and from the upstream up to this many frames
# a syscall (recvmsg_into straight into consecutive DATA frames; sendmsg of the queued chunks).
BATCH = 4
FRAME = HEADER.size + MAX_PAYLOAD
MAX_UNIX_PATH = 107


def errno_name(code: int | None) -> str:
    return errno.errorcode.get(code or 0, "")


def describe(exc: OSError) -> str:
    return exc.strerror or str(exc)


class ForwardSession(StreamSession):
    """Runs ``request`` (a ``ForwardRequest``, untrusted) for ``stream``."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._credit = 0
        self._read_threshold = MAX_PAYLOAD
        self._sock: Any = None
        self._fd = -1
        self._target = ""
        self._addresses: list[tuple[int, Any]] = []
        self._address: Any = None
        self._connected = False
        self._connect_timer: Timer | None = None
        self._retry_timer: Timer | None = None
        self._write_timer: Timer | None = None
        self._output: list[bytes] = []
        self._output_offset = 0
        self._host_eof = False  # the host sent EOF: shut our write side once the queue is written
        self._upstream_eof = False  # the upstream sent EOF (we sent EOF on stdout)
        self._wrote_eof = False
        self._frames: memoryview | None = None  # BATCH DATA frames back to back, their payloads received in place
        self._slots: list[memoryview] = []

    # -- from the host -------------------------------------------------------------------------
    def start(self) -> None:
        self._guard(self._start)

    def on_data(self, channel: int, data: bytes) -> None:
        if channel != Channel.STDIN or self._done or self._host_eof:
            return
        self._output.append(data)
        self._schedule_write()

    def on_eof(self, channel: int) -> None:
        if channel == Channel.STDIN and not self._host_eof:
            self._host_eof = True
            self._schedule_write()

    def _schedule_write(self) -> None:
        # Written once the frames that came with this read of the port are all queued: one sendmsg for them.
        if self._connected and self._write_timer is None:
            self._write_timer = self._loop.call_later(0, self._on_write_due)

    def _on_write_due(self) -> None:
        self._write_timer = None
        if not self._done:
            self._guard(self._write)

    def on_window(self, increment: int) -> None:
        self._credit += increment
        self._update_reading()

    def cancel(self) -> None:
        self._cancelled = True
        self._close()

    # -- plumbing ------------------------------------------------------------------------------
    def _guard(self, step: Callable[[], None]) -> None:
        try:
            step()
        except OSError as exc:
            self._fail(f"{self._target}: {describe(exc)}", exc.errno)
        except Exception as exc:  # the host must always see an end to the stream
            self._fail(f"agent: {exc}", None)

    def _fail(self, message: str, code: int | None) -> None:
        if self._done or self._cancelled:
            print(f"slicer-agent: stream {self.stream}: {message}", file=sys.stderr)
            return
        self._send_event({"type": Event.ERROR, "error": message, "errno": errno_name(code)})
        self._finish()

    def _finish(self) -> None:
        self._done = True
        self._close()
        if not self._cancelled:
            self._on_finish(self)

    def _close(self) -> None:
        for timer in (self._connect_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._connect_timer = self._write_timer = None
        self._close_socket()
        self._output = []

    # -- connecting ----------------------------------------------------------------------------
    def _start(self) -> None:
        self._credit = int(self._request.get("window") or INITIAL_WINDOW)
        self._read_threshold = max(1, min(MAX_PAYLOAD, self._credit))
        path, host, port = self._request.get("path"), self._request.get("host"), self._request.get("port")
        if isinstance(path, str) and path:
            self._target = f"unix:{path}"
            if "\0" in path or len(os.fsencode(path)) > MAX_UNIX_PATH:
                self._fail(f"{self._target}: invalid socket path", errno.EINVAL)
                return
            self._addresses = [(_socket.AF_UNIX, path)]
        elif isinstance(host, str) and host and isinstance(port, int) and not isinstance(port, bool):
            self._target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            if not 0 < port < 65536 or "\0" in host:
                self._fail(f"{self._target}: invalid address", errno.EINVAL)
                return
            try:
                infos = _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM)
            except OSError as exc:  # gaierror: the name does not resolve in the guest
                self._fail(f"{self._target}: {describe(exc)}", errno.EHOSTUNREACH)
                return
            self._addresses = [(family, address) for family, _, _, _, address in infos]
        else:
            self._fail("a forward needs a host and port, or a path", errno.EINVAL)
            return
        self._connect_timer = self._loop.call_later(CONNECT_TIMEOUT, self._on_connect_timeout)
        self._try_next(None)

    def _try_next(self, last_error: OSError | None) -> None:
        """Dial the next address (a name can resolve to several: ::1 then 127.0.0.1); fail with the last
        error once none is left."""
        self._close_socket()
        if not self._addresses:
            error = last_error or OSError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))
            self._fail(f"{self._target}: {describe(error)}", error.errno)
            return
        family, address = self._addresses.pop(0)
        sock = _socket.socket(family, _socket.SOCK_STREAM)
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._address = address
        self._dial()

    def _dial(self) -> None:
        assert self._sock is not None
        code = self._sock.connect_ex(self._address)
        if code in (0, errno.EISCONN):
            self._on_connected()
        elif code == errno.EINPROGRESS:
            self._loop.add_writer(self._fd, self._on_connect_writable)
        elif code == errno.EAGAIN and self._sock.family == _socket.AF_UNIX:
            self._retry_timer = self._loop.call_later(BACKLOG_RETRY, self._on_retry)
        else:
            self._try_next(OSError(code, os.strerror(code)))

    def _on_retry(self) -> None:
        self._retry_timer = None
        if self._sock is not None:
            self._guard(self._dial)

    def _close_socket(self) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        if self._fd >= 0:
            self._loop.forget(self._fd)
            self._fd = -1
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _on_connect_writable(self) -> None:
        if self._sock is None:
            return
        code = self._sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        if code:
            self._try_next(OSError(code, os.strerror(code)))
            return
        self._loop.remove_writer(self._fd)
        self._on_connected()

    def _on_connect_timeout(self) -> None:
        self._connect_timer = None
        if not self._connected:
            self._addresses = []
            self._try_next(OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT)))

    def _on_connected(self) -> None:
        self._connected = True
        if self._connect_timer is not None:
            self._connect_timer.cancel()
            self._connect_timer = None
        self._send_event({"type": Event.CONNECTED})
        self._guard(self._write)
        self._update_reading()

    # -- upstream -> host ----------------------------------------------------------------------
    def _update_reading(self) -> None:
        if self._fd < 0 or not self._connected or self._upstream_eof or self._done:
            return
        if self._credit >= self._read_threshold:
            self._loop.add_reader(self._fd, self._on_readable)
        else:
            self._loop.remove_reader(self._fd)

    def _on_readable(self) -> None:
        self._guard(self._read)

    def _read(self) -> None:
        if self._sock is None or self._credit < self._read_threshold:
            return
        if self._frames is None:
            self._frames = memoryview(bytearray(BATCH * FRAME))
            self._slots = [self._frames[i * FRAME + HEADER.size : (i + 1) * FRAME] for i in range(BATCH)]
        # Received into the frames' payloads, so the bytes are copied once in the guest; the frames lie back to
        # back and go to the link as one buffer (which copies only what the port does not take at once).
        room = min(self._credit, BATCH * MAX_PAYLOAD)
        full, rest = divmod(room, MAX_PAYLOAD)
        slots = self._slots[:full] + ([self._slots[full][:rest]] if rest else [])
        try:
            size = self._sock.recvmsg_into(slots)[0]
        except (BlockingIOError, InterruptedError):
            return
        if not size:
            self._upstream_eof = True
            self._loop.remove_reader(self._fd)
            self._send(FrameType.EOF, flags=Channel.STDOUT)
            self._maybe_done()
            return
        self._credit -= size
        left, end = size, 0
        while left:
            length = min(left, MAX_PAYLOAD)
            HEADER.pack_into(self._frames, end, FrameType.DATA, Channel.STDOUT, self.stream, length)
            end += HEADER.size + length
            left -= length
        if not self._cancelled:
            self._send_frame(self._frames[:end])
        if self._credit < self._read_threshold:
            self._loop.remove_reader(self._fd)

    # -- host -> upstream ----------------------------------------------------------------------
    def _write(self) -> None:
        released = 0  # bytes of chunks written whole: their credit goes back in one WINDOW
        while self._output and self._sock is not None:
            pending = [memoryview(self._output[0])[self._output_offset :], *self._output[1:BATCH]]
            try:
                written = self._sock.sendmsg(pending) + self._output_offset
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._fd, self._on_writable)
                break
            while self._output and written >= len(self._output[0]):
                chunk = self._output.pop(0)
                written -= len(chunk)
                released += len(chunk)
            self._output_offset = written
        if released:
            self._send(FrameType.WINDOW, window_payload(released))
        if self._output or self._sock is None:
            return
        self._loop.remove_writer(self._fd)
        if self._host_eof and not self._wrote_eof:
            self._wrote_eof = True
            try:
                self._sock.shutdown(_socket.SHUT_WR)
            except OSError as exc:
                if exc.errno != errno.ENOTCONN:  # the upstream is gone already: its EOF is on its way
                    raise
            self._maybe_done()

    def _on_writable(self) -> None:
        self._guard(self._write)

    def _maybe_done(self) -> None:
        if self._upstream_eof and self._wrote_eof and not self._done:
            self._send_event({"type": Event.DONE})
            self._finish()
