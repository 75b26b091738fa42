"""Exec answers: the buffered one is written in pieces (joined, exactly the JSON object); frames and
events are rebuilt from known fields; the frames the API writes fit the models the OpenAPI document states."""

from __future__ import annotations

import base64
import json
import random

import pytest

from pyslicer.api.exec import exit_frame, json_pieces, output_frame, started_frame
from pyslicer.api.schemas import ExecFrame
from pyslicer.daemon import ExecExited, ExecFailed, ExecStarted
from pyslicer.daemon.exec import ExecRequest, event_from_message


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
    chunks = {"stdout": split(out, rng), "stderr": split(err, rng)}
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


def test_events_from_the_guest_are_rebuilt_from_known_fields() -> None:
    hostile = {"type": "exit", "exit_code": {"x": 1}, "ended_at": 5, "signal": ["KILL"], "extra": "x" * 10}
    exited = event_from_message(hostile)
    assert isinstance(exited, ExecExited)
    assert exited.exit_code == 1 and isinstance(exited.ended_at, str) and exited.signal is None
    failed = event_from_message({"type": "error", "error": "exec: x: not found", "exit_code": 127})
    assert isinstance(failed, ExecFailed) and failed.exit_code == 127
    truthy = event_from_message({"type": "exit", "exit_code": True})
    assert isinstance(truthy, ExecExited) and truthy.exit_code == 1
    started = event_from_message({"type": "started", "pid": "1; rm -rf /", "started_at": None})
    assert isinstance(started, ExecStarted) and started.pid == 0 and isinstance(started.started_at, str)
    assert event_from_message({"type": "surprise"}) is None


def test_frames_fit_the_stated_models() -> None:
    frames = [
        started_frame(ExecStarted(7, "2026-12-01T00:00:00Z")),
        output_frame("stdout", "hi", False),
        output_frame("stderr", "aGk=", True),
        exit_frame(ExecExited(0, "2026-12-01T00:00:01Z")),
        exit_frame(ExecExited(137, "2026-12-01T00:00:01Z", "KILL")),
        exit_frame(ExecFailed("exec: nope: not found", 127)),
    ]
    for frame in frames:
        assert ExecFrame.model_validate(frame).model_dump(exclude_none=True) == frame
    assert frames[1]["stdout"] == "hi" and frames[2]["stderr"] == "aGk="


def test_the_go_sdk_default_user_sentinel_means_the_default_user() -> None:
    request = ExecRequest.model_validate({"cmd": "id", "uid": "4294967295", "gid": 4294967295})
    assert request.uid == 1000 and request.gid is None
    assert ExecRequest.model_validate({"cmd": "id"}).uid is None
    assert ExecRequest.model_validate({"cmd": "id", "uid": "0"}).uid == 0
    for bad in (
        {"cmd": "id", "uid": "4294967296"},
        {"cmd": "id", "uid": "-1"},
        {"cmd": ""},
        {"cmd": "x", "env": ["=a"]},
    ):
        with pytest.raises(ValueError):
            ExecRequest.model_validate(bad)
