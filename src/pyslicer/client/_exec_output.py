"""What an exec answers: ``ExecFrame`` (streaming), ``ExecResult`` (buffered), and ``FrameDecoder``, which turns
the NDJSON stream into frames.

Stdlib only, and no HTTP: this is the whole of the client's parsing on the CLI's ``vm exec`` path, so it must not
pull in pydantic, and it is tested on plain lines and dicts.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar

from .errors import SlicerResponseError

FrameType = Literal["started", "stdout", "stderr", "exit", "error"]
T_co = TypeVar("T_co", covariant=True)


class LineDecoder(Protocol[T_co]):
    """What turns a streamed answer's lines into items: ``FrameDecoder`` here, ``SseDecoder`` for a watch."""

    def feed(self, line: str) -> Iterable[T_co]: ...
    def finish(self) -> Iterable[T_co]: ...


@dataclass(frozen=True, slots=True)
class ExecFrame:
    """One frame of a streaming exec.

    ``started`` comes first (``pid``, ``started_at``); ``stdout``/``stderr`` carry ``data`` (already decoded
    from base64); the stream ends with ``exit`` (``exit_code``, ``signal`` when killed, ``ended_at``) or with
    ``error`` (the command could not run; ``error`` and usually a non-zero ``exit_code``). Older servers'
    untyped frames are translated into the same shapes, with a synthesized ``exit`` at the end.
    """

    type: FrameType
    data: bytes = b""
    exit_code: int | None = None
    signal: str | None = None
    pid: int | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error: str | None = None
    timestamp: datetime | None = None

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class ExecResult:
    """The outcome of ``exec_buffered``; ``pid``, ``signal`` and the times are None when the server leaves
    them out."""

    stdout: bytes
    stderr: bytes
    exit_code: int
    error: str | None = None
    pid: int | None = None
    signal: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.error

    @property
    def stdout_text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", "replace")


def exec_result(body: Any, what: str) -> ExecResult:
    """A buffered exec's JSON answer (``what`` names the request, for the error message)."""
    if not isinstance(body, dict):
        raise SlicerResponseError(f"unexpected answer to {what}: {body!r}")
    encoding = body.get("encoding")
    return ExecResult(
        stdout=_output(body.get("stdout"), encoding, "stdout"),
        stderr=_output(body.get("stderr"), encoding, "stderr"),
        exit_code=_int(body.get("exit_code")) or 0,
        error=str(body["error"]) if body.get("error") else None,
        pid=_int(body.get("pid")),
        signal=str(body["signal"]) if body.get("signal") else None,
        started_at=_timestamp(body.get("started_at")),
        ended_at=_timestamp(body.get("ended_at")),
    )


class FrameDecoder:
    """Turns NDJSON exec lines into ``ExecFrame``s, typed or legacy.

    Legacy (untyped) frames mix stdout, stderr and exit_code on one object; the exit code is whatever the
    last frame said, so the decoder emits the ``exit`` frame itself when the stream ends.
    """

    __slots__ = ("_ended", "_legacy", "_legacy_exit", "_seen_any")

    def __init__(self) -> None:
        self._ended = False
        self._legacy = False
        self._legacy_exit = 0
        self._seen_any = False

    def feed(self, line: str) -> list[ExecFrame]:
        """The frames of one line (none for a blank line or a frame type this client doesn't know yet)."""
        line = line.strip()
        if not line:
            return []
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise SlicerResponseError(f"invalid exec frame {line[:200]!r}: {exc}") from exc
        if not isinstance(obj, dict):
            raise SlicerResponseError(f"invalid exec frame {line[:200]!r}")
        self._seen_any = True
        kind = obj.get("type")
        if isinstance(kind, str) and kind:
            return self._typed(kind, obj)
        return self._untyped(obj)

    def finish(self) -> list[ExecFrame]:
        """What the end of the stream means: the legacy ``exit``, an ``error`` if it was cut short, or nothing."""
        if self._ended:
            return []
        self._ended = True
        if self._legacy:
            return [ExecFrame("exit", exit_code=self._legacy_exit)]
        what = "without an exit frame" if self._seen_any else "without any frames"
        return [ExecFrame("error", error=f"exec stream ended {what}")]

    def _typed(self, kind: str, obj: dict[str, Any]) -> list[ExecFrame]:
        encoding = obj.get("encoding")
        stamp = _timestamp(obj.get("timestamp"))
        if obj.get("error"):
            self._ended = True
            return [
                ExecFrame(
                    "error",
                    error=str(obj["error"]),
                    exit_code=_int(obj.get("exit_code")),
                    pid=_int(obj.get("pid")),
                    ended_at=_timestamp(obj.get("ended_at")),
                    timestamp=stamp,
                )
            ]
        if kind in ("stdout", "stderr"):
            # Servers send the payload under both the typed name and ``data``; older ones under ``data`` only.
            raw = obj.get(kind)
            if raw is None:
                raw = obj.get("data")
            data = _output(raw, encoding, kind)
            return [ExecFrame("stdout" if kind == "stdout" else "stderr", data=data, timestamp=stamp)]
        if kind == "started":
            return [
                ExecFrame(
                    "started",
                    pid=_int(obj.get("pid")),
                    started_at=_timestamp(obj.get("started_at")),
                    timestamp=stamp,
                )
            ]
        if kind == "exit":
            self._ended = True
            return [
                ExecFrame(
                    "exit",
                    exit_code=_int(obj.get("exit_code")) or 0,
                    signal=str(obj["signal"]) if obj.get("signal") else None,
                    pid=_int(obj.get("pid")),
                    ended_at=_timestamp(obj.get("ended_at")),
                    timestamp=stamp,
                )
            ]
        return []

    def _untyped(self, obj: dict[str, Any]) -> list[ExecFrame]:
        self._legacy = True
        encoding = obj.get("encoding")
        stamp = _timestamp(obj.get("timestamp"))
        frames: list[ExecFrame] = []
        stdout = _output(obj.get("stdout"), encoding, "stdout")
        if stdout:
            frames.append(ExecFrame("stdout", data=stdout, timestamp=stamp))
        stderr = _output(obj.get("stderr"), encoding, "stderr")
        if stderr:
            frames.append(ExecFrame("stderr", data=stderr, timestamp=stamp))
        code = _int(obj.get("exit_code"))
        if obj.get("error"):
            self._ended = True
            frames.append(ExecFrame("error", error=str(obj["error"]), exit_code=code, timestamp=stamp))
        elif code is not None:
            self._legacy_exit = code
        return frames


def _output(value: Any, encoding: Any, what: str) -> bytes:
    if value is None or value == "":
        return b""
    if not isinstance(value, str):
        raise SlicerResponseError(f"exec {what} is not a string: {value!r}")
    if encoding == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SlicerResponseError(f"exec {what} is not valid base64: {exc}") from exc
    return value.encode("utf-8", "replace")


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
