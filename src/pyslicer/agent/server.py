"""Agent main loop: one link, many streams.

Everything runs on one thread in ``Loop``; the imports are kept to what the interpreter mostly has
loaded already (no asyncio, logging, subprocess, socket, json, enum, ...), because under TCG every
import costs and the host waits for READY before a VM counts as started.
"""

from __future__ import annotations

import os
import sys
import time

from pyslicer import __version__
from pyslicer.agent.execs import ExecSession
from pyslicer.agent.link import SerialLink, open_channel
from pyslicer.agent.loop import Loop
from pyslicer.agent.userdata import Userdata
from pyslicer.agent.wire import (
    CLOSE,
    DATA,
    EOF,
    HELLO,
    MESSAGE,
    OPEN,
    PROTOCOL_VERSION,
    READY,
    WINDOW,
    Frame,
    ProtocolError,
    decode_json,
    encode,
    encode_json,
    window_increment,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


CLOCK_TOLERANCE = 0.5
# Run over an inherited fd, the agent is on a test host whose clock is not ours to set.
CLOCK_SYNC = "SLICER_AGENT_FD" not in os.environ


def sync_clock(host_time: object) -> None:
    """Follow the host's clock: a TCG guest's clock drifts, and its timestamps (started_at, ended_at,
    file times) should agree with the host's."""
    if CLOCK_SYNC and isinstance(host_time, int | float) and abs(time.time() - host_time) > CLOCK_TOLERANCE:
        try:  # noqa: SIM105 - contextlib is an import the agent does without
            time.clock_settime(time.CLOCK_REALTIME, float(host_time))
        except OSError:
            pass  # not root (tests on the host): keep the clock we have


class Agent:
    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.started = time.monotonic()
        self.instance = os.urandom(8).hex()
        self.userdata = Userdata(loop)
        self.sessions: dict[int, ExecSession] = {}
        self.link: SerialLink | None = None

    # -- sending -------------------------------------------------------------------------------
    def send(self, frame_type: int, stream: int, payload: bytes = b"", flags: int = 0) -> None:
        assert self.link is not None
        self.link.send(encode(frame_type, stream, payload, flags))

    def send_json(self, frame_type: int, stream: int, body: dict[str, Any]) -> None:
        assert self.link is not None
        self.link.send(encode_json(frame_type, stream, body))

    def finish(self, stream: int, session: ExecSession) -> None:
        if self.sessions.get(stream) is session:
            del self.sessions[stream]
            self.send(CLOSE, stream)

    def send_ready(self) -> None:
        self.send_json(
            READY,
            0,
            {
                "version": PROTOCOL_VERSION,
                "agent_version": __version__,
                "instance": self.instance,
                "hostname": os.uname().nodename,
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
                    self.send(CLOSE, frame.stream)

    def dispatch(self, frame: Frame) -> None:
        frame_type = frame.type
        if frame_type == HELLO:
            self.reset()
            sync_clock(decode_json(frame).get("time"))
            self.send_ready()
            return
        if frame_type == OPEN:
            self.open(frame.stream, decode_json(frame))
            return
        session = self.sessions.get(frame.stream)
        if session is None:
            return  # a stream that already ended; the host learns that from our CLOSE
        if frame_type == DATA:
            session.on_data(frame.flags, frame.payload)
        elif frame_type == EOF:
            session.on_eof(frame.flags)
        elif frame_type == WINDOW:
            session.on_window(window_increment(frame))
        elif frame_type == CLOSE:
            self.cancel(frame.stream)
        else:
            raise ProtocolError(f"unexpected {frame.name} frame from the host")

    def open(self, stream: int, request: dict[str, Any]) -> None:
        if stream == 0 or stream in self.sessions:
            raise ProtocolError(f"stream {stream} cannot be opened")
        op = request.get("op")
        if op == "health":
            self.send_json(MESSAGE, stream, self.health(request))
            self.send(CLOSE, stream)
        elif op == "userdata":
            script = request.get("script")
            started = self.userdata.start(script if isinstance(script, str) else "")
            self.send_json(MESSAGE, stream, {"started": started})
            self.send(CLOSE, stream)
        elif op == "exec":
            session = ExecSession(self, stream, request)
            self.sessions[stream] = session
            session.start()
        else:
            self.send_json(MESSAGE, stream, {"type": "error", "error": f"unknown op {op!r}"})
            self.send(CLOSE, stream)

    def health(self, request: dict[str, Any]) -> dict[str, Any]:
        sync_clock(request.get("time"))
        body: dict[str, Any] = {
            "hostname": os.uname().nodename,
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


def tidy_fds() -> None:
    """Children inherit fds 0-2 and nothing else, as with subprocess's close_fds=True.

    Every fd Python opens is close-on-exec already; this covers what the agent itself inherited. Fds
    0-2 are kept open (on /dev/null if need be), so a pipe never lands on them.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open("/dev/null", os.O_RDWR)  # takes the lowest free number: fd
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                continue  # the listing's own fd, closed by now


def main() -> None:
    tidy_fds()
    if os.geteuid() == 0 and os.getgroups():
        os.setgroups([])  # what every child gets anyway (extra_groups=[]); lets spawn take the posix_spawn path
    loop = Loop()
    fd = open_channel()
    agent = Agent(loop)
    agent.link = SerialLink(loop, fd, agent.on_frames, agent.reset)
    agent.send_ready()
    agent.link.start()
    loop.run()
