"""What the Slicer API returns, as typed objects.

REST resources are pydantic models that keep unknown fields (``extra="allow"``), so newer servers don't break
the client and ``model_dump()`` shows everything the server sent. Exec output is plain dataclasses of bytes
(``ExecFrame``, ``ExecResult``) and watch events (``WatchEvent``), defined without pydantic so that a
streaming exec or watch never imports it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from ._background_logs import LogFrame
from ._exec_output import ExecFrame, ExecResult, FrameType
from ._fs_watch import WatchEvent

__all__ = [
    "AgentHealth",
    "BackgroundExec",
    "BackgroundExecInfo",
    "BackgroundExit",
    "BackgroundKill",
    "Commit",
    "CommitDeleted",
    "CommitInfo",
    "CreatedNode",
    "DeleteResult",
    "ExecFrame",
    "ExecResult",
    "ForkResult",
    "FrameType",
    "FsEntry",
    "HostGroup",
    "HostStats",
    "LogFrame",
    "LogsResult",
    "NetworkDescription",
    "NetworkPolicy",
    "Node",
    "NodeDescription",
    "NodeStats",
    "Secret",
    "ServerInfo",
    "StatsSnapshot",
    "VMTags",
    "WatchEvent",
]


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
    """One VM in a listing (``GET /nodes``, ``GET /hostgroup/{group}/nodes``).

    ``hostgroup`` and ``persistent`` are None when the server doesn't send them (older servers don't).
    """

    hostname: str
    hostgroup: str | None = None
    persistent: bool | None = None
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


class NetworkPolicy(_Resource):
    """Allow and drop lists of CIDRs; in an override, None inherits the host group's list."""

    allow: list[str] | None = None
    drop: list[str] | None = None


class NetworkDescription(_Resource):
    mode: str = ""
    policy_source: str = ""
    host_group: NetworkPolicy = Field(default_factory=NetworkPolicy)
    override: NetworkPolicy | None = None
    effective: NetworkPolicy = Field(default_factory=NetworkPolicy)


class NodeDescription(Node):
    """One VM described (``GET /vm/{hostname}``): the listing's fields and what it runs on.

    ``expires_at`` (None: never), ``disk_bytes`` and ``protected`` are pyslicer's; other servers leave them out.
    """

    storage: str = ""
    image: str = ""
    commit_id: str = ""
    parent_commit_id: str = ""
    network: NetworkDescription = Field(default_factory=NetworkDescription)
    expires_at: datetime | None = None
    disk_bytes: int | None = None
    protected: bool | None = None


class VMTags(_Resource):
    hostname: str = ""
    tags: list[str] = Field(default_factory=list)

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


class Commit(_Resource):
    """A commit just made (``POST /vm/{hostname}/commit``); its ``mode`` is ``disk`` (a stopped VM's disk)."""

    hostname: str = ""
    commit_id: str
    status: str = ""
    parent_status: str = ""
    mode: str = ""
    tags: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    cache_key: str = ""

    @field_validator("tags", mode="before")
    @classmethod
    def tags_null_is_empty(cls, value: Any) -> Any:
        return _none_to_list(value)

    @field_validator("labels", mode="before")
    @classmethod
    def labels_null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


class CommitInfo(_Resource):
    """One commit in a listing. ``parent_commit_id``, ``size_bytes`` and ``used_by`` are pyslicer's."""

    commit_id: str
    source_hostname: str = ""
    source_host_group: str = ""
    created_at: datetime | None = None
    mode: str = ""
    tags: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    cache_key: str = ""
    parent_commit_id: str = ""
    size_bytes: int | None = None
    used_by: list[str] = Field(default_factory=list)

    @field_validator("tags", "used_by", mode="before")
    @classmethod
    def lists_null_are_empty(cls, value: Any) -> Any:
        return _none_to_list(value)

    @field_validator("labels", mode="before")
    @classmethod
    def labels_null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


class CommitDeleted(_Resource):
    commit_id: str = ""
    status: str = ""


class ForkResult(_Resource):
    """A VM forked from a commit: ``child_status`` is ``running`` once it waited for the agent, else ``starting``."""

    hostname: str
    source_hostname: str = ""
    commit_id: str = ""
    status: str = ""
    parent_status: str = ""
    child_status: str = ""
    mode: str = ""
    persistent: bool = False


class LifecycleResult(_Resource):
    """What a pause, resume or shutdown left: ``status`` is Running, Paused or Stopped, or Deleted for an
    ephemeral sandbox that a shutdown removed (``disk_removed``). Slicer itself answers text: then both are empty."""

    hostname: str = ""
    status: str = ""
    disk_removed: bool = False


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


class Secret(_Resource):
    """A stored secret, as listed: never its value. ``modified_at`` is what the SDKs read; Slicer's reference
    page calls it ``mod_time``, taken when that is all a server sends."""

    name: str
    size: int = 0
    permissions: str = ""
    uid: int = 0
    gid: int = 0
    modified_at: datetime | None = Field(default=None, validation_alias=AliasChoices("modified_at", "mod_time"))


