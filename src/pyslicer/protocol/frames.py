"""Framing for the one byte stream between the daemon and a guest's agent.

Every frame is a 10-byte header (type, flags, stream id, payload length; network order) and a payload.
Many streams (execs, health checks, copies) share the byte stream; each stream has a credit window per
direction, so one slow reader never stalls the others and nothing buffers without bound.

Both ends import this module, the agent inside a TCG guest where every import costs: it uses ``struct``
and the C half of ``json`` and nothing else, so frame types and channels are ints, not enums, and nothing
from ``typing`` runs.
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, ClassVar

PROTOCOL_VERSION = 3
HEADER = struct.Struct("!BBII")
MAX_PAYLOAD = 64 * 1024
INITIAL_WINDOW = 256 * 1024
_WINDOW = struct.Struct("!I")
_CLOCK = struct.Struct("!Q")
_ADJUST = struct.Struct("!q")


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame sequence."""


class FrameType:
    """Frame types: plain ints (``frame.type == FrameType.OPEN``), with their names in ``NAMES``."""

    HELLO = 1  # host -> agent, stream 0: a (new) host connection; the agent drops every stream
    READY = 2  # agent -> host, stream 0: agent identity; also sent unsolicited when the agent starts
    OPEN = 3  # host -> agent: start a stream; JSON request {"op": ...}
    MESSAGE = 4  # either way: a JSON event on a stream
    DATA = 5  # either way: bytes on a channel (flags)
    EOF = 6  # either way: no more bytes on a channel (flags)
    WINDOW = 7  # either way: the receiver consumed bytes; payload is a uint32 credit increment
    CLOSE = 8  # agent -> host: stream done; host -> agent: cancel the stream (kill what it runs)
    CLOCK = 9  # host -> agent, stream 0: the host's wall clock now, uint64 ns since the epoch (version 2)
    TIME = 10  # agent -> host, stream 0: the answer to a CLOCK, the agent's clock then, uint64 ns (version 3)
    ADJUST = 11  # host -> agent, stream 0: add this to your clock, int64 ns (version 3)

    NAMES: ClassVar[dict[int, str]] = {
        1: "HELLO",
        2: "READY",
        3: "OPEN",
        4: "MESSAGE",
        5: "DATA",
        6: "EOF",
        7: "WINDOW",
        8: "CLOSE",
        9: "CLOCK",
        10: "TIME",
        11: "ADJUST",
    }


class Channel(int):
    """The byte channels of a stream (the flags of DATA and EOF).

    An ``int`` subclass rather than plain ints, so that the host can annotate with it
    (``Output.channel: Channel``); the agent uses the constants as the ints they are. As with an enum,
    ``Channel(n)`` is one of the three constants (ValueError for an unknown channel).
    """

    __slots__ = ()

    STDIN: ClassVar[Channel]
    STDOUT: ClassVar[Channel]
    STDERR: ClassVar[Channel]
    NAMES: ClassVar[dict[int, str]] = {0: "STDIN", 1: "STDOUT", 2: "STDERR"}
    _MEMBERS: ClassVar[dict[int, Channel]] = {}

    def __new__(cls, value: int) -> Channel:
        try:
            return cls._MEMBERS[value]
        except (KeyError, TypeError):
            raise ValueError(f"{value!r} is not a valid Channel") from None

    @property
    def name(self) -> str:
        return self.NAMES[self]

    def __repr__(self) -> str:
        return f"Channel.{self.name}"

    __str__ = int.__repr__


Channel._MEMBERS.update((value, int.__new__(Channel, value)) for value in Channel.NAMES)
Channel.STDIN, Channel.STDOUT, Channel.STDERR = (Channel._MEMBERS[value] for value in (0, 1, 2))


