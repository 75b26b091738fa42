"""Background execs: commands the guest's agent keeps running on its own, with an output ring each.

The daemon keeps nothing about them: every operation asks the agent (``bg_*`` ops), so a reconnect of the link,
or a client that went away, changes nothing, and ids stay valid while the agent runs. What the guest answers is
rebuilt from the fields we know, as for every other op.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from pyslicer.daemon.agent_link import AgentLink, AgentStream, Message, Output
from pyslicer.daemon.exec import ExecRequest
from pyslicer.daemon.fs import NdjsonLines, clean_text, json_line
from pyslicer.daemon.guest_input import int_or, str_or
from pyslicer.errors import AgentError, Conflict, Gone, InvalidArgument, NotFound, SlicerError, Unavailable
from pyslicer.protocol import Event, Op

if TYPE_CHECKING:
    from pyslicer import protocol

SIGNALS = ("TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2")
DEFAULT_WAIT_SECONDS = 30.0
MAX_WAIT_SECONDS = 600.0
MAX_GRACE_MS = 600_000
CALL_TIMEOUT = 30.0
EXEC_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

# The agent's error codes, as the daemon's errors.
_ERRORS: dict[str, type[SlicerError]] = {
    "not_found": NotFound,
    "gone": Gone,
    "running": Conflict,
    "budget_exhausted": Unavailable,
    "too_many": Unavailable,
    "invalid_ring": InvalidArgument,
    "invalid_signal": InvalidArgument,
    "launch_failed": InvalidArgument,
}
_CODES = {"not_found": "exec_not_found", "gone": "exec_gone", "running": "exec_running"}


# -- requests ----------------------------------------------------------------------------------------


class BackgroundRequest(ExecRequest):
    """A command to start in the background: an exec request (no stdin) and the size of its output ring."""

    ring_bytes: int = Field(
        default=0, ge=0, description="the output ring's cap in bytes; 0: the agent's default (1 MiB)"
    )
    base64: bool = Field(default=True, description="log frames carry base64 (else UTF-8 text)")

    def to_background_wire(self) -> protocol.BgStartRequest:
        wire: protocol.BgStartRequest = {**self.to_wire(), "stdin": False}  # type: ignore[typeddict-item]
        wire["op"] = Op.BG_START  # type: ignore[typeddict-item]
        wire["ring_bytes"] = self.ring_bytes
        wire["stdio"] = "base64" if self.base64 else "text"
        return wire


def _signal_name(value: Any) -> Any:
    if value in (None, ""):
        return "TERM"
    if not isinstance(value, str):
        return value
    name = value.strip().upper().removeprefix("SIG")
    if name not in SIGNALS:
        from pydantic_core import PydanticCustomError

        raise PydanticCustomError(
            "invalid_signal",
            "unknown signal '{signal}': one of {names}",
            {"signal": value, "names": ", ".join(SIGNALS)},
        )
    return name


class KillRequest(BaseModel):
    """``POST exec/{id}/kill``'s body (all of it optional)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    signal: Annotated[
        Literal["TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2"],
        BeforeValidator(_signal_name),
        Field(description="TERM (the default), KILL, INT, HUP, QUIT, USR1 or USR2; SIG prefix and case optional"),
    ] = "TERM"
    grace_ms: int = Field(
        default=0, ge=0, le=MAX_GRACE_MS, description="TERM only: SIGKILL after this many ms if it still runs (0: 5000)"
    )


def check_exec_id(exec_id: str) -> str:
    """Raises NotFound for an id that cannot be one the agent made."""
    if not EXEC_ID.fullmatch(exec_id):
        raise NotFound(f"no background exec {exec_id!r}", code="exec_not_found")
    return exec_id


# -- results -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackgroundStarted:
    exec_id: str
    pid: int
    started_at: str
    ring_bytes: int


@dataclass(frozen=True, slots=True)
class BackgroundInfo:
    exec_id: str
    pid: int
    command: str
    args: list[str]
    cwd: str
    uid: int
    started_at: str
    running: bool
    exit_code: int | None
    signal: str | None
    ended_at: str | None
    bytes_written: int
    bytes_dropped: int
    next_id: int
    ring_bytes: int

    @classmethod
    def from_guest(cls, body: dict[str, Any]) -> BackgroundInfo:
        args = body.get("args")
        exit_code = int_or(body.get("exit_code"), None)
        return cls(
            exec_id=clean_text(body.get("exec_id")),
            pid=max(0, int_or(body.get("pid"), 0)),
            command=clean_text(body.get("command")),
            args=[clean_text(a) for a in args] if isinstance(args, list) else [],
            cwd=clean_text(body.get("cwd")),
            uid=max(0, int_or(body.get("uid"), 0)),
            started_at=clean_text(body.get("started_at")),
            running=body.get("running") is True,
            exit_code=exit_code,
            signal=str_or(body.get("signal"), None),
            ended_at=str_or(body.get("ended_at"), None),
            bytes_written=max(0, int_or(body.get("bytes_written"), 0)),
            bytes_dropped=max(0, int_or(body.get("bytes_dropped"), 0)),
            next_id=max(1, int_or(body.get("next_id"), 1)),
            ring_bytes=max(0, int_or(body.get("ring_bytes"), 0)),
        )


