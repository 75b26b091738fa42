"""The buffered exec answer is written in pieces; joined, they must be exactly the JSON object."""

from __future__ import annotations

import base64
import json
import random

import pytest

from pyslicer.api.exec import json_pieces
from pyslicer.protocol import Channel


def split(data: bytes, rng: random.Random) -> list[bytes]:
    pieces, offset = [], 0
    while offset < len(data):
        size = rng.randint(1, 9)
        pieces.append(data[offset : offset + size])
        offset += size
    return pieces


@pytest.mark.parametrize("seed", range(20))
def test_pieces_join_to_the_whole_answer(seed: int) -> None:
    rng = random.Random(seed)
    out = 'héllo wörld ✓ \n"quoted"\t\\'.encode() + bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
    err = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
    chunks = {Channel.STDOUT: split(out, rng), Channel.STDERR: split(err, rng)}
    tail = {"exit_code": 3, "error": "x"}

    text = json.loads(b"".join(json_pieces(chunks, tail, use_base64=False)))
    assert text == {
        "stdout": out.decode(errors="replace"),
        "stderr": err.decode(errors="replace"),
        "exit_code": 3,
        "error": "x",
    }
    encoded = json.loads(b"".join(json_pieces(chunks, {**tail, "encoding": "base64"}, use_base64=True)))
    assert base64.b64decode(encoded["stdout"]) == out and base64.b64decode(encoded["stderr"]) == err


def test_frames_from_the_guest_are_rebuilt_from_known_fields() -> None:
    from pyslicer.api.exec import exit_frame, started_frame

    hostile = {"type": "exit", "exit_code": {"x": 1}, "ended_at": 5, "signal": ["KILL"], "extra": "x" * 10}
    frame = exit_frame(hostile)
    assert frame["exit_code"] == 1 and isinstance(frame["ended_at"], str)
    assert "signal" not in frame and "extra" not in frame
    assert exit_frame({"type": "error", "error": "exec: x: not found", "exit_code": 127})["exit_code"] == 127
    assert exit_frame({"type": "exit", "exit_code": True})["exit_code"] == 1
    started = started_frame({"type": "started", "pid": "1; rm -rf /", "started_at": None})
    assert started["pid"] == 0 and isinstance(started["started_at"], str)
