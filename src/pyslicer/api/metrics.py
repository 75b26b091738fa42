"""Prometheus metrics with Slicer's names: read from the daemon and the host at scrape time."""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pyslicer.daemon import CommitFilter, Daemon, LaunchOutcome, NodeStats

# Slicer labels launches with the status its create answered.
LAUNCH_CODES = {
    LaunchOutcome.CREATED: "200",
    LaunchOutcome.TIMED_OUT: "408",
    LaunchOutcome.NOT_READY: "503",
    LaunchOutcome.FAILED: "500",
}


class DaemonCollector(Collector):
    """Reads the daemon and the host at scrape time, so nothing goes stale."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterable[Metric]:
        launches = CounterMetricFamily(
            "slicer_vm_launch", "VM launches by host group and result", labels=["host_group", "code"]
        )
        by_code: dict[tuple[str, str], int] = {}
        for (group, outcome), count in self.daemon.launch_counts.items():
            launch = (group, LAUNCH_CODES[outcome])
            by_code[launch] = by_code.get(launch, 0) + count
        for (group, code), count in sorted(by_code.items()):
            launches.add_metric([group, code], count)
        yield launches

        running = GaugeMetricFamily(
            "slicer_vm_running", "VMs by host group, origin and state", labels=["host_group", "api", "state"]
        )
        counts: dict[tuple[str, str, str], int] = {}
        for node in self.daemon.nodes.values():
            key = (node.record.host_group, "false" if node.record.protected else "true", node.state.api_status)
            counts[key] = counts.get(key, 0) + 1
        for key, count in sorted(counts.items()):
            running.add_metric(list(key), count)
        yield running

        commitment = self.daemon.memory_commitment()
        yield GaugeMetricFamily(
            "slicer_host_memory_committed_bytes",
            "RAM + VMM overhead of every VM holding memory, as the admission check counts it",
            value=commitment.committed_bytes,
        )
        yield GaugeMetricFamily(
            "slicer_host_memory_commit_limit_bytes",
            "memory_overcommit_ratio x host RAM: a create past it is refused",
            value=commitment.limit_bytes,
        )
        commits = GaugeMetricFamily("slicer_commits", "commits kept on this host, by mode", labels=["mode"])
        commit_bytes = GaugeMetricFamily(
            "slicer_commit_bytes", "bytes the commits' files take on the host's disk, by mode", labels=["mode"]
        )
        by_mode: dict[str, tuple[int, int]] = {}
        for info in self.daemon.list_commits(CommitFilter()):
            count, size = by_mode.get(info.commit.mode, (0, 0))
            by_mode[info.commit.mode] = (count + 1, size + info.commit.size_bytes)
        for mode, (count, size) in sorted(by_mode.items()):
            commits.add_metric([mode], count)
            commit_bytes.add_metric([mode], size)
        yield commits
        yield commit_bytes

        gpus = GaugeMetricFamily("slicer_vm_gpu_count", "GPUs per host group", labels=["host_group"])
        for name in self.daemon.groups:
            gpus.add_metric([name], 0)
        yield gpus

        snapshots = GaugeMetricFamily(
            "slicer_snapshot_bytes", "disk taken by saved VM states (pyslicer)", labels=["kind"]
        )
        for kind, size in sorted(self.daemon.snapshot_usage().items()):
            snapshots.add_metric([kind], size)
        yield snapshots
        yield from system_metrics()


def system_metrics() -> Iterable[Metric]:
    load1, load5, load15 = os.getloadavg()
    for name, value in (("1", load1), ("5", load5), ("15", load15)):
        yield GaugeMetricFamily(f"slicer_system_load_avg_{name}", f"{name}-minute load average", value=value)
    meminfo: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            meminfo[key] = int(rest.split()[0]) * 1024
    yield GaugeMetricFamily("slicer_system_memory_total_bytes", "host memory", value=meminfo.get("MemTotal", 0))
    yield GaugeMetricFamily(
        "slicer_system_memory_available_bytes", "host memory available", value=meminfo.get("MemAvailable", 0)
    )
    rx = tx = 0
    with open("/proc/net/dev") as f:
        for line in list(f)[2:]:
            name, _, fields = line.partition(":")
            if name.strip() != "lo":
                values = fields.split()
                rx += int(values[0])
                tx += int(values[8])
    yield GaugeMetricFamily("slicer_system_egress_rx", "bytes received by host interfaces", value=rx)
    yield GaugeMetricFamily("slicer_system_egress_tx", "bytes sent by host interfaces", value=tx)
    with open("/proc/sys/fs/file-nr") as f:
        open_files = int(f.read().split()[0])
    yield GaugeMetricFamily("slicer_system_open_files", "open file handles on the host", value=open_files)
    connections = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                connections += sum(1 for line in list(f)[1:] if line.split()[3] == "01")
        except OSError:
            pass
    yield GaugeMetricFamily("slicer_system_open_connections", "established TCP connections", value=connections)


# The guest's figures (its agent's snapshot): (series, help, kind, field of GuestSnapshot).
GUEST_SERIES = (
    ("slicer_vm_cpus", "vCPUs the guest sees", "gauge", "totalCpus"),
    ("slicer_vm_memory_total_bytes", "guest memory", "gauge", "totalMemory"),
    ("slicer_vm_memory_used_bytes", "guest memory in use (total - available)", "gauge", "memoryUsed"),
    ("slicer_vm_memory_available_bytes", "guest memory available", "gauge", "memoryAvailable"),
    ("slicer_vm_load_avg_1", "guest 1-minute load average", "gauge", "loadAvg1"),
    ("slicer_vm_load_avg_5", "guest 5-minute load average", "gauge", "loadAvg5"),
    ("slicer_vm_load_avg_15", "guest 15-minute load average", "gauge", "loadAvg15"),
    ("slicer_vm_disk_read_bytes", "bytes the guest read from its disks", "counter", "diskReadTotal"),
    ("slicer_vm_disk_written_bytes", "bytes the guest wrote to its disks", "counter", "diskWriteTotal"),
    ("slicer_vm_network_received_bytes", "bytes the guest received (all but lo)", "counter", "networkReadTotal"),
    ("slicer_vm_network_sent_bytes", "bytes the guest sent (all but lo)", "counter", "networkWriteTotal"),
    ("slicer_vm_disk_io_inflight", "guest disk I/Os in flight", "gauge", "diskIOInflight"),
    ("slicer_vm_open_connections", "open TCP connections in the guest", "gauge", "openConnections"),
    ("slicer_vm_open_files", "file handles allocated in the guest", "gauge", "openFiles"),
    ("slicer_vm_entropy", "guest entropy pool", "gauge", "entropy"),
    ("slicer_vm_disk_space_total_bytes", "size of the guest's root filesystem", "gauge", "diskSpaceTotal"),
    ("slicer_vm_disk_space_used_bytes", "used on the guest's root filesystem", "gauge", "diskSpaceUsed"),
    ("slicer_vm_disk_space_free_bytes", "available on the guest's root filesystem", "gauge", "diskSpaceFree"),
)
# What the host counts without the agent: (series, help, kind, field of HostCounters).
HOST_SERIES = (
    ("slicer_vm_host_cpu_seconds", "CPU time of the VM's QEMU process", "counter", "cpu_seconds"),
    ("slicer_vm_host_rss_bytes", "resident memory of the VM's QEMU process", "gauge", "rss_bytes"),
    ("slicer_vm_host_pss_bytes", "proportional set size of the VM's QEMU process", "gauge", "pss_bytes"),
    ("slicer_vm_host_private_bytes", "memory only the VM's QEMU process holds", "gauge", "private_bytes"),
    ("slicer_vm_host_network_received_bytes", "bytes the VM received through its tap", "counter", "net_rx_bytes"),
    ("slicer_vm_host_network_sent_bytes", "bytes the VM sent through its tap", "counter", "net_tx_bytes"),
    ("slicer_vm_host_disk_read_bytes", "bytes QEMU read for the VM's disk", "counter", "disk_read_bytes"),
    ("slicer_vm_host_disk_written_bytes", "bytes QEMU wrote for the VM's disk", "counter", "disk_write_bytes"),
)
VM_LABELS = ["host_group", "hostname"]


def _family(name: str, documentation: str, kind: str) -> CounterMetricFamily | GaugeMetricFamily:
    if kind == "counter":
        return CounterMetricFamily(name, documentation, labels=VM_LABELS)
    return GaugeMetricFamily(name, documentation, labels=VM_LABELS)


def vm_metrics(entries: list[NodeStats]) -> Iterable[Metric]:
    """Per-VM series from one round of stats: the guest's where its agent answered, the host's where read."""
    up = GaugeMetricFamily("slicer_vm_stats_up", "1 when the VM's agent answered for stats", labels=VM_LABELS)
    uptime = GaugeMetricFamily("slicer_vm_uptime_seconds", "since the guest booted", labels=VM_LABELS)
    guest = [(_family(name, text, kind), key) for name, text, kind, key in GUEST_SERIES]
    host = [(_family(name, text, kind), key) for name, text, kind, key in HOST_SERIES]
    for entry in entries:
        labels = [entry.host_group, entry.hostname]
        up.add_metric(labels, 1 if entry.snapshot is not None else 0)
        if entry.snapshot is not None:
            uptime.add_metric(labels, entry.snapshot.uptime_seconds)
            for family, key in guest:
                family.add_metric(labels, getattr(entry.snapshot, key))
        for family, key in host:
            value = getattr(entry.host, key)
            if value is not None:
                family.add_metric(labels, value)
    yield up
    yield uptime
    for family, _ in guest:
        yield family
    for family, _ in host:
        yield family


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


class ApiMetrics:
    def __init__(self, daemon: Daemon) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("slicer_api_requests", "API requests", ["method", "code"], registry=self.registry)
        self.duration = Histogram(
            "slicer_api_request_duration_seconds", "API request duration", ["method", "code"], registry=self.registry
        )
        self.registry.register(DaemonCollector(daemon))

    def render(self, vm_stats: list[NodeStats] | None = None) -> bytes:
        """The daemon's series, and each VM's from ``vm_stats`` (one round of ``Daemon.stats``)."""
        body = generate_latest(self.registry)
        if vm_stats is not None:
            per_vm = CollectorRegistry(auto_describe=False)
            per_vm.register(_Families(vm_metrics(vm_stats)))
            body += generate_latest(per_vm)
        return body

    def observe(self, method: str, code: int, seconds: float) -> None:
        self.requests.labels(method, str(code)).inc()
        self.duration.labels(method, str(code)).observe(seconds)
