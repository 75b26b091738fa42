"""Prometheus metrics with Slicer's names: read from the daemon and the host at scrape time."""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pyslicer.daemon import Daemon, LaunchOutcome

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

        gpus = GaugeMetricFamily("slicer_vm_gpu_count", "GPUs per host group", labels=["host_group"])
        for name in self.daemon.groups:
            gpus.add_metric([name], 0)
        yield gpus
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


class ApiMetrics:
    def __init__(self, daemon: Daemon) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("slicer_api_requests", "API requests", ["method", "code"], registry=self.registry)
        self.duration = Histogram(
            "slicer_api_request_duration_seconds", "API request duration", ["method", "code"], registry=self.registry
        )
        self.registry.register(DaemonCollector(daemon))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe(self, method: str, code: int, seconds: float) -> None:
        self.requests.labels(method, str(code)).inc()
        self.duration.labels(method, str(code)).observe(seconds)