class Frame:
    __slots__ = ("flags", "payload", "stream", "type")

    def __init__(self, frame_type: int, stream: int, payload: bytes = b"", flags: int = 0) -> None:
        self.type = frame_type
        self.stream = stream
        self.payload = payload
        self.flags = flags

    @property
    def name(self) -> str:
        """The frame type's name (``OPEN``), or its number when unknown."""
        return FrameType.NAMES.get(self.type) or str(self.type)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (self.type, self.stream, self.payload, self.flags) == (
            other.type,
            other.stream,
            other.payload,
            other.flags,
        )

    def __hash__(self) -> int:
        return hash((self.type, self.stream, self.payload, self.flags))

    def __repr__(self) -> str:
        size = len(self.payload)
        return f"Frame({self.name}, stream={self.stream}, flags={self.flags}, payload=<{size} bytes>)"


def encode(frame_type: int, stream: int, payload: bytes = b"", flags: int = 0) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(frame_type, flags, stream, len(payload)) + payload


def encode_json(frame_type: int, stream: int, body: Mapping[str, Any]) -> bytes:
    """``json.dumps(body, separators=(",", ":"))`` in a frame; ValueError when it is too large."""
    return encode(frame_type, stream, dumps(body).encode())


def decode_json(frame: Frame) -> dict[str, Any]:
    try:
        body = loads(frame.payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"{frame.name} frame carries invalid JSON") from exc
    if not isinstance(body, dict):
        raise ProtocolError(f"{frame.name} frame must carry a JSON object")
    return body


def window_payload(increment: int) -> bytes:
    return _WINDOW.pack(increment)


def window_increment(frame: Frame) -> int:
    if len(frame.payload) != _WINDOW.size:
        raise ProtocolError("WINDOW frame must carry 4 bytes")
    (increment,) = _WINDOW.unpack(frame.payload)
    if increment == 0:
        raise ProtocolError("WINDOW increment must be positive")
    return int(increment)


def clock_payload(time_ns: int) -> bytes:
    """A CLOCK or TIME frame's payload: wall-clock nanoseconds since the epoch."""
    return _CLOCK.pack(time_ns)


def clock_time(frame: Frame) -> int:
    """The nanoseconds since the epoch a CLOCK or TIME frame carries."""
    if len(frame.payload) != _CLOCK.size:
        raise ProtocolError(f"{frame.name} frame must carry 8 bytes")
    (time_ns,) = _CLOCK.unpack(frame.payload)
    return int(time_ns)


def adjust_payload(delta_ns: int) -> bytes:
    """An ADJUST frame's payload: signed nanoseconds to add to the clock."""
    return _ADJUST.pack(delta_ns)


def adjust_delta(frame: Frame) -> int:
    if len(frame.payload) != _ADJUST.size:
        raise ProtocolError("ADJUST frame must carry 8 bytes")
    (delta_ns,) = _ADJUST.unpack(frame.payload)
    return int(delta_ns)


_CHANNEL_FRAMES = (FrameType.DATA, FrameType.EOF)


