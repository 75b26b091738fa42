"""The daemon: host groups, the node lifecycle, the registry; no HTTP here."""

from pyslicer.daemon.commits import CommitFilter, CommitRecord, CommitRequest, ForkNetwork, ForkRequest
from pyslicer.daemon.daemon import CommitInfo, CommitResult, Daemon, DaemonInfo, ForkResult, machine_arch
from pyslicer.daemon.describe import NetworkDescription, NetworkOverride, NetworkPolicy, NodeDescription
from pyslicer.daemon.exec import (
    ExecEvent,
    ExecExited,
    ExecFailed,
    ExecOutcome,
    ExecOutput,
    ExecProcess,
    ExecRequest,
    ExecStarted,
)
from pyslicer.daemon.fleet import LaunchOutcome
from pyslicer.daemon.host_groups import HostGroup, NodeRequest
from pyslicer.daemon.lifecycle import NodeState
from pyslicer.daemon.node import AgentHealth, Node
from pyslicer.daemon.secrets import MAX_SECRET_BYTES, NewSecret, SecretChange, SecretInfo
from pyslicer.daemon.stats import GuestSnapshot, HostCounters, NodeStats
from pyslicer.daemon.tags import TagChange, TagOperation, format_expires_at

__all__ = [
    "MAX_SECRET_BYTES",
    "AgentHealth",
    "CommitFilter",
    "CommitInfo",
    "CommitRecord",
    "CommitRequest",
    "CommitResult",
    "Daemon",
    "DaemonInfo",
    "ExecEvent",
    "ExecExited",
    "ExecFailed",
    "ExecOutcome",
    "ExecOutput",
    "ExecProcess",
    "ExecRequest",
    "ExecStarted",
    "ForkNetwork",
    "ForkRequest",
    "ForkResult",
    "GuestSnapshot",
    "HostCounters",
    "HostGroup",
    "LaunchOutcome",
    "NetworkDescription",
    "NetworkOverride",
    "NetworkPolicy",
    "NewSecret",
    "Node",
    "NodeDescription",
    "NodeRequest",
    "NodeState",
    "NodeStats",
    "SecretChange",
    "SecretInfo",
    "TagChange",
    "TagOperation",
    "format_expires_at",
    "machine_arch",
]