@dataclass(frozen=True, slots=True)
class KillResult:
    exec_id: str
    pid: int
    running: bool
    signal_sent: str


@dataclass(frozen=True, slots=True)
class ExitStatus:
    exec_id: str
    running: bool
    exit_code: int | None
    signal: str | None
    ended_at: str | None
    timed_out: bool


# -- log records -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogStarted:
    id: int
    pid: int
    started_at: str
    timestamp: str


@dataclass(frozen=True, slots=True)
class LogOutput:
    id: int
    stream: Literal["stdout", "stderr"]
    data: bytes
    timestamp: str


@dataclass(frozen=True, slots=True)
class LogExit:
    id: int
    exit_code: int
    ended_at: str
    signal: str | None
    timestamp: str


@dataclass(frozen=True, slots=True)
class LogGap:
    """Records the ring evicted before this reader got them."""

    dropped_frames: int
    dropped_bytes: int
    timestamp: str

    @property
    def message(self) -> str:
        return f"{self.dropped_frames} frames ({self.dropped_bytes} bytes) left the ring before they were read"


LogRecord = LogStarted | LogOutput | LogExit | LogGap


def record_from_guest(body: dict[str, Any]) -> LogRecord | None:
    kind = body.get("type")
    record_id = max(1, int_or(body.get("id"), 1))
    timestamp = clean_text(body.get("timestamp"))
    if kind in ("stdout", "stderr"):
        try:
            data = base64.b64decode(str_or(body.get("data"), ""), validate=True)
        except (binascii.Error, ValueError):
            raise AgentError("the agent sent a log record that is not base64") from None
        return LogOutput(record_id, kind, data, timestamp)
    if kind == "started":
        return LogStarted(record_id, max(0, int_or(body.get("pid"), 0)), clean_text(body.get("started_at")), timestamp)
    if kind == "exit":
        return LogExit(
            record_id,
            int_or(body.get("exit_code"), 1),
            clean_text(body.get("ended_at")),
            str_or(body.get("signal"), None),
            timestamp,
        )
    if kind == "gap":
        return LogGap(
            max(0, int_or(body.get("dropped_frames"), 0)), max(0, int_or(body.get("dropped_bytes"), 0)), timestamp
        )
    return None


class BackgroundLogs:
    """One read of an exec's ring, started. Iterate ``records()`` once; ``base64`` says how the exec asked for
    its output to be shown. Raises AgentError when the agent is lost (or sends nonsense) midway."""

    def __init__(self, stream: AgentStream) -> None:
        self._stream = stream
        self._events = aiter(stream)
        self.base64 = True

    async def _open(self) -> None:
        async for event in self._events:
            if isinstance(event, Message):
                if event.body.get("type") == Event.ERROR:
                    raise guest_error(event.body)
                if event.body.get("type") == Event.STARTED:
                    self.base64 = event.body.get("stdio") != "text"
                    return
        raise AgentError("the agent ended the log stream before it started")

    async def records(self) -> AsyncIterator[LogRecord]:
        lines = NdjsonLines()
        try:
            async for event in self._events:
                if isinstance(event, Message):
                    if event.body.get("type") == Event.ERROR:
                        raise guest_error(event.body)
                    if event.body.get("type") == Event.DONE:
                        return
                    continue
                if not isinstance(event, Output):
                    continue
                for line in lines.feed(event.data):
                    record = record_from_guest(json_line(line))
                    if record is not None:
                        yield record
                self._stream.consumed(len(event.data))
            raise AgentError("the agent ended the log stream early")
        finally:
            self.cancel()

    def cancel(self) -> None:
        self._stream.cancel()


def guest_error(body: dict[str, Any]) -> SlicerError:
    code = str_or(body.get("code"), "")
    cls = _ERRORS.get(code, Unavailable)
    message = clean_text(body.get("error"), "the background exec failed")
    if code == "launch_failed":
        exit_code = int_or(body.get("exit_code"), 1)
        return cls(message, code="command_not_found" if exit_code == 127 else "launch_failed")
    return cls(message, code=_CODES.get(code, code or "background_error"))


# -- operations --------------------------------------------------------------------------------------


