"""Stats of every VM: what its agent says of the guest, and what the host counts without asking it.

A guest's snapshot comes from the agent's ``stats`` op (``agent/stats.py``) and is rebuilt here field by field:
a guest is input like any other, and one bad field refuses its whole snapshot (the entry says why) rather than
pass a wrong figure on. The host side needs no agent, so it is there for a paused or hung guest too: QEMU's
CPU time (``/proc/<pid>/stat``), its memory as RSS, PSS and private bytes (``/proc/<pid>/smaps_rollup``: PSS
counts a page shared with other processes in part, so the PSS of every VM adds up to what they hold together),
the tap's bytes (``/proc/<pid>/net/dev``: QEMU runs in the daemon's
network namespace, so that file shows it) and the disks' I/O (QMP ``query-blockstats``).

Every VM is asked at once, each under a short timeout: a VM that cannot answer (paused, booting, stopped, a
guest too busy) gets ``error`` and no snapshot, never a failed request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyslicer.daemon.lifecycle import NodeState
from pyslicer.daemon.node import Node
from pyslicer.durations import parse_go_duration
from pyslicer.errors import AgentError, HypervisorError, InvalidArgument, SlicerError
from pyslicer.protocol import Event, Op

if TYPE_CHECKING:
    from pyslicer import protocol

log = logging.getLogger(__name__)

GUEST_TIMEOUT = 2.0  # per VM; a 1-vCPU TCG guest answers in tens of milliseconds when it is not starved
HOST_TIMEOUT = 1.0  # QMP, per VM
MAX_COUNTER = 2**63 - 1  # Go decodes the counters as uint64/int64/float64: keep them exact and in range
MAX_TEXT = 255
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class MalformedStats(ValueError):
    """A guest's stats answer that does not have the shape of a snapshot."""


# -- the guest's snapshot ----------------------------------------------------------------------------

_TEXT_FIELDS = ("hostname", "arch")
_INT_FIELDS = (
    "totalCpus",
    "totalMemory",
    "memoryUsed",
    "memoryAvailable",
    "diskReadTotal",
    "diskWriteTotal",
    "networkReadTotal",
    "networkWriteTotal",
    "diskIOInflight",
    "openConnections",
    "openFiles",
    "entropy",
    "diskSpaceTotal",
    "diskSpaceUsed",
    "diskSpaceFree",
)
_FLOAT_FIELDS = ("loadAvg1", "loadAvg5", "loadAvg15")
_PERCENT_FIELDS = ("memoryUsedPercent", "diskSpaceUsedPercent")


