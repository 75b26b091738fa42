"""Framing for the one byte stream between the daemon and a guest's agent.

Every frame is a 10-byte header (type, flags, stream id, payload length; network order) and a payload.
Many streams (execs, health checks, copies) share the byte stream; each stream has a credit window per
direction, so one slow reader never stalls the others and nothing buffers without bound.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 1
HEADER = struct.Struct("!BBII")
MAX_PAYLOAD = 64 * 1024
INITIAL_WINDOW = 256 * 1024
_WINDOW = struct.Struct("!I")


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame sequence."""


class FrameType(enum.IntEnum):
    HELLO = 1  # host -> agent, stream 0: a (new) host connection; the agent drops every stream
    READY = 2  # agent -> host, stream 0: agent identity; also sent unsolicited when the agent starts
    OPEN = 3  # host -> agent: start a stream; JSON request {"op": ...}
    MESSAGE = 4  # either way: a JSON event on a stream
    DATA = 5  # either way: bytes on a channel (flags)
    EOF = 6  # either way: no more bytes on a channel (flags)
    WINDOW = 7  # either way: the receiver consumed bytes; payload is a uint32 credit increment
    CLOSE = 8  # agent -> host: stream done; host -> agent: cancel the stream (kill what it runs)


class Channel(enum.IntEnum):
    STDIN = 0
    STDOUT = 1
    STDERR = 2


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    stream: int
    payload: bytes = b""
    flags: int = 0


def encode(frame_type: FrameType, stream: int, payload: bytes = b"", flags: int = 0) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(frame_type, flags, stream, len(payload)) + payload


def encode_json(frame_type: FrameType, stream: int, body: dict[str, Any]) -> bytes:
    return encode(frame_type, stream, json.dumps(body, separators=(",", ":")).encode())


def decode_json(frame: Frame) -> dict[str, Any]:
    try:
        body = json.loads(frame.payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"{frame.type.name} frame carries invalid JSON") from exc
    if not isinstance(body, dict):
        raise ProtocolError(f"{frame.type.name} frame must carry a JSON object")
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
            type_byte, flags, stream, length = HEADER.unpack_from(self._buffer, offset)
            if length > MAX_PAYLOAD:
                raise ProtocolError(f"frame payload of {length} bytes exceeds {MAX_PAYLOAD}")
            try:
                frame_type = FrameType(type_byte)
            except ValueError:
                raise ProtocolError(f"unknown frame type {type_byte}") from None
            if frame_type in (FrameType.DATA, FrameType.EOF) and flags not in Channel._value2member_map_:
                raise ProtocolError(f"unknown channel {flags}")
            end = offset + HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append(Frame(frame_type, stream, bytes(self._buffer[offset + HEADER.size : end]), flags))
            offset = end
        del self._buffer[:offset]
        return frames
