"""The agent's end of the virtio-serial byte stream."""

from __future__ import annotations

import errno
import os
import time

from pyslicer.protocol import FrameDecoder

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from pyslicer.agent.loop import Loop
    from pyslicer.protocol import Frame

PORT_NAME = "agent"
PORTS_DIR = "/sys/class/virtio-ports"
READ_SIZE = 256 * 1024
# The guest's virtio-console driver hands out at most one of its page-sized buffers per read(2), whatever the
# size asked. So the port is read with readv into page-sized segments of one preallocated buffer: up to
# READ_SIZE a syscall, with no allocation. (An os.read(fd, READ_SIZE) allocates and frees READ_SIZE bytes, an
# mmap and munmap, to get 4 KiB: measured under TCG, 12 MiB/s host -> guest, against 150 MiB/s this way.)
SEGMENT = 4096
FIRST_BACKOFF = 0.005
MAX_BACKOFF = 0.1


def find_port(name: str = PORT_NAME) -> str | None:
    try:
        ports = sorted(os.listdir(PORTS_DIR))
    except OSError:
        return None
    for port in ports:
        try:
            with open(f"{PORTS_DIR}/{port}/name") as f:
                if f.read().strip() == name:
                    return "/dev/" + port
        except OSError:
            continue
    return None


def open_channel() -> int:
    """The port's fd, non-blocking and not inherited by children; waits for the port to show up."""
    inherited = os.environ.get("SLICER_AGENT_FD")  # lets tests run the agent over a socketpair
    if inherited:
        fd = int(inherited)
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
        return fd
    path = find_port()
    while path is None:
        time.sleep(0.05)  # nothing else to do before the port exists
        path = find_port()
    return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


class SerialLink:
    """Non-blocking reads and writes on the port.

    While no host is connected, read() returns EOF at once (and epoll says HUP): we then stop watching
    the port and look again after a sleep that grows from 5 ms to 100 ms, so we never spin, and report
    the disconnect so every stream is dropped. Writes go through an outbox, flushed when the port is
    writable; nothing blocks.
    """

    def __init__(
        self,
        loop: Loop,
        fd: int,
        on_frames: Callable[[list[Frame]], None],
        on_disconnect: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._fd = fd
        self._on_frames = on_frames
        self._on_disconnect = on_disconnect
        self._decoder = FrameDecoder()
        self._read_buffer = memoryview(bytearray(READ_SIZE))
        self._segments = [self._read_buffer[start : start + SEGMENT] for start in range(0, READ_SIZE, SEGMENT)]
        self._outbox = bytearray()
        self._writing = False
        self._backoff = FIRST_BACKOFF
        self.connected = True

    def start(self) -> None:
        self._loop.add_reader(self._fd, self._on_readable)

    # -- reading -------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            size = os.readv(self._fd, self._segments)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.EPIPE, errno.ECONNRESET):
                raise
            size = 0
        if size:
            self._backoff = FIRST_BACKOFF
            self.connected = True
            frames = self._decoder.feed(self._read_buffer[:size])
            self._on_frames(frames)  # a ProtocolError here ends the agent (init restarts it)
            return
        if self.connected:
            self.connected = False
            self._decoder = FrameDecoder()
            self._outbox.clear()
            self._stop_writing()
            self._on_disconnect()
        self._loop.remove_reader(self._fd)
        self._loop.call_later(self._backoff, self.start)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)

    # -- writing -------------------------------------------------------------------------------
    def send(self, data: bytes | memoryview) -> None:
        if self._outbox or self._writing:
            self._outbox += data
            return
        # Nothing waiting: write straight from ``data`` and keep only what the port did not take. Copying every
        # frame into the outbox and out again cost a third of a download's time under TCG (memcpy is slow there).
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                break
            except OSError:
                return
            view = view[written:]
        if view:
            self._outbox += view
            self._flush()

    def _flush(self) -> None:
        while self._outbox:
            try:
                written = os.write(self._fd, self._outbox)
            except BlockingIOError:
                break
            except OSError:
                self._outbox.clear()
                break
            del self._outbox[:written]
        if self._outbox and not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._flush)
        elif not self._outbox:
            self._stop_writing()

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
