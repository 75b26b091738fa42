"""A background exec's log stream for the client: ``LogFrame`` and the NDJSON decoder (stdlib only, like
``_exec_output``, so following logs never imports pydantic)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import SlicerResponseError


@dataclass(frozen=True, slots=True)
class LogFrame:
    """One frame of a background exec's log: ``started``, ``stdout``/``stderr`` (``data`` decoded from base64),
    ``exit``, each with its ``id`` (from 1); or ``gap`` (``id`` 0): ``dropped_frames`` frames and
    ``dropped_bytes`` bytes left the ring before this reader got them. Resume after a frame with
    ``from_id=frame.id + 1``."""

    type: str
    id: int = 0
    data: bytes = b""
    timestamp: str = ""
    pid: int | None = None
    started_at: str | None = None
    exit_code: int | None = None
    ended_at: str | None = None
    signal: str | None = None
    dropped_bytes: int = 0
    dropped_frames: int = 0
    message: str | None = None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class LogFrameDecoder:
    """Feed it the stream's lines; it yields a ``LogFrame`` for each (blank lines skipped)."""

    def feed(self, line: str) -> Iterator[LogFrame]:
        if not line.strip():
            return
        try:
            body = json.loads(line)
        except ValueError as exc:
            raise SlicerResponseError(f"exec logs sent a line that is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise SlicerResponseError("exec logs sent a line that is not a JSON object")
        kind = str(body.get("type") or "")
        text = _str(body.get("data"))
        if text is None and kind in ("stdout", "stderr"):
            text = _str(body.get(kind))
        data = b""
        if text:
            if body.get("encoding") == "base64":
                try:
                    data = base64.b64decode(text, validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise SlicerResponseError(f"exec logs sent invalid base64: {exc}") from exc
            else:
                data = text.encode()
        yield LogFrame(
            type=kind,
            id=_int(body.get("id")) or 0,
            data=data,
            timestamp=_str(body.get("timestamp")) or "",
            pid=_int(body.get("pid")),
            started_at=_str(body.get("started_at")),
            exit_code=_int(body.get("exit_code")),
            ended_at=_str(body.get("ended_at")),
            signal=_str(body.get("signal")) or None,
            dropped_bytes=_int(body.get("dropped_bytes")) or 0,
            dropped_frames=_int(body.get("dropped_frames")) or 0,
            message=_str(body.get("message")),
        )

    def finish(self) -> Iterator[LogFrame]:
        yield from ()
