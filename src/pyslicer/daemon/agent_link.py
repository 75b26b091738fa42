"""The daemon's end of a guest agent's channel: one connection, many streams."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyslicer.errors import AgentError, InvalidArgument
from pyslicer.protocol import (
    INITIAL_WINDOW,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    Channel,
    Frame,
    FrameDecoder,
    FrameType,
    ProtocolError,
    adjust_payload,
    clock_payload,
    clock_time,
    decode_json,
    encode,
    encode_json,
    window_increment,
    window_payload,
)

if TYPE_CHECKING:
    from pyslicer.protocol import Hello

log = logging.getLogger(__name__)

# Stream ids are unique for the daemon's lifetime, so a late frame for a stream of an earlier
# connection can never land on a new stream.
_stream_ids = itertools.count(1)
MAX_QUEUED_EVENTS = 1024
# How often the host's wall clock goes to the agent (besides right after each READY). A TCG guest whose kernel
# finds its vCPUs' TSCs "unsynchronized" falls back to a jiffies clock that loses ~7 ms/s when idle (measured;
# far more when the host is busy): every 5 s keeps an idle one within about 35 ms.
CLOCK_INTERVAL = 5.0
# The first protocol version whose agents answer CLOCK with TIME and take ADJUST.
CLOCK_VERSION = 3
# An agent's clock found ahead of the host's by more than this is stepped back by the host (ADJUST).
MAX_AHEAD_NS = 1_000_000
# A CLOCK answered later than this may have been read late (a busy host left the guest's vCPU unscheduled), and a
# late CLOCK steps a guest that was behind to a time already past: the host sends another, up to
# MAX_CLOCK_RETRIES times in a row, and counts the link ready only once one came back in time (or retries ran out).
PROMPT_CLOCK_NS = 50_000_000  # a booting guest answers in 10-30 ms under TCG (measured): no retry then
MAX_CLOCK_RETRIES = 3


@dataclass(frozen=True, slots=True)
class Message:
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Output:
    channel: Channel
    data: bytes


@dataclass(frozen=True, slots=True)
class OutputEnd:
    channel: Channel


StreamEvent = Message | Output | OutputEnd


class AgentStream:
    """One request to the agent. Iterate it for events; call ``consumed`` as output is delivered."""

    def __init__(self, link: AgentLink, stream_id: int) -> None:
        self._link = link
        self.id = stream_id
        self._events: asyncio.Queue[StreamEvent | AgentError | None] = asyncio.Queue()
        self._send_credit = INITIAL_WINDOW
        self._receive_budget = INITIAL_WINDOW
        self._credit_changed = asyncio.Event()
        self.closed = False

    # -- called by the link --------------------------------------------------------------------
    def _deliver(self, event: StreamEvent | AgentError | None) -> None:
        if event is None or isinstance(event, AgentError):
            self.closed = True
            self._credit_changed.set()
        self._events.put_nowait(event)

    def _receive(self, event: Message | Output | OutputEnd) -> None:
        """Queue what the agent sent, holding it to the window we granted: a guest that ignores flow
        control (or floods events) is breaking the protocol, not growing the daemon's memory."""
        if isinstance(event, Output):
            self._receive_budget -= len(event.data)
            if self._receive_budget < 0:
                raise ProtocolError(f"stream {self.id}: the agent sent more than the window allows")
        elif self._events.qsize() > MAX_QUEUED_EVENTS:
            raise ProtocolError(f"stream {self.id}: the agent sent too many events")
        self._deliver(event)

    def _grant(self, increment: int) -> None:
        self._send_credit += increment
        self._credit_changed.set()

    # -- used by callers -----------------------------------------------------------------------
    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        while True:
            event = await self._events.get()
            if event is None:
                return
            if isinstance(event, AgentError):
                raise event
            yield event

    def consumed(self, size: int) -> None:
        """``size`` bytes of output went on: the agent may send that much more."""
        if size and not self.closed:
            self._receive_budget += size
            self._link.send(encode(FrameType.WINDOW, self.id, window_payload(size)))

    async def write(self, data: bytes) -> None:
        """Send ``data`` on stdin as the agent's credit allows; returns early (dropping the rest) once the
        stream has ended. Raises nothing."""
        view = memoryview(data)
        while view:
            # Wait for credit for a whole frame (or for all that is left), not for any credit at all: the agent
            # returns credit chunk by chunk as it writes, so sending whatever trickled back splits the frames
            # ever smaller (silly window syndrome; measured: 0.3-6 KiB frames, 3-6 MiB/s into a guest).
            wanted = min(len(view), MAX_PAYLOAD)
            while self._send_credit < wanted and not self.closed:
                self._credit_changed.clear()
                await self._credit_changed.wait()
            if self.closed:
                return
            size = min(len(view), self._send_credit, MAX_PAYLOAD)
            self._send_credit -= size
            self._link.send(encode(FrameType.DATA, self.id, bytes(view[:size]), Channel.STDIN))
            view = view[size:]
            await self._link.drain()

    def send_message(self, body: Mapping[str, Any]) -> None:
        """A MESSAGE to the agent on this stream (a shell's resize). Raises InvalidArgument for a body that
        does not fit in one frame."""
        if not self.closed:
            try:
                self._link.send(encode_json(FrameType.MESSAGE, self.id, body))
            except ValueError:
                raise InvalidArgument("the message is too large for the agent", code="request_too_large") from None

    def close_input(self) -> None:
        """No more stdin."""
        if not self.closed:
            self._link.send(encode(FrameType.EOF, self.id, flags=Channel.STDIN))

    def cancel(self) -> None:
        """Stop the stream; the agent kills whatever it runs for it."""
        if not self.closed:
            self._link.send(encode(FrameType.CLOSE, self.id))
            self._link._forget(self.id)
            self._deliver(None)


