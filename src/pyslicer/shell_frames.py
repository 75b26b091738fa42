"""Slicer's shell framing over a WebSocket, shared by the API and the client: one frame per binary message,
a 5-byte header (a type byte, a big-endian uint32 payload length), then the payload.

======  ============  =====================================================================
type    name          payload
======  ============  =====================================================================
0x01    data          terminal bytes (keystrokes to the guest, output from it)
0x02    window size   cols, rows: two big-endian uint32 (the client sends one right after connecting)
0x03    shutdown      empty; either side: the session ends, then a normal close
0x04    heartbeat     empty; clients send one about every 30 s
0x05    session close the shell exited; pyslicer puts its exit code here (big-endian int32), which
                      Slicer's clients ignore
======  ============  =====================================================================

``decode`` trusts nothing: a short message, a length that disagrees with the message, an unknown type or a
payload the type cannot have raises ``FrameError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

DATA: Final = 0x01
WINDOW_SIZE: Final = 0x02
SHUTDOWN: Final = 0x03
HEARTBEAT: Final = 0x04
SESSION_CLOSE: Final = 0x05
TYPES: Final = frozenset({DATA, WINDOW_SIZE, SHUTDOWN, HEARTBEAT, SESSION_CLOSE})
HEADER_SIZE: Final = 5
MAX_PAYLOAD: Final = 1024 * 1024
MAX_DIMENSION: Final = 0xFFFF  # a terminal's size is two unsigned shorts in the kernel

_HEADER = struct.Struct(">BI")
_SIZE = struct.Struct(">II")
_EXIT = struct.Struct(">i")


class FrameError(ValueError):
    """A message that is not a well-formed shell frame."""


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    payload: bytes = b""


def encode(frame_type: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(frame_type, len(payload)) + payload


def data(payload: bytes) -> bytes:
    return encode(DATA, payload)


def window_size(cols: int, rows: int) -> bytes:
    return encode(WINDOW_SIZE, _SIZE.pack(cols, rows))


def session_close(exit_code: int) -> bytes:
    return encode(SESSION_CLOSE, _EXIT.pack(max(-(2**31), min(exit_code, 2**31 - 1))))


def decode(message: bytes) -> Frame:
    """One binary message as a frame. Raises FrameError for anything malformed."""
    if len(message) < HEADER_SIZE:
        raise FrameError(f"a frame needs a {HEADER_SIZE}-byte header, got {len(message)} bytes")
    frame_type, length = _HEADER.unpack_from(message)
    if frame_type not in TYPES:
        raise FrameError(f"unknown frame type 0x{frame_type:02x}")
    if length > MAX_PAYLOAD:
        raise FrameError(f"frame payload of {length} bytes is over the {MAX_PAYLOAD} byte limit")
    if length != len(message) - HEADER_SIZE:
        raise FrameError(f"frame header says {length} bytes, the message holds {len(message) - HEADER_SIZE}")
    payload = bytes(message[HEADER_SIZE:])
    if frame_type == WINDOW_SIZE:
        if length != _SIZE.size:
            raise FrameError(f"a window size frame holds {_SIZE.size} bytes, not {length}")
        cols, rows = _SIZE.unpack(payload)
        if cols > MAX_DIMENSION or rows > MAX_DIMENSION:
            raise FrameError(f"window size {cols}x{rows} is out of range (at most {MAX_DIMENSION})")
    return Frame(frame_type, payload)


def size_of(frame: Frame) -> tuple[int, int]:
    """(cols, rows) of a decoded window size frame."""
    cols, rows = _SIZE.unpack(frame.payload)
    return cols, rows


def exit_code_of(frame: Frame) -> int | None:
    """The exit code a session close frame carries, or None (Slicer's carries none)."""
    if len(frame.payload) != _EXIT.size:
        return None
    code: int = _EXIT.unpack(frame.payload)[0]
    return code
