"""The wire: request and response models of Slicer's REST API, in Slicer's field names.

Routes declare these, and ``GET /openapi.json`` is generated from them; nothing here does any work.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictBool, StrictInt


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong, for people")
    code: str = Field(description="a stable machine-readable name")


class Info(BaseModel):
    version: str
    git_commit: str
    platform: str = Field(description="linux")
    arch: str = Field(description="Go's names: amd64, arm64")
    hypervisor: str
    accel: str = Field(description="kvm or tcg")
    accel_reason: str


class Healthz(BaseModel):
    status: Literal["ok"]


class HostGroupInfo(BaseModel):
    name: str
    count: int
    ram_bytes: int
    cpus: int
    gpu_count: int
    arch: str


class NodeInfo(BaseModel):
    hostname: str
    hostgroup: str
    ip: str
    ram_bytes: int
    cpus: int
    created_at: str
    tags: list[str]
    arch: str
    status: str = Field(description="Running, Paused or Stopped")
    persistent: bool


class NetworkRequestBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    allow: list[str] | None = Field(default=None, description="CIDRs it may reach; omitted: the host group's")
    drop: list[str] | None = Field(default=None, description="CIDRs dropped; omitted: the host group's")


class CreateNodeBody(BaseModel):
    """Slicer's create request. Fields this build cannot honour are accepted when empty."""

    model_config = ConfigDict(extra="ignore")

    hostname: str | None = None
    ip: str = ""
    ram_bytes: StrictInt | None = Field(default=None, ge=0)
    cpus: StrictInt | None = Field(default=None, ge=0)
    gpu_count: StrictInt = Field(default=0, ge=0)
    persistent: StrictBool | None = None
    disk_image: str = ""
    import_user: str = ""
    github_user: str = ""
    ssh_keys: list[str] = Field(default_factory=list)
    protected: StrictBool = False
    userdata: str | None = None
    tags: list[str] = Field(default_factory=list)
    secrets: list[str] | None = Field(default=None, description="the secrets it may see; omitted: all")
    pci_devices: list[str] = Field(default_factory=list)
    network: NetworkRequestBody | None = Field(
        default=None, description="this VM's own allow/drop lists (each omitted: inherited, []: none)"
    )
    ttl: str | None = Field(
        default=None,
        description="pyslicer: a Go duration (10m, 1h30m) after which the VM is removed; "
        "stored as an expires_at=<RFC 3339> tag",
    )


class NetworkPolicyBody(BaseModel):
    allow: list[str] = Field(description="CIDRs the VM may reach")
    drop: list[str] = Field(description="CIDRs dropped")


class NetworkOverrideBody(BaseModel):
    allow: list[str] | None = None
    drop: list[str] | None = None


class NetworkDescriptionBody(BaseModel):
    mode: str = Field(description="bridge or isolated")
    policy_source: str = Field(description="host_group, or override when the VM was forked with its own lists")
    host_group: NetworkPolicyBody
    override: NetworkOverrideBody | None = None
    effective: NetworkPolicyBody
    namespace: str = Field(
        default="", description="pyslicer: the network namespace its tap is in (ip netns exec ...); empty: the host's"
    )


class NodeDescriptionBody(NodeInfo):
    """``GET /vm/{hostname}``: the listing's fields and what the VM runs on; the last three are pyslicer's."""

    storage: str = Field(description="image: a copy-on-write overlay over the guest image (or a commit of it)")
    image: str
    commit_id: str = Field(description="the last commit made of it")
    parent_commit_id: str = Field(description="the commit it was forked from")
    network: NetworkDescriptionBody
    expires_at: str | None = Field(description="RFC 3339, from the expires_at= tag; null: never")
    disk_bytes: int
    protected: bool = Field(description="launched from the config file (never expires, cannot be deleted)")


class VMTags(BaseModel):
    hostname: str
    tags: list[str]


class TagPatchBody(BaseModel):
    """Exactly one of the three. ``name=<value>`` cannot be removed or changed and survives a replace; an added
    ``expires_at=`` replaces the one there."""

    model_config = ConfigDict(extra="forbid")

    add: list[str] | None = None
    remove: list[str] | None = None
    replace: list[str] | None = Field(default=None, description="every mutable tag; [] clears them")


class LifecycleResult(BaseModel):
    """What a pause, resume or shutdown left (Slicer answers text; its clients read only the status code)."""

    hostname: str
    status: str = Field(description="Running, Paused, Suspended or Stopped; Deleted for an ephemeral sandbox shut down")
    disk_removed: StrictBool = Field(default=False, description="an ephemeral sandbox goes with its disk")


class ShutdownBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    action: Literal["shutdown", "reboot", ""] | None = Field(
        default=None, description="both are a graceful stop (as on Slicer's default hypervisor); default shutdown"
    )


class CreatedNode(BaseModel):
    hostname: str
    hostgroup: str
    ip: str
    created_at: str
    arch: str
    persistent: bool


