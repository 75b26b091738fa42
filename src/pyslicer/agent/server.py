"""Agent main loop: one link, many streams."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import sys
import time
from typing import Any, Protocol

from pyslicer import __version__
from pyslicer.agent.execs import ExecSession
from pyslicer.agent.link import SerialLink, find_port
from pyslicer.agent.userdata import Userdata
from pyslicer.protocol import (
    PROTOCOL_VERSION,
    Channel,
    Frame,
    FrameType,
    ProtocolError,
    decode_json,
    encode,
    encode_json,
    window_increment,
)


class Session(Protocol):
    def on_data(self, channel: Channel, data: bytes) -> None: ...
    def on_eof(self, channel: Channel) -> None: ...
    def on_window(self, increment: int) -> None: ...
    def cancel(self) -> None: ...


class Agent:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.instance = secrets.token_hex(8)
        self.userdata = Userdata()
        self.sessions: dict[int, Session] = {}
        self.link: SerialLink | None = None

    # -- sending -------------------------------------------------------------------------------
    def send(self, frame_type: FrameType, stream: int, payload: bytes = b"", flags: int = 0) -> None:
        assert self.link is not None
        self.link.send(encode(frame_type, stream, payload, flags))

    def send_json(self, frame_type: FrameType, stream: int, body: dict[str, Any]) -> None:
        assert self.link is not None
        self.link.send(encode_json(frame_type, stream, body))

    def finish(self, stream: int, session: Session) -> None:
        if self.sessions.get(stream) is session:
            del self.sessions[stream]
            self.send(FrameType.CLOSE, stream)

    def send_ready(self) -> None:
        self.send_json(
            FrameType.READY,
            0,
            {
                "version": PROTOCOL_VERSION,
                "agent_version": __version__,
                "instance": self.instance,
                "hostname": socket.gethostname(),
            },
        )

    # -- receiving -----------------------------------------------------------------------------
    def on_frames(self, frames: list[Frame]) -> None:
        for frame in frames:
            try:
                self.dispatch(frame)
            except ProtocolError as exc:
                print(f"slicer-agent: dropping bad frame: {exc}", file=sys.stderr)
                if frame.stream:
                    self.cancel(frame.stream)
                    self.send(FrameType.CLOSE, frame.stream)

    def dispatch(self, frame: Frame) -> None:
        if frame.type is FrameType.HELLO:
            self.reset()
            self.send_ready()
            return
        if frame.type is FrameType.OPEN:
            self.open(frame.stream, decode_json(frame))
            return
        session = self.sessions.get(frame.stream)
        if session is None:
            return  # a stream that already ended; the host learns that from our CLOSE
        if frame.type is FrameType.DATA:
            session.on_data(Channel(frame.flags), frame.payload)
        elif frame.type is FrameType.EOF:
            session.on_eof(Channel(frame.flags))
        elif frame.type is FrameType.WINDOW:
            session.on_window(window_increment(frame))
        elif frame.type is FrameType.CLOSE:
            self.cancel(frame.stream)
        else:
            raise ProtocolError(f"unexpected {frame.type.name} frame from the host")

    def open(self, stream: int, request: dict[str, Any]) -> None:
        if stream == 0 or stream in self.sessions:
            raise ProtocolError(f"stream {stream} cannot be opened")
        op = request.get("op")
        if op == "health":
            self.send_json(FrameType.MESSAGE, stream, self.health())
            self.send(FrameType.CLOSE, stream)
        elif op == "userdata":
            script = request.get("script")
            started = self.userdata.start(script if isinstance(script, str) else "")
            self.send_json(FrameType.MESSAGE, stream, {"started": started})
            self.send(FrameType.CLOSE, stream)
        elif op == "exec":
            self.sessions[stream] = ExecSession(self, stream, request)
        else:
            self.send_json(FrameType.MESSAGE, stream, {"type": "error", "error": f"unknown op {op!r}"})
            self.send(FrameType.CLOSE, stream)

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "hostname": socket.gethostname(),
            "agent_uptime": max(1, int((time.monotonic() - self.started) * 1e9)),
            "agent_version": __version__,
            "system_uptime": int(time.clock_gettime(time.CLOCK_BOOTTIME) * 1e9),
            "userdata_ran": self.userdata.ran,
        }
        if self.userdata.exit_code is not None:
            body["userdata_exit_code"] = self.userdata.exit_code
        return body

    def cancel(self, stream: int) -> None:
        session = self.sessions.pop(stream, None)
        if session is not None:
            session.cancel()

    def reset(self) -> None:
        for stream in list(self.sessions):
            self.cancel(stream)


async def open_channel() -> int:
    inherited = os.environ.get("SLICER_AGENT_FD")  # lets tests run the agent over a socketpair
    if inherited:
        fd = int(inherited)
        os.set_blocking(fd, False)
        return fd
    path = find_port()
    while path is None:
        await asyncio.sleep(0.05)
        path = find_port()
    return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


async def serve() -> None:
    fd = await open_channel()
    agent = Agent()
    agent.link = SerialLink(fd, agent.on_frames, agent.reset)
    agent.send_ready()
    await agent.link.run()


def main() -> None:
    asyncio.run(serve())
