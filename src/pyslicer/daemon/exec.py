"""Exec: a validated request in, typed events out.

The agent's wire request is built here and what the guest sends back is rebuilt from the fields we
know (a guest is input like any other). Output credit goes back to the guest as the consumer comes
back for the next event, so a slow consumer holds back only its own command.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from pyslicer.daemon.agent_link import AgentStream, Message, Output
from pyslicer.daemon.guest_input import int_or, str_or
from pyslicer.daemon.timestamps import utc_now
from pyslicer.errors import Unavailable
from pyslicer.image.rootfs import DEFAULT_UID
from pyslicer.protocol import Channel, Event, Op

if TYPE_CHECKING:
    from pyslicer import protocol

NOT_GIVEN_ID = 2**32 - 1  # (uid_t)-1: the Go SDK's "default user"; to setreuid it means "leave unchanged"
MAX_ID = NOT_GIVEN_ID - 1
BUFFERED_LIMIT = 32 * 1024 * 1024
CANCELLED = "the command was cancelled"

OutputStream = Literal["stdout", "stderr"]
STREAM_OF_CHANNEL: dict[int, OutputStream] = {Channel.STDOUT: "stdout", Channel.STDERR: "stderr"}


def _optional_id(value: Any) -> Any:
    if value in ("", None) or str(value).strip() == str(NOT_GIVEN_ID):
        return None
    return value


def _optional_uid(value: Any) -> Any:
    # The Go SDK's sentinel asks for the guest's default user (the image's, uid 1000, as on Slicer); an omitted
    # uid is root, as Slicer's REST reference says.
    if value not in ("", None) and str(value).strip() == str(NOT_GIVEN_ID):
        return DEFAULT_UID
    return _optional_id(value)


def _flag(value: Any) -> Any:
    return False if value == "" else value


def _env_entries(values: list[str]) -> list[str]:
    for item in values:
        if "=" not in item or item.startswith("="):
            raise PydanticCustomError("invalid_env", "{item!r} is not KEY=VALUE", {"item": item})
    return values


def _required_command(value: Any) -> Any:
    if value == "":
        raise PydanticCustomError("invalid_cmd", "a command is required")
    return value


UserId = Annotated[
    Annotated[int, Field(ge=0, le=MAX_ID)] | Literal[4294967295] | None,  # the sentinel becomes None
    BeforeValidator(_optional_id),
    Field(description=f"numeric id; omitted or {NOT_GIVEN_ID} means the guest's default user"),
]
ExecUserId = Annotated[
    Annotated[int, Field(ge=0, le=MAX_ID)] | None,
    BeforeValidator(_optional_uid),
    Field(description=f"numeric id; omitted: root; {NOT_GIVEN_ID}: the guest's default user (uid {DEFAULT_UID})"),
]
Flag = Annotated[bool, BeforeValidator(_flag)]


class ExecRequest(BaseModel):
    """A command to run in a guest."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    cmd: Annotated[
        str, BeforeValidator(_required_command), Field(description="the program (or, with shell, the command line)")
    ]
    args: list[str] = Field(default_factory=list, description="arguments, one per repeated parameter")
    env: Annotated[
        list[str], AfterValidator(_env_entries), Field(default_factory=list, description="KEY=VALUE, repeated")
    ]
    uid: ExecUserId = None
    gid: UserId = None
    cwd: str | None = Field(default=None, description="working directory (default: the user's home)")
    shell: str | None = Field(default=None, description="run cmd as a command line of this shell")
    stdin: Flag = Field(default=False, description="the request body is the command's stdin, full duplex")

    def to_wire(self) -> protocol.ExecRequest:
        return {
            "op": Op.EXEC,
            "cmd": self.cmd,
            "args": list(self.args),
            "env": list(self.env),
            "uid": self.uid,
            "gid": self.gid,
            "cwd": self.cwd or None,
            "shell": self.shell or None,
            "stdin": self.stdin,
        }


