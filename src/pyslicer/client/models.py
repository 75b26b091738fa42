"""What the Slicer API returns, as typed objects.

REST resources are pydantic models that keep unknown fields (``extra="allow"``), so newer servers don't break
the client and ``model_dump()`` shows everything the server sent. Exec output is plain dataclasses of bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Resource(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


def _none_to_list(value: Any) -> Any:
    # Go encodes a nil slice as null.
    return [] if value is None else value


class ServerInfo(_Resource):
    version: str = ""
    git_commit: str = ""
    platform: str = ""
    arch: str = ""


class HostGroup(_Resource):
    name: str
    count: int = 0
    ram_bytes: int = 0
    cpus: int = 0
    gpu_count: int = 0
    arch: str = ""


class Node(_Resource):
    hostname: str
    hostgroup: str | None = None
    ip: str = ""
    ram_bytes: int | None = None
    cpus: int | None = None
    created_at: datetime | None = None
    tags: list[str] = Field(default_factory=list)
    arch: str = ""
    status: str = ""

    @field_validator("tags", mode="before")
    @classmethod
    def tags_null_is_empty(cls, value: Any) -> Any:
        return _none_to_list(value)


class CreatedNode(_Resource):
    hostname: str
    hostgroup: str | None = None
    ip: str = ""
    created_at: datetime | None = None
    arch: str = ""


class DeleteResult(_Resource):
    message: str = ""
    disk_removed: str | bool = ""
    error: str = ""


class AgentHealth(_Resource):
    """``agent_uptime``/``system_uptime`` are nanoseconds (Go's ``time.Duration``)."""

    hostname: str = ""
    agent_uptime: int = 0
    agent_version: str = ""
    system_uptime: int = 0
    userdata_ran: bool = False
    userdata_exit_code: int | None = None
    ip: str | None = None

    @property
    def agent_up(self) -> bool:
        return self.agent_uptime > 0

    @property
    def agent_uptime_seconds(self) -> float:
        return self.agent_uptime / 1e9

    @property
    def system_uptime_seconds(self) -> float:
        return self.system_uptime / 1e9


class LogsResult(_Resource):
    hostname: str = ""
    lines: int = 0
    content: str = ""


FrameType = Literal["started", "stdout", "stderr", "exit", "error"]


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
    """The outcome of ``exec_buffered``."""

    stdout: bytes
    stderr: bytes
    exit_code: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.error

    @property
    def stdout_text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", "replace")
