"""Agent main loop: one link, many streams.

Everything runs on one thread in ``Loop``; the imports are kept to what the interpreter mostly has
loaded already (no asyncio, logging, subprocess, socket, json, enum, ...), because under TCG every
import costs and the host waits for READY before a VM counts as started. What only requests need
(``execs``, ``spawn``, ``userdata``) is not imported before READY either: the agent imports it once the host
has sent its time, while the host is busy answering whoever waited for READY, or else at the first request
that needs it.
"""

from __future__ import annotations

import os
import sys
import time

from pyslicer import __version__
from pyslicer.agent.link import SerialLink, open_channel
from pyslicer.agent.loop import Loop
from pyslicer.protocol import (
    PROTOCOL_VERSION,
    Event,
    Frame,
    FrameType,
    Op,
    ProtocolError,
    adjust_delta,
    clock_payload,
    clock_time,
    decode_json,
    encode,
    encode_json,
    window_increment,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from pyslicer.agent.session import Session, SessionFactory
    from pyslicer.agent.userdata import Userdata
    from pyslicer.protocol import HealthAnswer, Ready, RequestError, UserdataAnswer

# The ops served by a session of their own (a stream that lives until it is finished or cancelled): the op,
# and the module and class that run it. Imported at the first request that needs it (or by ``preload``).
SESSIONS: dict[str, tuple[str, str]] = {
    Op.EXEC: ("pyslicer.agent.execs", "ExecSession"),
    Op.SECRETS: ("pyslicer.agent.secrets", "SecretsSession"),
    Op.COPY_IN: ("pyslicer.agent.copies", "CopyInSession"),
    Op.COPY_OUT: ("pyslicer.agent.copies", "CopyOutSession"),
    Op.FS_STAT: ("pyslicer.agent.fs", "FsSession"),
    Op.FS_READDIR: ("pyslicer.agent.fs", "FsSession"),
    Op.FS_MKDIR: ("pyslicer.agent.fs", "FsSession"),
    Op.FS_REMOVE: ("pyslicer.agent.fs", "FsSession"),
    Op.FS_WATCH: ("pyslicer.agent.watch", "WatchSession"),
    Op.STATS: ("pyslicer.agent.stats", "StatsSession"),
    Op.SHELL: ("pyslicer.agent.shell", "ShellSession"),
    Op.FORWARD: ("pyslicer.agent.forward", "ForwardSession"),
    Op.IDENTITY: ("pyslicer.agent.identity", "IdentitySession"),
    **{
        op: ("pyslicer.agent.background", "BackgroundSession")
        for op in (Op.BG_START, Op.BG_LIST, Op.BG_INFO, Op.BG_LOGS, Op.BG_KILL, Op.BG_WAIT, Op.BG_DELETE)
    },
}


# -- the clock -----------------------------------------------------------------------------------------
# A guest's clock starts from the (second-resolution) RTC, which may put it ahead or behind by up to a second,
# and under TCG it can drift. The host sends its time in CLOCK frames: when it sees READY (ahead of any
# request, so the first exec already has the host's time) and then every few seconds. A frame can reach us
# late (we were busy, the VM was paused), never early: its time is a lower bound on the host's time now. So
# the clock is stepped forward whenever it is behind that bound by more than BEHIND_NS, and back only when it
# is ahead by more than AHEAD_NS: a late frame never sets the clock back. Each CLOCK is answered by a TIME
# frame with our clock; the host, which knows when that arrived, sends an ADJUST (a relative step, which no
# delay can spoil) when our clock is ahead of its own.
BEHIND_NS = 1_000_000
AHEAD_NS = 1_000_000_000


def set_realtime(time_ns: int) -> None:
    time.clock_settime_ns(time.CLOCK_REALTIME, time_ns)


class Clock:
    """Steps the clock with ``set_time`` (None: leave it alone, as on a test host that is not ours)."""

    def __init__(
        self,
        set_time: Callable[[int], None] | None = set_realtime,
        read_time: Callable[[], int] = time.time_ns,
    ) -> None:
        self._set_time = set_time
        self._read_time = read_time
        self.steps = 0

    def now(self) -> int:
        return self._read_time()

    def follow(self, host_ns: int) -> bool:
        """Take the host's time (when it was sent) if ours is behind it, or far ahead; True when the clock
        was set."""
        if self._set_time is None or -BEHIND_NS <= self._read_time() - host_ns <= AHEAD_NS:
            return False
        return self._set(host_ns)

    def adjust(self, delta_ns: int) -> bool:
        """Step the clock by ``delta_ns`` (the host's ADJUST); True when it was set."""
        if self._set_time is None or not delta_ns:
            return False
        return self._set(self._read_time() + delta_ns)

    def _set(self, time_ns: int) -> bool:
        assert self._set_time is not None
        try:
            self._set_time(time_ns)
        except OSError as exc:  # not allowed (not root): keep the clock we have, and stop trying
            print(f"slicer-agent: cannot set the clock: {exc}", file=sys.stderr)
            self._set_time = None
            return False
        self.steps += 1
        return True


class Agent:
    def __init__(self, loop: Loop, clock: Clock | None = None) -> None:
        self.loop = loop
        self.clock = clock if clock is not None else Clock(None)
        self.started = time.monotonic()
        self.instance = os.urandom(8).hex()
        self._userdata: Userdata | None = None
        self.sessions: dict[int, Session] = {}
        self._factories: dict[str, SessionFactory] = {}
        self.link: SerialLink | None = None
        self._preloading = False

    @property
    def userdata(self) -> Userdata:
        if self._userdata is None:
            from pyslicer.agent.userdata import Userdata

            self._userdata = Userdata(self.loop)
        return self._userdata

    # -- sending -------------------------------------------------------------------------------
    def send(self, data: bytes | memoryview) -> None:
        """Queue encoded frames for the host (copied if kept: ``data`` may be reused once this returns)."""
        assert self.link is not None
        self.link.send(data)

    def finish(self, session: Session) -> None:
        if self.sessions.get(session.stream) is session:
            del self.sessions[session.stream]
            self.send(encode(FrameType.CLOSE, session.stream))

    def answer(self, stream: int, body: HealthAnswer | UserdataAnswer | RequestError) -> None:
        """A request answered by one message: the message, then CLOSE."""
        self.send(encode_json(FrameType.MESSAGE, stream, body) + encode(FrameType.CLOSE, stream))

    def send_ready(self) -> None:
        ready: Ready = {
            "version": PROTOCOL_VERSION,
            "agent_version": __version__,
            "instance": self.instance,
            "hostname": os.uname().nodename,
        }
        self.send(encode_json(FrameType.READY, 0, ready))

    # -- receiving -----------------------------------------------------------------------------
    def on_frames(self, frames: list[Frame]) -> None:
        for frame in frames:
            try:
                self.dispatch(frame)
            except ProtocolError as exc:
                print(f"slicer-agent: dropping bad frame: {exc}", file=sys.stderr)
                if frame.stream:
                    self.cancel(frame.stream)
                    self.send(encode(FrameType.CLOSE, frame.stream))

    def dispatch(self, frame: Frame) -> None:
        frame_type = frame.type
        if frame_type == FrameType.HELLO:
            # A HELLO may have waited in the port since the host connected, seconds before we started:
            # whatever time it carries is stale. The host sends CLOCK when it sees our READY.
            self.reset()
            self.send_ready()
            return
        if frame_type == FrameType.CLOCK:
            self.clock.follow(clock_time(frame))
            self.send(encode(FrameType.TIME, 0, clock_payload(self.clock.now())))
            if not self._preloading:  # not earlier: it would hold up reading the CLOCK frame, and so age it
                self._preloading = True
                self.loop.call_later(0, preload)
            return
        if frame_type == FrameType.ADJUST:
            self.clock.adjust(adjust_delta(frame))
            return
        if frame_type == FrameType.OPEN:
            self.open(frame.stream, decode_json(frame))
            return
        session = self.sessions.get(frame.stream)
        if session is None:
            return  # a stream that already ended; the host learns that from our CLOSE
        if frame_type == FrameType.DATA:
            session.on_data(frame.flags, frame.payload)
        elif frame_type == FrameType.EOF:
            session.on_eof(frame.flags)
        elif frame_type == FrameType.WINDOW:
            session.on_window(window_increment(frame))
        elif frame_type == FrameType.CLOSE:
            self.cancel(frame.stream)
        elif frame_type == FrameType.MESSAGE and hasattr(session, "on_message"):  # a shell's resize
            session.on_message(decode_json(frame))
        else:
            raise ProtocolError(f"unexpected {frame.name} frame from the host")

    def open(self, stream: int, request: dict[str, Any]) -> None:
        if stream == 0 or stream in self.sessions:
            raise ProtocolError(f"stream {stream} cannot be opened")
        op = request.get("op")
        if op == Op.HEALTH:
            self.answer(stream, self.health())
        elif op == Op.USERDATA:
            script = request.get("script")
            self.answer(stream, {"started": self.userdata.start(script if isinstance(script, str) else "")})
        elif isinstance(op, str) and op in SESSIONS:
            session = self._factory(op)(self.loop, stream, request, self.send, self.finish)
            self.sessions[stream] = session
            session.start()
        else:
            self.answer(stream, {"type": Event.ERROR, "error": f"unknown op {op!r}"})

    def _factory(self, op: str) -> SessionFactory:
        factory = self._factories.get(op)
        if factory is None:
            module, name = SESSIONS[op]
            factory = self._factories[op] = getattr(__import__(module, fromlist=[name]), name)
        return factory

    def health(self) -> HealthAnswer:
        body: HealthAnswer = {
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


def preload() -> None:
    """Import what requests need (execs, userdata, and through them spawn) ahead of the first one."""
    __import__("pyslicer.agent.execs")
    __import__("pyslicer.agent.userdata")


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
    # Run over an inherited fd, the agent is on a test host whose clock is not ours to set.
    clock = Clock(None) if "SLICER_AGENT_FD" in os.environ else Clock()
    agent = Agent(loop, clock)
    agent.link = SerialLink(loop, fd, agent.on_frames, agent.reset)
    agent.send_ready()
    agent.link.start()
    loop.run()