def _counter(body: Mapping[str, Any], name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNTER:
        raise MalformedStats(f"{name} must be a whole number from 0 to 2^63-1, not {value!r:.40}")
    return value


def _number(body: Mapping[str, Any], name: str, ceiling: float) -> float:
    value = body.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= ceiling:
        raise MalformedStats(f"{name} must be a number from 0 to {ceiling:g}, not {value!r:.40}")
    return float(value)  # a NaN fails the range check above; JSON has no infinity


def _text(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable():
        raise MalformedStats(f"{name} must be printable text of at most {MAX_TEXT} characters")
    return value


@dataclass(frozen=True, slots=True)
class GuestSnapshot:
    """One moment of a guest, in Slicer's field names (``protocol.StatsSnapshot``); byte counts in bytes."""

    hostname: str
    arch: str
    timestamp: str  # RFC 3339, the guest's clock (kept on the host's)
    uptime: str  # a Go duration, whole seconds
    totalCpus: int  # the fields have Slicer's names, as the SDKs decode them
    totalMemory: int
    memoryUsed: int
    memoryAvailable: int
    memoryUsedPercent: float
    loadAvg1: float
    loadAvg5: float
    loadAvg15: float
    diskReadTotal: int
    diskWriteTotal: int
    networkReadTotal: int
    networkWriteTotal: int
    diskIOInflight: int
    openConnections: int
    openFiles: int
    entropy: int
    diskSpaceTotal: int
    diskSpaceUsed: int
    diskSpaceFree: int
    diskSpaceUsedPercent: float

    @property
    def uptime_seconds(self) -> float:
        return parse_go_duration(self.uptime)

    @classmethod
    def from_guest(cls, body: object) -> GuestSnapshot:
        """Rebuilt from the agent's answer. Raises MalformedStats naming the first field that does not fit."""
        if not isinstance(body, dict):
            raise MalformedStats("the answer is not an object")
        if body.get("type") == Event.ERROR:
            raise MalformedStats(f"the agent refused: {str(body.get('error'))[:200]}")
        timestamp = _text(body, "timestamp")
        if not _RFC3339.fullmatch(timestamp):
            raise MalformedStats(f"timestamp must be RFC 3339, not {timestamp!r:.40}")
        uptime = _text(body, "uptime")
        try:
            if parse_go_duration(uptime) < 0:
                raise MalformedStats(f"uptime must not be negative: {uptime!r}")
        except InvalidArgument:
            raise MalformedStats(f"uptime must be a Go duration, not {uptime!r:.40}") from None
        values: dict[str, Any] = {name: _text(body, name) for name in _TEXT_FIELDS}
        values |= {name: _counter(body, name) for name in _INT_FIELDS}
        values |= {name: _number(body, name, 1e9) for name in _FLOAT_FIELDS}
        values |= {name: _number(body, name, 100.0) for name in _PERCENT_FIELDS}
        if values["totalCpus"] < 1:
            raise MalformedStats("totalCpus must be at least 1")
        return cls(timestamp=timestamp, uptime=uptime, **values)


# -- what the host counts ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostCounters:
    """A VM as the host sees it; None where a figure could not be read. Network bytes are the VM's view:
    ``net_rx_bytes`` is what its tap delivered to it, ``net_tx_bytes`` what it sent."""

    cpu_seconds: float | None = None  # QEMU's user + system CPU time
    rss_bytes: int | None = None
    pss_bytes: int | None = None
    private_bytes: int | None = None  # only this QEMU's: what its end would give back
    net_rx_bytes: int | None = None
    net_tx_bytes: int | None = None
    disk_read_bytes: int | None = None
    disk_write_bytes: int | None = None
    disk_read_ops: int | None = None
    disk_write_ops: int | None = None


def parse_process_stat(text: str) -> tuple[float, int] | None:
    """CPU seconds (user + system) and RSS bytes from ``/proc/<pid>/stat``; None when it does not parse."""
    # The command name (field 2) is in parentheses and may hold spaces or ")": split after the last ")".
    _, paren, rest = text.rpartition(")")
    fields = rest.split()
    if not paren or len(fields) < 22:
        return None
    try:
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        pages = int(fields[21])  # rss (field 24)
    except ValueError:
        return None
    if ticks < 0 or pages < 0:
        return None
    return ticks / _CLOCK_TICKS, pages * _PAGE_SIZE


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    rss_bytes: int
    pss_bytes: int
    private_bytes: int


def parse_smaps_rollup(text: str) -> ProcessMemory | None:
    """RSS, PSS and private (clean + dirty) bytes from ``/proc/<pid>/smaps_rollup``; None when a figure is
    missing or does not parse."""
    kib: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        key, colon, rest = line.partition(":")
        value, _, unit = rest.strip().partition(" ")
        if colon and unit == "kB" and value.isdigit():
            kib[key] = int(value)
    try:
        private = kib["Private_Clean"] + kib["Private_Dirty"]
        return ProcessMemory(kib["Rss"] * 1024, kib["Pss"] * 1024, private * 1024)
    except KeyError:
        return None


def parse_tap_bytes(text: str, tap: str) -> tuple[int, int] | None:
    """The VM's received and sent bytes through ``tap`` (the tap's sent and received, in ``/proc/net/dev``)."""
    for line in text.splitlines()[2:]:
        name, colon, rest = line.partition(":")
        fields = rest.split()
        if colon and name.strip() == tap and len(fields) >= 9:
            try:
                tap_received, tap_sent = int(fields[0]), int(fields[8])
            except ValueError:
                return None
            return tap_sent, tap_received
    return None


def _read(path: str) -> str:
    try:
        with open(path, "rb") as file:
            return file.read(1 << 20).decode("ascii", "replace")
    except OSError:
        return ""


@dataclass(frozen=True, slots=True)
class ProcessCounters:
    cpu_seconds: float | None = None
    rss_bytes: int | None = None
    memory: ProcessMemory | None = None
    network: tuple[int, int] | None = None


def read_process_counters(pid: int, tap: str | None) -> ProcessCounters:
    """Blocking (run it in a thread: reading smaps_rollup walks QEMU's mappings): CPU, memory and the tap's
    bytes of one QEMU process."""
    process = parse_process_stat(_read(f"/proc/{pid}/stat"))
    memory = parse_smaps_rollup(_read(f"/proc/{pid}/smaps_rollup"))
    network = parse_tap_bytes(_read(f"/proc/{pid}/net/dev"), tap) if tap else None
    return ProcessCounters(
        cpu_seconds=process[0] if process else None,
        rss_bytes=memory.rss_bytes if memory else process[1] if process else None,
        memory=memory,
        network=network,
    )


# -- one entry per node --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeStats:
    """One node's entry: ``snapshot`` when its agent answered, else ``error`` saying why not."""

    hostname: str
    host_group: str
    ip: str
    created_at: str
    status: str
    snapshot: GuestSnapshot | None = None
    error: str | None = None
    host: HostCounters = field(default_factory=HostCounters)


async def guest_snapshot(node: Node, timeout: float = GUEST_TIMEOUT) -> GuestSnapshot:
    """Ask the node's agent. Raises Conflict when the VM is not running, AgentError when its agent is not
    reachable, does not answer within ``timeout`` or answers with something that is not a snapshot."""
    request: protocol.StatsRequest = {"op": Op.STATS}
    answer = await node.agent().call(request, timeout=timeout)
    try:
        return GuestSnapshot.from_guest(answer)
    except MalformedStats as exc:
        raise AgentError(f"agent on {node.hostname} sent unusable stats: {exc}", code="bad_agent_answer") from None


async def _block_stats(node: Node) -> tuple[int, int, int, int] | None:
    vm = node.vm
    if vm is None:
        return None
    try:
        async with asyncio.timeout(HOST_TIMEOUT):
            block = await vm.block_stats()
    except (HypervisorError, TimeoutError) as exc:
        log.debug("%s: no block stats: %s", node.hostname, exc)
        return None
    return block.read_bytes, block.write_bytes, block.read_operations, block.write_operations


async def _guest_entry(node: Node, timeout: float) -> tuple[GuestSnapshot | None, str | None]:
    if node.state is NodeState.PAUSED:
        return None, f"{node.hostname} is paused"
    try:
        return await guest_snapshot(node, timeout), None
    except SlicerError as exc:
        return None, exc.message


async def collect(
    nodes: Iterable[Node], taps: Mapping[str, str], *, guest_timeout: float = GUEST_TIMEOUT
) -> list[NodeStats]:
    """One entry per node, in the order given, every node asked at once. ``taps`` maps a hostname to its
    tap device. Raises nothing: what a node cannot say is in its entry."""
    chosen = list(nodes)
    processes = [(node.vm.pid, taps.get(node.hostname)) if node.vm is not None else None for node in chosen]
    guests = asyncio.gather(*(_guest_entry(node, guest_timeout) for node in chosen))
    blocks = asyncio.gather(*(_block_stats(node) for node in chosen))
    host_side = asyncio.to_thread(
        lambda: [read_process_counters(*process) if process is not None else ProcessCounters() for process in processes]
    )
    guest_results, block_results, host_results = await asyncio.gather(guests, blocks, host_side)
    entries = []
    for node, (snapshot, error), block, process in zip(chosen, guest_results, block_results, host_results, strict=True):
        record = node.record
        network, memory = process.network, process.memory
        host = HostCounters(
            cpu_seconds=process.cpu_seconds,
            rss_bytes=process.rss_bytes,
            pss_bytes=memory.pss_bytes if memory else None,
            private_bytes=memory.private_bytes if memory else None,
            net_rx_bytes=network[0] if network else None,
            net_tx_bytes=network[1] if network else None,
            disk_read_bytes=block[0] if block else None,
            disk_write_bytes=block[1] if block else None,
            disk_read_ops=block[2] if block else None,
            disk_write_ops=block[3] if block else None,
        )
        entries.append(
            NodeStats(
                hostname=record.hostname,
                host_group=record.host_group,
                ip=record.ip,
                created_at=record.created_at,
                status=node.state.api_status,
                snapshot=snapshot,
                error=error,
                host=host,
            )
        )
    return entries