class FrameDecoder:
    """Incremental decoder: feed it whatever arrived, get back every complete frame."""

    def __init__(self) -> None:
        self._buffer = bytearray()  # the start of a frame that has not all arrived yet, and nothing more

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        # Frames are cut straight out of ``data``; only a frame split across reads is buffered, completed with
        # just the bytes it lacks. So each payload byte is copied once here, not three times (into a buffer, out
        # of it, and the buffer's shift): under TCG, where a copy is slow, that was much of a transfer's cost.
        frames: list[Frame] = []
        with memoryview(data) as view:
            offset = self._complete(view, frames) if self._buffer else 0
            if not self._buffer:
                offset = self._cut(view, offset, frames)
                if offset < len(view):
                    self._buffer += view[offset:]
        return frames

    def _complete(self, view: memoryview, frames: list[Frame]) -> int:
        """Add to the buffered frame what it lacks from ``view``; once whole, it joins ``frames`` and the buffer
        empties. Returns how much of ``view`` was taken."""
        taken = 0
        while True:
            have = len(self._buffer)
            missing = (HEADER.size if have < HEADER.size else HEADER.size + self._header(self._buffer, 0)[3]) - have
            if not missing:
                with memoryview(self._buffer) as whole:
                    self._cut(whole, 0, frames)
                self._buffer.clear()
                return taken
            piece = view[taken : taken + missing]
            if not piece:
                return taken
            self._buffer += piece
            taken += len(piece)

    @staticmethod
    def _header(source: bytes | bytearray | memoryview, offset: int) -> tuple[int, int, int, int]:
        """The (type, flags, stream, payload length) of the header at ``offset``. Raises ProtocolError for a header
        no peer may send."""
        frame_type, flags, stream, length = HEADER.unpack_from(source, offset)
        if length > MAX_PAYLOAD:
            raise ProtocolError(f"frame payload of {length} bytes exceeds {MAX_PAYLOAD}")
        if frame_type not in FrameType.NAMES:
            raise ProtocolError(f"unknown frame type {frame_type}")
        if frame_type in _CHANNEL_FRAMES and flags not in Channel.NAMES:
            raise ProtocolError(f"unknown channel {flags}")
        return frame_type, flags, stream, length

    def _cut(self, view: memoryview, offset: int, frames: list[Frame]) -> int:
        """Append every whole frame from ``offset`` on; returns where the first incomplete one starts."""
        size = len(view)
        while size - offset >= HEADER.size:
            frame_type, flags, stream, length = self._header(view, offset)
            end = offset + HEADER.size + length
            if size < end:
                break
            frames.append(Frame(frame_type, stream, bytes(view[offset + HEADER.size : end]), flags))
            offset = end
        return offset


# -- JSON ------------------------------------------------------------------------------------------------
# ``import json`` pulls in ``json.decoder``, which imports ``re`` and compiles its patterns in pure Python:
# under TCG that alone is a good part of the agent's start-up. ``dumps`` and ``loads`` call the C accelerator
# ``_json`` directly and give what ``json.dumps(body, separators=(",", ":"))`` and ``json.loads`` give
# (tests/test_protocol.py checks both against json); whatever the fast path does not cover, errors included,
# goes to ``json`` itself.


def _not_serializable(obj: object) -> object:
    raise TypeError(f"Object of type {obj.__class__.__name__} is not JSON serializable")


class _ScanContext:
    """The attributes ``_json.make_scanner`` reads, set as ``json.JSONDecoder()`` sets them."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


def _json_functions() -> tuple[Callable[[Mapping[str, Any]], str], Callable[[bytes], object]]:
    try:
        import _json

        encoder = _json.make_encoder(
            None, _not_serializable, _json.encode_basestring_ascii, None, ":", ",", False, False, True
        )
        scanner = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]  # the context is duck-typed
    except (ImportError, AttributeError, TypeError):  # a Python without the accelerator: the real thing
        import json

        def slow_dumps(body: Mapping[str, Any]) -> str:
            return json.dumps(body, separators=(",", ":"))

        return slow_dumps, json.loads

    def fast_dumps(body: Mapping[str, Any]) -> str:
        return "".join(encoder(body, 0))

    def fast_loads(data: bytes) -> object:
        # What json.loads(data) does for a well-formed UTF-8 object (json.detect_encoding says UTF-8 when the
        # first two bytes are not NUL). Anything else, errors included, takes the long way for the same
        # result or the same exception: the C scanner cannot even raise its errors without json.decoder.
        if data[:1] == b"{" and data[1:2] != b"\0":
            try:
                text = data.decode("utf-8", "surrogatepass")
                value, end = scanner(text, 0)
            except Exception:
                end = -1
            else:
                size = len(text)
                while end < size and text[end] in " \t\n\r":
                    end += 1
                if end == size:
                    return value
        import json

        return json.loads(data)

    return fast_dumps, fast_loads


dumps, loads = _json_functions()