class FsEntry(_Resource):
    """A file, directory or symlink in a VM (``fs/stat``, ``fs/readdir``, ``fs/mkdir``), as lstat sees it.

    ``mtime`` is RFC 3339 text as the server sent it (with nanoseconds); ``modified`` is it as a datetime.
    """

    name: str = ""
    type: str = Field(default="", description="file, directory or symlink")
    size: int = 0
    mtime: str = ""
    mode: str = Field(default="", description='octal permission bits, e.g. "0644"')

    @property
    def is_dir(self) -> bool:
        return self.type == "directory"

    @property
    def modified(self) -> datetime | None:
        text = self.mtime.replace("Z", "+00:00")
        head, dot, rest = text.partition(".")
        if dot:  # datetime takes at most microseconds
            digits = "".join(ch for ch in rest if ch.isdigit())
            text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            return None


class StatsSnapshot(_Resource):
    """A guest as its agent read it (Slicer's snapshot; the attributes are its camelCase names in snake case).
    Byte counts are bytes; ``disk_read_total`` and the like count since the guest booted."""

    hostname: str = ""
    arch: str = ""
    timestamp: datetime | None = None
    uptime: str = Field(default="", description='a Go duration, e.g. "6m53s"')
    total_cpus: int = Field(default=0, alias="totalCpus")
    total_memory: int = Field(default=0, alias="totalMemory")
    memory_used: int = Field(default=0, alias="memoryUsed")
    memory_available: int = Field(default=0, alias="memoryAvailable")
    memory_used_percent: float = Field(default=0.0, alias="memoryUsedPercent")
    load_avg1: float = Field(default=0.0, alias="loadAvg1")
    load_avg5: float = Field(default=0.0, alias="loadAvg5")
    load_avg15: float = Field(default=0.0, alias="loadAvg15")
    disk_read_total: int = Field(default=0, alias="diskReadTotal")
    disk_write_total: int = Field(default=0, alias="diskWriteTotal")
    network_read_total: int = Field(default=0, alias="networkReadTotal")
    network_write_total: int = Field(default=0, alias="networkWriteTotal")
    disk_io_inflight: int = Field(default=0, alias="diskIOInflight")
    open_connections: int = Field(default=0, alias="openConnections")
    open_files: int = Field(default=0, alias="openFiles")
    entropy: int = 0
    disk_space_total: int = Field(default=0, alias="diskSpaceTotal")
    disk_space_used: int = Field(default=0, alias="diskSpaceUsed")
    disk_space_free: int = Field(default=0, alias="diskSpaceFree")
    disk_space_used_percent: float = Field(default=0.0, alias="diskSpaceUsedPercent")

    @property
    def uptime_seconds(self) -> float | None:
        from pyslicer.durations import parse_go_duration
        from pyslicer.errors import InvalidArgument

        try:
            return parse_go_duration(self.uptime)
        except InvalidArgument:
            return None


class HostStats(_Resource):
    """pyslicer's extension: the VM as the host counts it (None: not read). Network bytes are the VM's view."""

    cpu_seconds: float | None = None
    rss_bytes: int | None = None
    pss_bytes: int | None = None
    private_bytes: int | None = None
    net_rx_bytes: int | None = None
    net_tx_bytes: int | None = None
    disk_read_bytes: int | None = None
    disk_write_bytes: int | None = None
    disk_read_ops: int | None = None
    disk_write_ops: int | None = None


class NodeStats(_Resource):
    """One VM's stats: ``snapshot`` when its agent answered, else ``error`` says why not (paused, booting...).
    ``host`` is None from a server that does not send it (Slicer's)."""

    hostname: str
    hostgroup: str | None = None
    ip: str = ""
    created_at: datetime | None = None
    status: str = ""
    snapshot: StatsSnapshot | None = None
    error: str | None = None
    host: HostStats | None = None


class BackgroundExec(_Resource):
    """A command started in the background (``exec_background``): use ``exec_id`` with the other calls."""

    exec_id: str
    pid: int = 0
    started_at: datetime | None = None
    ring_bytes: int = 0


class BackgroundExecInfo(_Resource):
    """A background exec as the VM's agent tracks it (running, or ended and not yet deleted)."""

    exec_id: str
    pid: int = 0
    command: str = ""
    args: list[str] = Field(default_factory=list)
    cwd: str = ""
    uid: int = 0
    started_at: datetime | None = None
    running: bool = False
    exit_code: int | None = None
    signal: str | None = None
    ended_at: datetime | None = None
    bytes_written: int = 0
    bytes_dropped: int = 0
    next_id: int = 0
    ring_bytes: int = 0

    @field_validator("args", mode="before")
    @classmethod
    def _args(cls, value: Any) -> Any:
        return _none_to_list(value)


class BackgroundKill(_Resource):
    """``signal_sent`` is the signal's name (``TERM``), empty when the exec had ended already."""

    exec_id: str
    pid: int = 0
    running: bool = False
    signal_sent: str = ""


class BackgroundExit(_Resource):
    """``wait_background``'s answer: with ``timed_out`` the exec was still running at the timeout."""

    exec_id: str
    running: bool = False
    exit_code: int | None = None
    signal: str | None = None
    ended_at: datetime | None = None
    timed_out: bool = False