class BackgroundExecs:
    """The background execs of one running guest. Every method raises AgentError when the agent does not
    answer, and the guest's refusals as NotFound (an unknown id), Gone (a deleted one), Conflict, InvalidArgument
    or Unavailable as each method says."""

    def __init__(self, link: AgentLink, hostname: str) -> None:
        self._link = link
        self.hostname = hostname

    async def _call(self, request: dict[str, Any], timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        body = await self._link.call(request, timeout=timeout)
        if body.get("type") == Event.ERROR:
            raise guest_error(body)
        return body

    async def start(self, request: BackgroundRequest) -> BackgroundStarted:
        """Start a command. Raises InvalidArgument for a ring larger than the guest's budget or a command that
        cannot start (code ``command_not_found``), Unavailable when the guest's ring budget (or its count of
        execs) is exhausted."""
        if request.stdin:
            raise InvalidArgument("stdin is not supported with background=true", code="invalid_stdin")
        body = await self._call(dict(request.to_background_wire()))
        return BackgroundStarted(
            exec_id=clean_text(body.get("exec_id")),
            pid=max(0, int_or(body.get("pid"), 0)),
            started_at=clean_text(body.get("started_at")),
            ring_bytes=max(0, int_or(body.get("ring_bytes"), 0)),
        )

    async def list(self) -> list[BackgroundInfo]:
        """Every exec the guest tracks, running or ended and not deleted."""
        body = await self._call({"op": Op.BG_LIST})
        execs = body.get("execs")
        return [BackgroundInfo.from_guest(e) for e in execs if isinstance(e, dict)] if isinstance(execs, list) else []

    async def info(self, exec_id: str) -> BackgroundInfo:
        """Raises NotFound or Gone."""
        return BackgroundInfo.from_guest(await self._call({"op": Op.BG_INFO, "exec_id": check_exec_id(exec_id)}))

    async def kill(self, exec_id: str, request: KillRequest) -> KillResult:
        """Signal the exec's process group (a TERM is followed by a KILL after the grace); an ended exec is left
        alone (``signal_sent`` empty). Raises NotFound or Gone."""
        body = await self._call(
            {
                "op": Op.BG_KILL,
                "exec_id": check_exec_id(exec_id),
                "signal": request.signal,
                "grace_ms": request.grace_ms,
            }
        )
        return KillResult(
            exec_id=clean_text(body.get("exec_id"), exec_id),
            pid=max(0, int_or(body.get("pid"), 0)),
            running=body.get("running") is True,
            signal_sent=clean_text(body.get("signal_sent")),
        )

    async def wait(self, exec_id: str, timeout: float = DEFAULT_WAIT_SECONDS) -> ExitStatus:
        """Wait until the exec has ended, or ``timeout`` seconds (then ``timed_out``). Raises InvalidArgument
        for a timeout outside 0-600 s, NotFound or Gone (also when it is deleted meanwhile)."""
        if not 0 <= timeout <= MAX_WAIT_SECONDS:
            raise InvalidArgument(f"timeout must be 0 to {MAX_WAIT_SECONDS:g} seconds", code="invalid_timeout")
        request = {"op": Op.BG_WAIT, "exec_id": check_exec_id(exec_id), "timeout": timeout}
        body = await self._call(request, timeout=timeout + CALL_TIMEOUT)
        return ExitStatus(
            exec_id=clean_text(body.get("exec_id"), exec_id),
            running=body.get("running") is True,
            exit_code=int_or(body.get("exit_code"), None),
            signal=str_or(body.get("signal"), None),
            ended_at=str_or(body.get("ended_at"), None),
            timed_out=body.get("timed_out") is True,
        )

    async def delete(self, exec_id: str) -> str:
        """Forget an ended exec and free its ring; returns its id. Raises Conflict while it runs, NotFound, Gone."""
        body = await self._call({"op": Op.BG_DELETE, "exec_id": check_exec_id(exec_id)})
        return clean_text(body.get("exec_id"), exec_id)

    async def logs(self, exec_id: str, *, follow: bool = False, from_id: int = 0) -> BackgroundLogs:
        """Read the ring from ``from_id`` (0: the oldest kept); with ``follow``, also what comes until the exec
        ends. Returns once the guest has begun. Raises NotFound or Gone."""
        request = {"op": Op.BG_LOGS, "exec_id": check_exec_id(exec_id), "follow": follow, "from_id": from_id}
        logs = BackgroundLogs(self._link.open(request))
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await logs._open()
        except TimeoutError:
            logs.cancel()
            raise AgentError(f"agent on {self.hostname} did not start the log stream") from None
        except BaseException:
            logs.cancel()
            raise
        return logs