class DeleteResult(BaseModel):
    message: str
    disk_removed: str = Field(description='"true" (Slicer sends a string)')


class AgentHealth(BaseModel):
    hostname: str
    agent_uptime: int = Field(description="nanoseconds (Go's time.Duration)")
    agent_version: str
    system_uptime: int = Field(description="nanoseconds")
    userdata_ran: bool
    userdata_exit_code: int | None = None
    ip: str | None = None


class ConsoleLog(BaseModel):
    hostname: str
    lines: int
    content: str


# -- exec --------------------------------------------------------------------------------------------


class ExecStartedFrame(BaseModel):
    type: Literal["started"]
    pid: int
    started_at: str
    timestamp: str


class ExecOutputFrame(BaseModel):
    """Output; the payload is also under the channel's own name (older clients and the TS SDK read that)."""

    type: Literal["stdout", "stderr"]
    data: str
    stdout: str | None = None
    stderr: str | None = None
    encoding: Literal["base64"] | None = None
    timestamp: str


class ExecExitFrame(BaseModel):
    """The last frame. With ``error`` the command could not run (127: not found) or was cut short."""

    type: Literal["exit"]
    exit_code: int
    ended_at: str
    timestamp: str
    signal: str | None = None
    error: str | None = None


class ExecFrame(RootModel[ExecStartedFrame | ExecOutputFrame | ExecExitFrame]):
    """One NDJSON line of a streaming exec."""


class ExecResult(BaseModel):
    """A buffered exec's answer."""

    stdout: str
    stderr: str
    exit_code: int
    error: str | None = None
    encoding: Literal["base64"] | None = None
    pid: int | None = None
    started_at: str | None = None
    ended_at: str | None = None
    signal: str | None = None


# -- background exec ---------------------------------------------------------------------------------


class ExecBackgroundStarted(BaseModel):
    """``POST exec?background=true``'s answer (201)."""

    exec_id: str = Field(description="ex_ and 16 hex digits; use it with /vm/{hostname}/exec/{exec_id}/...")
    pid: int
    started_at: str
    ring_bytes: int = Field(description="the output ring's cap in bytes")


class ExecBackgroundInfo(BaseModel):
    exec_id: str
    pid: int
    command: str = Field(description="as given")
    args: list[str]
    cwd: str
    uid: int
    started_at: str
    running: bool
    exit_code: int | None
    signal: str | None = None
    ended_at: str | None
    bytes_written: int = Field(description="output bytes the process wrote")
    bytes_dropped: int = Field(description="of those, evicted from the ring")
    next_id: int = Field(description="the id the next log frame will get")
    ring_bytes: int


class ExecBackgroundKilled(BaseModel):
    exec_id: str
    pid: int
    running: bool
    signal_sent: str = Field(description='the signal\'s name (e.g. "TERM"); empty when the exec had ended')


class ExecBackgroundExit(BaseModel):
    """``wait-exit``'s answer: with ``timed_out`` the exec still ran when the timeout passed."""

    exec_id: str
    running: bool
    exit_code: int | None
    signal: str | None = None
    ended_at: str | None
    timed_out: bool


class ExecBackgroundDeleted(BaseModel):
    exec_id: str
    reaped: Literal[True]


class ExecLogFrame(BaseModel):
    """One NDJSON line of ``exec/{exec_id}/logs``: a ring record (``started``, ``stdout``/``stderr``, ``exit``) with
    its ``id``, or a ``gap`` (no id) where records were evicted before this reader got them."""

    type: Literal["started", "stdout", "stderr", "exit", "gap"]
    id: int | None = Field(default=None, description="from 1, one per record; absent on gap frames")
    timestamp: str
    pid: int | None = None
    started_at: str | None = None
    data: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    encoding: Literal["base64"] | None = None
    exit_code: int | None = None
    ended_at: str | None = None
    signal: str | None = None
    dropped_bytes: int | None = None
    dropped_frames: int | None = None
    message: str | None = None


# -- secrets -----------------------------------------------------------------------------------------


class SecretInfo(BaseModel):
    """A stored secret, without its value."""

    name: str
    size: int = Field(description="bytes")
    permissions: str = Field(description='octal, e.g. "0600"')
    uid: int
    gid: int
    modified_at: str = Field(description="RFC 3339 (what the SDKs read)")
    mod_time: str = Field(description="the same time, under the name of Slicer's reference page")


# -- the guest filesystem ----------------------------------------------------------------------------


class FsEntryInfo(BaseModel):
    """One entry, as lstat sees it (a symlink is not followed). Slicer's ``SlicerFSInfo``."""

    name: str
    type: Literal["file", "directory", "symlink"]
    size: int
    mtime: str = Field(description="RFC 3339 (Slicer's Go SDK decodes a time.Time)")
    mode: str = Field(description='permission bits in octal, e.g. "0644"')


class FsRemoved(BaseModel):
    path: str = Field(description="the path removed, ~ expanded")
    removed: Literal[True]


