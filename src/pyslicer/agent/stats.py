"""The ``stats`` op: one snapshot of the guest, read from ``/proc`` and ``statvfs("/")``, in Slicer's field names.

Cheap enough to answer every second for many VMs under TCG, where every syscall and every line of Python costs:
no subprocess, no import beyond what the agent has loaded, each /proc file kept open and read with one
``pread`` (``ProcFiles``), only the lines needed parsed, the uptime from ``CLOCK_BOOTTIME`` (what
``/proc/uptime`` says, for one call). The parsers take text so they can be tested on samples; a figure the guest
cannot give is 0.
"""

from __future__ import annotations

import os
import time

from pyslicer.agent.fs import rfc3339
from pyslicer.agent.session import StreamSession

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyslicer.protocol import StatsSnapshot

SECTOR = 512  # /proc/diskstats counts 512-byte sectors whatever the device's block size
READ_SIZE = 65536
MEMINFO_KEYS = frozenset({"MemTotal", "MemFree", "MemAvailable"})


class ProcFiles:
    """The /proc files a snapshot reads, each opened once and read again from offset 0 with ``pread``: the
    kernel builds a /proc file's text afresh at every read from 0, and under TCG an open and a close cost as
    much as the read. A file that cannot be opened or read is "" (a kernel without it is no reason to fail),
    and is tried again at the next snapshot."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def read(self, path: str) -> str:
        fd = self._fds.get(path)
        try:
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            data = os.pread(fd, READ_SIZE, 0)
            while len(data) % READ_SIZE == 0 and data:  # one read takes a whole small file; a big one needs more
                more = os.pread(fd, READ_SIZE, len(data))
                if not more:
                    break
                data += more
        except OSError:
            self.forget(path)
            return ""
        return data.decode("ascii", "replace")

    def forget(self, path: str) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)


def parse_meminfo(text: str) -> dict[str, int]:
    """``MemTotal``, ``MemFree`` and ``MemAvailable`` of ``/proc/meminfo``, in bytes (they lead the file: the
    rest is not parsed)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in MEMINFO_KEYS:
            fields = rest.split()
            if fields and fields[0].isdigit():
                values[key] = int(fields[0]) * (1024 if fields[1:2] == ["kB"] else 1)
            if len(values) == len(MEMINFO_KEYS):
                break
    return values


def parse_loadavg(text: str) -> tuple[float, float, float]:
    fields = text.split()
    try:
        return float(fields[0]), float(fields[1]), float(fields[2])
    except (IndexError, ValueError):
        return 0.0, 0.0, 0.0


def is_whole_disk(name: str) -> bool:
    """A disk, not a partition of one nor a loop, ram or device-mapper device (whose I/O lands on a disk too)."""
    if name.startswith(("loop", "ram", "dm-", "zram", "md", "sr", "fd")):
        return False
    if name.startswith(("nvme", "mmcblk")):
        return "p" not in name  # nvme0n1p1, mmcblk0p1 are partitions
    return not name[-1:].isdigit()


def parse_diskstats(text: str) -> tuple[int, int, int]:
    """Bytes read, bytes written and I/Os in flight, over the whole disks of ``/proc/diskstats``."""
    read = written = inflight = 0
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 12 or not is_whole_disk(fields[2]):
            continue
        try:
            read += int(fields[5]) * SECTOR
            written += int(fields[9]) * SECTOR
            inflight += int(fields[11])
        except ValueError:
            continue
    return read, written, inflight


def parse_net_dev(text: str) -> tuple[int, int]:
    """Bytes received and sent over every interface but loopback (``/proc/net/dev``)."""
    received = sent = 0
    for line in text.splitlines()[2:]:
        name, colon, rest = line.partition(":")
        fields = rest.split()
        if not colon or name.strip() == "lo" or len(fields) < 9:
            continue
        try:
            received += int(fields[0])
            sent += int(fields[8])
        except ValueError:
            continue
    return received, sent


