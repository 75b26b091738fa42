import random

import pytest

from pyslicer.protocol import (
    MAX_PAYLOAD,
    Channel,
    Frame,
    FrameDecoder,
    FrameType,
    ProtocolError,
    decode_json,
    encode,
    encode_json,
    window_increment,
    window_payload,
)


def test_round_trip_in_arbitrary_chunks() -> None:
    frames = [
        Frame(FrameType.OPEN, 7, b'{"op":"exec"}'),
        Frame(FrameType.DATA, 7, bytes(range(256)) * 100, Channel.STDOUT),
        Frame(FrameType.EOF, 7, b"", Channel.STDERR),
        Frame(FrameType.WINDOW, 7, window_payload(4096)),
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


def test_oversized_payload_is_refused_both_ways() -> None:
    with pytest.raises(ValueError):
        encode(FrameType.DATA, 1, b"x" * (MAX_PAYLOAD + 1))
    header = bytes([FrameType.DATA, 1, 0, 0, 0, 1]) + (MAX_PAYLOAD + 1).to_bytes(4, "big")
    with pytest.raises(ProtocolError, match="exceeds"):
        FrameDecoder().feed(header)


@pytest.mark.parametrize(
    "wire, message",
    [
        (bytes([99, 0, 0, 0, 0, 1, 0, 0, 0, 0]), "unknown frame type"),
        (bytes([FrameType.DATA, 9, 0, 0, 0, 1, 0, 0, 0, 0]), "unknown channel"),
    ],
)
def test_garbage_is_a_protocol_error(wire: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        FrameDecoder().feed(wire)


def test_json_payloads_must_be_objects() -> None:
    assert decode_json(FrameDecoder().feed(encode_json(FrameType.MESSAGE, 1, {"a": 1}))[0]) == {"a": 1}
    with pytest.raises(ProtocolError):
        decode_json(Frame(FrameType.MESSAGE, 1, b"[1]"))
    with pytest.raises(ProtocolError):
        decode_json(Frame(FrameType.MESSAGE, 1, b"\xff"))
    with pytest.raises(ProtocolError):
        window_increment(Frame(FrameType.WINDOW, 1, b"\0\0\0\0"))


def test_fuzzed_bytes_never_raise_anything_but_protocol_error() -> None:
    rng = random.Random(2)
    for _ in range(2000):
        blob = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        try:
            for frame in FrameDecoder().feed(blob):
                if frame.type in (FrameType.MESSAGE, FrameType.OPEN):
                    decode_json(frame)
        except ProtocolError:
            pass