class AgentLink:
    """Connects to the unix socket QEMU serves for the guest's virtio-serial port, and keeps
    reconnecting until closed. ``ready`` is set while an agent has said READY on this connection.

    The link also keeps the guest's clock: it sends the host's time (a CLOCK frame; the agent steps forward
    when behind it) on each READY and again every ``clock_interval`` seconds while connected. The agent
    answers each with its own time (TIME); one that arrives ahead of the host's clock is ahead by at least
    that much, and the link steps it back by that much (ADJUST). ``ready`` is set once the first answer is
    in, so every request opened afterwards reaches an agent whose clock is the host's.
    """

    clock_interval = CLOCK_INTERVAL

    def __init__(self, socket_path: Path, name: str, on_ready: Callable[[], None] | None = None) -> None:
        self.socket_path = socket_path
        self.name = name
        self._on_ready = on_ready
        self.ready = asyncio.Event()
        self.agent_info: dict[str, Any] = {}
        self._streams: dict[int, AgentStream] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._clocks_sent: collections.deque[int] = collections.deque()  # when each unanswered CLOCK left
        self._clock_retries = 0
        self._adjusted_at = 0  # when the last ADJUST left
        self._clock_held = False  # the guest is paused: CLOCKs would only queue up

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"agent-link-{self.name}")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._drop_connection("the VM is shutting down")

    async def wait_ready(self, timeout: float) -> None:
        """Raises AgentError when no agent says READY within ``timeout``."""
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            raise AgentError(f"agent on {self.name} did not answer within {timeout:g}s") from None

    # -- requests ------------------------------------------------------------------------------
    def open(self, request: Mapping[str, Any]) -> AgentStream:
        """Start a stream for ``request`` (a ``pyslicer.protocol.Request``: ``{"op": ...}``).

        Raises AgentError when no agent is connected, InvalidArgument when the request does not fit in
        one frame."""
        if self._writer is None or not self.ready.is_set():
            raise AgentError(f"agent on {self.name} is not connected")
        stream_id = next(_stream_ids)
        try:
            frame = encode_json(FrameType.OPEN, stream_id, {**request, "window": INITIAL_WINDOW})
        except ValueError:
            raise InvalidArgument(
                f"the request is too large for the agent (at most {MAX_PAYLOAD // 1024} KiB of command, "
                "arguments and environment)",
                code="request_too_large",
            ) from None
        stream = AgentStream(self, stream_id)
        self._streams[stream.id] = stream
        self.send(frame)
        return stream

    async def call(self, request: Mapping[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """A request answered by one message (``health``, ``userdata``); raises AgentError when the agent
        does not answer within ``timeout`` or goes away."""
        stream = self.open(request)
        try:
            async with asyncio.timeout(timeout):
                async for event in stream:
                    if isinstance(event, Message):
                        return event.body
        except TimeoutError:
            raise AgentError(f"agent on {self.name} did not answer {request.get('op')!r}") from None
        finally:
            stream.cancel()
        raise AgentError(f"agent on {self.name} ended {request.get('op')!r} without an answer")

    # -- plumbing ------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    async def drain(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(ConnectionError):
                await self._writer.drain()

    def _forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    async def _run(self) -> None:
        while not self._closed:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(0.01)
                continue
            self._writer = writer
            hello: Hello = {"version": PROTOCOL_VERSION, "time": time.time()}
            self.send(encode_json(FrameType.HELLO, 0, hello))
            clock = asyncio.get_running_loop().create_task(self._keep_clock(), name=f"agent-clock-{self.name}")
            try:
                await self._read(reader)
            except ProtocolError as exc:
                log.warning("%s: agent broke the protocol: %s", self.name, exc)
            except ConnectionError as exc:  # QEMU closing the socket: the VM stopped or is stopping
                log.info("%s: agent channel closed: %s", self.name, exc)
            finally:
                clock.cancel()
            self._drop_connection("the agent channel closed")
            writer.close()
            await asyncio.sleep(0.05)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder()
        while data := await reader.read(256 * 1024):
            for frame in decoder.feed(data):
                self._dispatch(frame)

    def hold_clock(self) -> None:
        """Send no CLOCK until ``release_clock`` (the guest is paused and cannot answer)."""
        self._clock_held = True

    def release_clock(self) -> None:
        """Send CLOCKs again, the first at once: the guest's clock stood still while it was held."""
        self._clock_held = False
        if self.ready.is_set() and self._keeps_time():
            self._send_clock()

    async def _keep_clock(self) -> None:
        while True:
            await asyncio.sleep(self.clock_interval)
            if self.ready.is_set() and self._keeps_time() and not self._clock_held:
                self._send_clock()

    def _keeps_time(self) -> bool:
        version = self.agent_info.get("version")
        return isinstance(version, int) and version >= CLOCK_VERSION

    def _send_clock(self) -> None:
        """The host's time now, for the agent to set its clock by; it answers with TIME."""
        now = time.time_ns()
        self._clocks_sent.append(now)
        self.send(encode(FrameType.CLOCK, 0, clock_payload(now)))

    def _set_ready(self) -> None:
        if not self.ready.is_set():
            self.ready.set()
            if self._on_ready is not None:
                self._on_ready()

    def _dispatch(self, frame: Frame) -> None:
        if frame.type == FrameType.READY:
            info = decode_json(frame)
            if self.agent_info.get("instance") not in (None, info.get("instance")):
                self._fail_streams("the agent restarted")
                self.ready.clear()  # a new agent: ready (and on_ready) again once its clock is set
            self.agent_info = info
            if self._keeps_time():
                self._send_clock()  # ready once it is answered
            else:
                self._set_ready()
            return
        if frame.type == FrameType.TIME:
            arrived = time.time_ns()
            if not self._clocks_sent:
                if not self.agent_info:
                    # No READY on this connection yet: the answer to a CLOCK of an earlier connection, still in
                    # the port when the guest was saved (a restored guest sends it on).
                    return
                raise ProtocolError("TIME frame without a CLOCK")
            sent = self._clocks_sent.popleft()
            # The agent read its clock before we got the frame: it is ahead by at least this much.
            ahead = clock_time(frame) - arrived
            # A TIME answering a CLOCK sent before our last ADJUST was read before that ADJUST was applied: it
            # shows the same lead again (two READYs, two CLOCKs), and stepping back twice left guests behind.
            if ahead > MAX_AHEAD_NS and sent > self._adjusted_at:
                self.send(encode(FrameType.ADJUST, 0, adjust_payload(-ahead)))
                self._adjusted_at = time.time_ns()
            if arrived - sent > PROMPT_CLOCK_NS and self._clock_retries < MAX_CLOCK_RETRIES:
                if not self._clocks_sent:  # (else the next answer may be prompt)
                    self._clock_retries += 1
                    self._send_clock()
                return
            self._clock_retries = 0
            self._set_ready()
            return
        stream = self._streams.get(frame.stream)
        if stream is None:
            return
        frame_type = frame.type
        if frame_type == FrameType.MESSAGE:
            stream._receive(Message(decode_json(frame)))
        elif frame_type == FrameType.DATA:
            stream._receive(Output(Channel(frame.flags), frame.payload))
        elif frame_type == FrameType.EOF:
            stream._receive(OutputEnd(Channel(frame.flags)))
        elif frame_type == FrameType.WINDOW:
            stream._grant(window_increment(frame))
        elif frame_type == FrameType.CLOSE:
            del self._streams[frame.stream]
            stream._deliver(None)
        else:
            raise ProtocolError(f"unexpected {frame.name} frame from the agent")

    def _fail_streams(self, reason: str) -> None:
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream._deliver(AgentError(f"agent on {self.name}: {reason}"))

    def _drop_connection(self, reason: str) -> None:
        self.ready.clear()
        self._clocks_sent.clear()
        self._clock_retries = 0
        self._adjusted_at = 0
        self._writer = None
        self.agent_info = {}
        self._fail_streams(reason)