@dataclass(frozen=True, slots=True)
class ExecStarted:
    pid: int
    started_at: str


@dataclass(frozen=True, slots=True)
class ExecOutput:
    stream: OutputStream
    data: bytes


@dataclass(frozen=True, slots=True)
class ExecExited:
    exit_code: int
    ended_at: str
    signal: str | None = None


@dataclass(frozen=True, slots=True)
class ExecFailed:
    """The command could not be started (127: not found, 126: not executable) or was cut short."""

    error: str
    exit_code: int
    ended_at: str = field(default_factory=utc_now)


ExecEvent = ExecStarted | ExecOutput | ExecExited | ExecFailed


@dataclass
class ExecOutcome:
    """A buffered exec's result: the output as the pieces that arrived, and how it ended."""

    stdout: list[bytes] = field(default_factory=list)
    stderr: list[bytes] = field(default_factory=list)
    started: ExecStarted | None = None
    end: ExecExited | ExecFailed = field(default_factory=lambda: ExecFailed(CANCELLED, 1))


def event_from_message(body: dict[str, Any]) -> ExecStarted | ExecExited | ExecFailed | None:
    kind = body.get("type")
    if kind == Event.STARTED:
        return ExecStarted(pid=int_or(body.get("pid"), 0), started_at=str_or(body.get("started_at"), utc_now()))
    if kind == Event.EXIT:
        return ExecExited(
            exit_code=int_or(body.get("exit_code"), 1),
            ended_at=str_or(body.get("ended_at"), utc_now()),
            signal=str_or(body.get("signal"), None),
        )
    if kind == Event.ERROR:
        return ExecFailed(
            error=str_or(body.get("error"), "exec failed"),
            exit_code=int_or(body.get("exit_code"), 1),
            ended_at=str_or(body.get("ended_at"), utc_now()),
        )
    return None


class ExecProcess:
    """A command running in a guest. Iterate ``events()`` once; the last event is ExecExited or ExecFailed.

    Iteration raises AgentError when the agent is lost mid-command."""

    def __init__(self, stream: AgentStream) -> None:
        self._stream = stream

    async def events(self) -> AsyncIterator[ExecEvent]:
        ended = False
        async for event in self._stream:
            if ended:
                continue  # the agent's CLOSE follows at once; leaving before it would make us send one
            if isinstance(event, Output):
                yield ExecOutput(STREAM_OF_CHANNEL.get(event.channel, "stderr"), event.data)
                self._stream.consumed(len(event.data))  # delivered: the guest may send more
            elif isinstance(event, Message):
                typed = event_from_message(event.body)
                if typed is not None:
                    yield typed
                    ended = not isinstance(typed, ExecStarted)
        if not ended:
            yield ExecFailed(CANCELLED, 1)

    async def collect(self, limit: int = BUFFERED_LIMIT) -> ExecOutcome:
        """Wait for the end, holding the output (raises Unavailable past ``limit`` bytes, AgentError
        when the agent is lost)."""
        outcome = ExecOutcome()
        size = 0
        async for event in self.events():
            if isinstance(event, ExecOutput):
                size += len(event.data)
                if size > limit:
                    raise Unavailable(
                        f"output exceeds the {limit} byte buffer; use the streaming exec", code="buffer_exhausted"
                    )
                (outcome.stdout if event.stream == "stdout" else outcome.stderr).append(event.data)
            elif isinstance(event, ExecStarted):
                outcome.started = event
            else:
                outcome.end = event
        return outcome

    async def write_stdin(self, data: bytes) -> None:
        """Send bytes to the command's stdin, waiting for the guest's credit."""
        await self._stream.write(data)

    def close_stdin(self) -> None:
        self._stream.close_input()

    def cancel(self) -> None:
        """Stop the command (the agent kills its process group). Safe to call more than once."""
        self._stream.cancel()