def established_connections(snmp: str) -> int:
    """``CurrEstab`` of ``/proc/net/snmp``: the open TCP connections, IPv4 and IPv6 (RFC 1213's tcpCurrEstab:
    ESTABLISHED or CLOSE-WAIT, whose socket its program still holds). One small file whatever the number of
    connections, where ``/proc/net/tcp`` and ``tcp6`` list every socket (a guest with thousands would pay for
    each line at every snapshot)."""
    names: list[str] | None = None
    for line in snmp.splitlines():
        if not line.startswith("Tcp:"):
            continue
        fields = line.split()[1:]
        if names is None:
            names = fields
            continue
        if "CurrEstab" in names and len(fields) == len(names):
            value = fields[names.index("CurrEstab")]
            return int(value) if value.isdigit() else 0
        return 0
    return 0


def first_int(text: str) -> int:
    first = text.split(None, 1)[0] if text else ""
    return int(first) if first.isdigit() else 0


def go_duration(seconds: float) -> str:
    """Whole seconds as Go's ``time.Duration.String()`` writes them: ``45s``, ``6m53s``, ``26h0m5s``."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def percent(part: int, whole: int) -> float:
    return part * 100.0 / whole if whole > 0 else 0.0


PROC = ProcFiles()
# A micro-VM's vCPUs are fixed at launch (no hotplug), and glibc reads /sys for the count at every call.
CPU_COUNT = os.cpu_count() or 1


def snapshot(proc: ProcFiles = PROC) -> StatsSnapshot:
    read_proc = proc.read
    uname = os.uname()
    memory = parse_meminfo(read_proc("/proc/meminfo"))
    total_memory = memory.get("MemTotal", 0)
    available = min(memory.get("MemAvailable", memory.get("MemFree", 0)), total_memory)
    load1, load5, load15 = parse_loadavg(read_proc("/proc/loadavg"))
    disk_read, disk_written, inflight = parse_diskstats(read_proc("/proc/diskstats"))
    net_received, net_sent = parse_net_dev(read_proc("/proc/net/dev"))
    connections = established_connections(read_proc("/proc/net/snmp"))
    try:
        fs = os.statvfs("/")
        space_total = fs.f_blocks * fs.f_frsize
        space_used = (fs.f_blocks - fs.f_bfree) * fs.f_frsize
        space_free = fs.f_bavail * fs.f_frsize  # what a user may still write (the root's reserve is not free)
    except OSError:
        space_total = space_used = space_free = 0
    return {
        "hostname": uname.nodename,
        "arch": uname.machine,
        "timestamp": rfc3339(time.time_ns()),
        "uptime": go_duration(time.clock_gettime(time.CLOCK_BOOTTIME)),
        "totalCpus": CPU_COUNT,
        "totalMemory": total_memory,
        "memoryUsed": total_memory - available,
        "memoryAvailable": available,
        "memoryUsedPercent": percent(total_memory - available, total_memory),
        "loadAvg1": load1,
        "loadAvg5": load5,
        "loadAvg15": load15,
        "diskReadTotal": disk_read,
        "diskWriteTotal": disk_written,
        "networkReadTotal": net_received,
        "networkWriteTotal": net_sent,
        "diskIOInflight": inflight,
        "openConnections": connections,
        "openFiles": first_int(read_proc("/proc/sys/fs/file-nr")),
        "entropy": first_int(read_proc("/proc/sys/kernel/random/entropy_avail")),
        "diskSpaceTotal": space_total,
        "diskSpaceUsed": space_used,
        "diskSpaceFree": space_free,
        "diskSpaceUsedPercent": percent(space_used, space_total),
    }


class StatsSession(StreamSession):
    """Answers ``stats`` with one ``StatsSnapshot`` and finishes."""

    def start(self) -> None:
        self._send_event(snapshot())
        self._on_finish(self)

    def on_data(self, channel: int, data: bytes) -> None:
        pass

    def on_eof(self, channel: int) -> None:
        pass

    def on_window(self, increment: int) -> None:
        pass

    def cancel(self) -> None:
        self._cancelled = True
