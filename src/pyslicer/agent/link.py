"""The agent's end of the virtio-serial byte stream."""

from __future__ import annotations

import asyncio
import errno
import glob
import os
from collections.abc import Callable

from pyslicer.protocol import Frame, FrameDecoder

PORT_NAME = "agent"


def find_port(name: str = PORT_NAME) -> str | None:
    for name_file in glob.glob("/sys/class/virtio-ports/*/name"):
        try:
            with open(name_file) as f:
                if f.read().strip() == name:
                    return "/dev/" + os.path.basename(os.path.dirname(name_file))
        except OSError:
            continue
    return None


class SerialLink:
    """Non-blocking reads and writes on the port.

    While no host is connected, read() returns EOF at once; we then back off with sleeps instead of
    spinning, and report the disconnect so every stream is dropped.
    """

    def __init__(
        self,
        fd: int,
        on_frames: Callable[[list[Frame]], None],
        on_disconnect: Callable[[], None],
    ) -> None:
        self._fd = fd
        self._on_frames = on_frames
        self._on_disconnect = on_disconnect
        self._decoder = FrameDecoder()
        self._outbox = bytearray()
        self._writing = False
        self._loop = asyncio.get_running_loop()
        self.connected = True

    async def run(self) -> None:
        backoff = 0.005
        readable = asyncio.Event()
        while True:
            readable.clear()
            self._loop.add_reader(self._fd, readable.set)
            try:
                await readable.wait()
            finally:
                self._loop.remove_reader(self._fd)
            try:
                data = os.read(self._fd, 256 * 1024)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EIO, errno.EPIPE, errno.ECONNRESET):
                    raise
                data = b""
            if data:
                backoff = 0.005
                self.connected = True
                self._on_frames(self._decoder.feed(data))
                continue
            if self.connected:
                self.connected = False
                self._decoder = FrameDecoder()
                self._outbox.clear()
                self._on_disconnect()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 0.1)

    def send(self, data: bytes) -> None:
        self._outbox += data
        if not self._writing:
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
            self._loop.add_writer(self._fd, self._on_writable)
        elif not self._outbox and self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)

    def _on_writable(self) -> None:
        self._flush()
