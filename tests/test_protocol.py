"""The channel framing both ends import: round trips, refusals, a fuzzed decoder, its JSON, and its cost."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pyslicer.protocol import (
    HEADER,
    MAX_PAYLOAD,
    Channel,
    Event,
    Frame,
    FrameDecoder,
    FrameType,
    Op,
    ProtocolError,
    clock_payload,
    clock_time,
    decode_json,
    encode,
    encode_json,
    window_increment,
    window_payload,
)
from pyslicer.protocol.frames import dumps, loads

SRC = Path(__file__).resolve().parents[1] / "src"
FRAME_TYPES = sorted(FrameType.NAMES)


def test_round_trip_in_arbitrary_chunks() -> None:
    frames = [
        Frame(FrameType.OPEN, 7, b'{"op":"exec"}'),
        Frame(FrameType.DATA, 7, bytes(range(256)) * 100, Channel.STDOUT),
        Frame(FrameType.EOF, 7, b"", Channel.STDERR),
        Frame(FrameType.WINDOW, 7, window_payload(4096)),
        Frame(FrameType.CLOCK, 0, clock_payload(1_700_000_000_123_456_789)),
        Frame(FrameType.CLOSE, 7),
    ]
    wire = b"".join(encode(f.type, f.stream, f.payload, f.flags) for f in frames)
    rng = random.Random(1)
    decoder = FrameDecoder()
    got: list[Frame] = []
    offset = 0
    while offset < len(wire):
        size = rng.randint(1, 700)
        got += decoder.feed(wire[offset : offset + size])
        offset += size
    assert got == frames
    assert window_increment(got[3]) == 4096
    assert clock_time(got[4]) == 1_700_000_000_123_456_789


def test_random_frames_round_trip() -> None:
    rng = random.Random(3)
    frames = []
    for _ in range(300):
        frame_type = rng.choice(FRAME_TYPES)
        flags = rng.randrange(3) if frame_type in (FrameType.DATA, FrameType.EOF) else rng.randrange(256)
        frames.append(Frame(frame_type, rng.randrange(2**32), os.urandom(rng.randrange(3000)), flags))
    data = b"".join(encode(f.type, f.stream, f.payload, f.flags) for f in frames)
    decoder = FrameDecoder()
    got: list[Frame] = []
    offset = 0
    while offset < len(data):
        step = rng.randint(1, 5000)
        got += decoder.feed(data[offset : offset + step])
        offset += step
    assert got == frames


def test_oversized_payload_is_refused_both_ways() -> None:
    with pytest.raises(ValueError):
        encode(FrameType.DATA, 1, b"x" * (MAX_PAYLOAD + 1))
    header = bytes([FrameType.DATA, 1, 0, 0, 0, 1]) + (MAX_PAYLOAD + 1).to_bytes(4, "big")
    with pytest.raises(ProtocolError, match="exceeds"):
        FrameDecoder().feed(header)


@pytest.mark.parametrize(
    "wire, message",
    [
        (bytes([99, 0, 0, 0, 0, 1, 0, 0, 0, 0]), "unknown frame type 99"),
        (bytes([0, 0, 0, 0, 0, 1, 0, 0, 0, 0]), "unknown frame type 0"),
        (bytes([FrameType.DATA, 9, 0, 0, 0, 1, 0, 0, 0, 0]), "unknown channel 9"),
        (bytes([FrameType.EOF, 3, 0, 0, 0, 1, 0, 0, 0, 0]), "unknown channel 3"),
    ],
)
def test_garbage_is_a_protocol_error(wire: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        FrameDecoder().feed(wire)


def test_json_payloads_must_be_objects() -> None:
    assert decode_json(FrameDecoder().feed(encode_json(FrameType.MESSAGE, 1, {"a": 1}))[0]) == {"a": 1}
    with pytest.raises(ProtocolError, match="MESSAGE frame must carry a JSON object"):
        decode_json(Frame(FrameType.MESSAGE, 1, b"[1]"))
    with pytest.raises(ProtocolError, match="OPEN frame carries invalid JSON"):
        decode_json(Frame(FrameType.OPEN, 1, b"\xff"))
    with pytest.raises(ProtocolError):
        window_increment(Frame(FrameType.WINDOW, 1, b"\0\0\0\0"))
    with pytest.raises(ProtocolError):
        window_increment(Frame(FrameType.WINDOW, 1, b"\0\0\1"))


def test_clock_payload_is_eight_bytes_of_nanoseconds() -> None:
    assert clock_payload(1) == b"\0" * 7 + b"\1"
    assert clock_time(Frame(FrameType.CLOCK, 0, clock_payload(2**64 - 1))) == 2**64 - 1
    for payload in (b"", b"\0" * 7, b"\0" * 9):
        with pytest.raises(ProtocolError, match="CLOCK frame must carry 8 bytes"):
            clock_time(Frame(FrameType.CLOCK, 0, payload))


def test_fuzzed_bytes_never_raise_anything_but_protocol_error() -> None:
    rng = random.Random(2)
    for _ in range(3000):
        blob = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        if rng.random() < 0.5:  # mostly-valid headers reach the payload checks more often
            blob = bytes([rng.choice(FRAME_TYPES), rng.randrange(4)]) + blob[2:]
        try:
            for frame in FrameDecoder().feed(blob):
                if frame.type in (FrameType.MESSAGE, FrameType.OPEN, FrameType.READY, FrameType.HELLO):
                    decode_json(frame)
                elif frame.type == FrameType.WINDOW:
                    window_increment(frame)
                elif frame.type == FrameType.CLOCK:
                    clock_time(frame)
        except ProtocolError:
            pass


# -- the vocabulary: plain ints and strings, named ---------------------------------------------------------


def test_frame_types_and_channels_are_ints_with_names() -> None:
    assert HEADER.format == "!BBII" and HEADER.size == 10
    for value, name in FrameType.NAMES.items():
        assert getattr(FrameType, name) == value and type(getattr(FrameType, name)) is int
        assert Frame(value, 0).name == name
    assert Frame(200, 0).name == "200"
    assert (Channel.STDIN, Channel.STDOUT, Channel.STDERR) == (0, 1, 2)
    for value, name in Channel.NAMES.items():
        channel = Channel(value)
        assert channel is getattr(Channel, name) and channel.name == name and isinstance(channel, int)
        assert repr(channel) == f"Channel.{name}" and str(channel) == str(value) and hash(channel) == value
    by_int: dict[int, str] = {Channel.STDERR: "x"}
    assert {1: "stdout"}[Channel.STDOUT] == "stdout" and by_int[2] == "x"
    for bad in (3, -1, "1", None):
        with pytest.raises(ValueError):
            Channel(bad)  # type: ignore[arg-type]


def test_ops_and_events() -> None:
    assert (Op.HEALTH, Op.USERDATA, Op.EXEC) == ("health", "userdata", "exec")
    assert (Event.STARTED, Event.EXIT, Event.ERROR) == ("started", "exit", "error")


def test_protocol_is_cheap_to_import() -> None:
    """The agent imports it inside a TCG guest: no enum, json, re, typing, dataclasses, ..."""
    code = "import sys; import pyslicer.protocol; print(' '.join(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    loaded = set(
        subprocess.run(
            [sys.executable, "-S", "-P", "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
    )
    heavy = {"enum", "json", "re", "typing", "dataclasses", "asyncio", "inspect", "collections", "functools"}
    assert loaded & heavy == set()
    assert "_json" in loaded


# -- JSON: the C accelerator directly, as json does it -----------------------------------------------------

JSON_SAMPLES = [
    b'{"op":"exec","cmd":"sh","args":["-c","echo \\u00e9"],"uid":0,"window":262144,"stdin":true}',
    b'{"a": [1, 2.5, -3e10, null, false, {"b": "\\ud83d\\ude00"}], "c": NaN, "d": -Infinity}  \n',
    b'{"dup": 1, "dup": 2}',
    b'{"big": 123456789012345678901234567890, "f": 1.0000000000000002}',
    b"{}",
    b"{",
    b'{"a":',
    b'{"a" 1}',
    b'{"a":1} x',
    b'{"a":1}{}',
    b'{"a":"\x01"}',
    b'{"a":"\\x"}',
    b"\xef\xbb\xbf{}",
    b"  {}",
    b"[1]",
    b"",
    b"\xff",
    b'{"\xff":1}',
    '{"a":"é"}'.encode("utf-16-le"),
    '{"a":"é"}'.encode("utf-32"),
    b'{"a":"\xed\xa0\x80"}',
]


@pytest.mark.parametrize("data", JSON_SAMPLES)
def test_loads_is_json_loads(data: bytes) -> None:
    try:
        expected: object = json.loads(data)
    except Exception as exc:
        with pytest.raises(type(exc)):
            loads(data)
    else:
        assert repr(loads(data)) == repr(expected)  # repr: NaN != NaN


@pytest.mark.parametrize(
    "body",
    [
        {"type": "started", "pid": 123, "started_at": "2024-01-01T00:00:00.000001Z"},
        {"s": 'é\u2603\U0001f600\x00\x1f"\\/\ud800', "f": [1.5, float("inf"), float("nan"), -0.0, 1e300]},
        {1: "int key", False: 2, None: 3, 2.5: 4, "nested": {"l": [[], {}, ()]}},
        {"channel": Channel.STDERR, "frame": FrameType.CLOSE},
    ],
)
def test_dumps_is_json_dumps(body: dict[str, object]) -> None:
    assert dumps(body) == json.dumps(body, separators=(",", ":"))
    assert encode_json(FrameType.MESSAGE, 9, body)[HEADER.size :] == json.dumps(body, separators=(",", ":")).encode()


def test_dumps_refuses_what_json_refuses() -> None:
    with pytest.raises(TypeError) as theirs:
        json.dumps({"x": object()})
    with pytest.raises(TypeError) as ours:
        dumps({"x": object()})
    assert str(ours.value) == str(theirs.value)
