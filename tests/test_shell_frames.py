"""The shell framing codec against well-formed and hostile messages."""

from __future__ import annotations

import os
import struct

import pytest

from pyslicer import shell_frames
from pyslicer.shell_frames import FrameError


def test_round_trips() -> None:
    assert shell_frames.decode(shell_frames.data(b"ls\r")) == shell_frames.Frame(shell_frames.DATA, b"ls\r")
    size = shell_frames.decode(shell_frames.window_size(132, 40))
    assert size.type == shell_frames.WINDOW_SIZE and shell_frames.size_of(size) == (132, 40)
    close = shell_frames.decode(shell_frames.session_close(-9))
    assert shell_frames.exit_code_of(close) == -9
    assert shell_frames.exit_code_of(shell_frames.Frame(shell_frames.SESSION_CLOSE)) is None  # Slicer's carry none
    for kind in (shell_frames.SHUTDOWN, shell_frames.HEARTBEAT):
        assert shell_frames.decode(shell_frames.encode(kind)) == shell_frames.Frame(kind, b"")


def test_the_wire_format_is_slicers() -> None:
    assert shell_frames.window_size(80, 24) == b"\x02\x00\x00\x00\x08\x00\x00\x00\x50\x00\x00\x00\x18"
    assert shell_frames.data(b"a") == b"\x01\x00\x00\x00\x01a"
    assert shell_frames.encode(shell_frames.HEARTBEAT) == b"\x04\x00\x00\x00\x00"


@pytest.mark.parametrize(
    ("message", "complaint"),
    [
        (b"", "header"),
        (b"\x01\x00\x00", "header"),
        (b"\x00\x00\x00\x00\x00", "unknown frame type 0x00"),
        (b"\x06\x00\x00\x00\x00", "unknown frame type 0x06"),
        (b"\x01\x00\x00\x00\x05abc", "says 5 bytes"),
        (b"\x01\x00\x00\x00\x01abc", "says 1 bytes"),
        (b"\x01\xff\xff\xff\xff", "limit"),
        (b"\x02\x00\x00\x00\x04\x00\x00\x00\x50", "holds 8 bytes"),
        (b"\x02\x00\x00\x00\x09" + bytes(9), "holds 8 bytes"),
        (shell_frames.encode(shell_frames.WINDOW_SIZE, struct.pack(">II", 0x10000, 24)), "out of range"),
        (shell_frames.encode(shell_frames.WINDOW_SIZE, struct.pack(">II", 80, 0xFFFFFFFF)), "out of range"),
    ],
)
def test_hostile_messages_are_frame_errors(message: bytes, complaint: str) -> None:
    with pytest.raises(FrameError, match=complaint):
        shell_frames.decode(message)


def test_random_messages_decode_or_raise_frame_error_only() -> None:
    for _ in range(5000):
        message = os.urandom(os.urandom(1)[0] % 24)
        if message and os.urandom(1)[0] % 2:
            message = bytes([message[0] % 7]) + message[1:]  # often a real type
        try:
            frame = shell_frames.decode(message)
        except FrameError:
            continue
        assert shell_frames.encode(frame.type, frame.payload) == message
