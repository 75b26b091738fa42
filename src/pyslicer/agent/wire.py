"""The agent's copy of the channel framing (``pyslicer.protocol``), byte for byte, minus its imports.

``pyslicer.protocol`` pulls in enum, dataclasses (and so inspect) and json (and so re, which compiles its
patterns in pure Python); under TCG that is a few hundred milliseconds before the agent can say READY.
Here frame types and channels are plain ints, and JSON goes through the C accelerator ``_json`` directly,
with the same settings ``json.dumps(..., separators=(",", ":"))`` and ``json.loads`` use.
tests/test_agent_link.py checks that both sides agree.
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

PROTOCOL_VERSION = 1
HEADER = struct.Struct("!BBII")
MAX_PAYLOAD = 64 * 1024
INITIAL_WINDOW = 256 * 1024
_WINDOW = struct.Struct("!I")

# frame types (pyslicer.protocol.FrameType)
HELLO = 1
READY = 2
OPEN = 3
MESSAGE = 4
DATA = 5
EOF = 6
WINDOW = 7
CLOSE = 8
TYPE_NAMES = {1: "HELLO", 2: "READY", 3: "OPEN", 4: "MESSAGE", 5: "DATA", 6: "EOF", 7: "WINDOW", 8: "CLOSE"}

# channels (pyslicer.protocol.Channel)
STDIN = 0
STDOUT = 1
STDERR = 2
CHANNELS = (STDIN, STDOUT, STDERR)


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame sequence."""


class Frame:
    __slots__ = ("flags", "payload", "stream", "type")

    def __init__(self, frame_type: int, stream: int, payload: bytes = b"", flags: int = 0) -> None:
        self.type = frame_type
        self.stream = stream
        self.payload = payload
        self.flags = flags

    @property
    def name(self) -> str:
        return TYPE_NAMES[self.type]


def encode(frame_type: int, stream: int, payload: bytes = b"", flags: int = 0) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(frame_type, flags, stream, len(payload)) + payload


def encode_json(frame_type: int, stream: int, body: dict[str, Any]) -> bytes:
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


class FrameDecoder:
    """Incremental decoder: feed it whatever arrived, get back every complete frame."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        offset = 0
        while len(self._buffer) - offset >= HEADER.size:
            frame_type, flags, stream, length = HEADER.unpack_from(self._buffer, offset)
            if length > MAX_PAYLOAD:
                raise ProtocolError(f"frame payload of {length} bytes exceeds {MAX_PAYLOAD}")
            if frame_type not in TYPE_NAMES:
                raise ProtocolError(f"unknown frame type {frame_type}")
            if frame_type in (DATA, EOF) and flags not in CHANNELS:
                raise ProtocolError(f"unknown channel {flags}")
            end = offset + HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append(Frame(frame_type, stream, bytes(self._buffer[offset + HEADER.size : end]), flags))
            offset = end
        del self._buffer[:offset]
        return frames


# -- JSON --------------------------------------------------------------------------------------------


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


def _json_functions() -> tuple[Callable[[dict[str, Any]], str], Callable[[bytes], object]]:
    try:
        import _json

        encoder = _json.make_encoder(
            None, _not_serializable, _json.encode_basestring_ascii, None, ":", ",", False, False, True
        )
        scanner = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]  # the context is duck-typed
    except (ImportError, AttributeError, TypeError):  # a Python without the accelerator: the real thing
        import json

        def slow_dumps(body: dict[str, Any]) -> str:
            return json.dumps(body, separators=(",", ":"))

        return slow_dumps, json.loads

    def fast_dumps(body: dict[str, Any]) -> str:
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