class FsWatchEventData(BaseModel):
    """The JSON ``data:`` of one ``event: watch``. Type ``overflow`` is no change but a note that events were
    lost (``message`` says how many); it counts toward neither ``one_shot`` nor ``max_events``."""

    id: int = Field(description="as on the event's id: line")
    type: Literal["create", "write", "remove", "rename", "chmod", "overflow"]
    path: str
    timestamp: str = Field(description="RFC 3339 with nanoseconds")
    size: int
    isDir: bool  # Slicer's name
    message: str | None = None


# -- stats -------------------------------------------------------------------------------------------


class StatsSnapshot(BaseModel):
    """The guest, as its agent read it: Slicer's ``SlicerSnapshot`` (byte counts are bytes)."""

    hostname: str
    arch: str = Field(description="x86_64 or aarch64")
    timestamp: str = Field(description="RFC 3339, the guest's clock (kept on the host's)")
    uptime: str = Field(description='since the guest booted, a Go duration in whole seconds: "6m53s"')
    totalCpus: int
    totalMemory: int
    memoryUsed: int = Field(description="totalMemory - memoryAvailable")
    memoryAvailable: int
    memoryUsedPercent: float
    loadAvg1: float
    loadAvg5: float
    loadAvg15: float
    diskReadTotal: int = Field(description="bytes read from the guest's disks since boot")
    diskWriteTotal: int
    networkReadTotal: int = Field(description="bytes received over every interface but lo since boot")
    networkWriteTotal: int
    diskIOInflight: int
    openConnections: int = Field(description="TCP connections in ESTABLISHED or CLOSE-WAIT (v4 and v6)")
    openFiles: int = Field(description="allocated file handles")
    entropy: int
    diskSpaceTotal: int = Field(description="of the root filesystem")
    diskSpaceUsed: int
    diskSpaceFree: int = Field(description="available to users (the root reserve is not counted)")
    diskSpaceUsedPercent: float = Field(description="diskSpaceUsed / diskSpaceTotal")


class HostCounters(BaseModel):
    """pyslicer's extension: the VM as the host counts it, without its agent (so also when it is paused).
    A figure the host could not read is left out. Network bytes are from the VM's side of its tap."""

    cpu_seconds: float | None = Field(default=None, description="QEMU's user + system CPU time")
    rss_bytes: int | None = Field(default=None, description="QEMU's resident memory")
    pss_bytes: int | None = Field(
        default=None, description="QEMU's proportional set size: its share of pages shared with other processes"
    )
    private_bytes: int | None = Field(
        default=None, description="memory only this QEMU holds (private clean + dirty): what its end gives back"
    )
    net_rx_bytes: int | None = Field(default=None, description="bytes the VM received")
    net_tx_bytes: int | None = Field(default=None, description="bytes the VM sent")
    disk_read_bytes: int | None = Field(default=None, description="read from the VM's disk, as QEMU counts")
    disk_write_bytes: int | None = None
    disk_read_ops: int | None = None
    disk_write_ops: int | None = None


class NodeStatsEntry(BaseModel):
    """One VM in ``/nodes/stats``: ``snapshot`` when its agent answered, else ``error`` (and no snapshot)."""

    hostname: str
    hostgroup: str
    ip: str
    created_at: str
    status: str = Field(description="Running, Paused or Stopped")
    snapshot: StatsSnapshot | None = None
    error: str | None = Field(default=None, description="why there is no snapshot (left out when there is one)")
    host: HostCounters = Field(description="pyslicer's extension; the SDKs ignore it")


# -- commits and forks -------------------------------------------------------------------------------


class CommitAnswer(BaseModel):
    hostname: str
    commit_id: str
    status: Literal["committed"]
    parent_status: str = Field(description="the source's status afterwards (stopped: it goes on from the commit)")
    mode: str = Field(description="disk: a cold commit, the disk of a stopped VM (hot, with memory, comes later)")
    tags: list[str]
    labels: dict[str, str]
    cache_key: str


class CommitListing(BaseModel):
    commit_id: str
    source_hostname: str
    source_host_group: str
    created_at: str
    mode: str
    tags: list[str]
    labels: dict[str, str]
    cache_key: str
    parent_commit_id: str = Field(description="pyslicer: the commit this one stands on (empty: the guest image)")
    size_bytes: int = Field(description="pyslicer: what its files take on the host's disk")
    used_by: list[str] = Field(
        description="pyslicer: VMs (and commits) that stand on it; it cannot be deleted before them"
    )


class CommitDeleted(BaseModel):
    commit_id: str
    status: Literal["deleted"]


class ForkAnswer(BaseModel):
    hostname: str
    source_hostname: str
    commit_id: str
    status: Literal["forked"]
    parent_status: str = Field(description="the source's status; empty when it was deleted")
    child_status: str = Field(description="running (wait=agent), or starting (wait=none)")
    mode: str
    persistent: bool
