"""Stats against the shared sandbox: the snapshot's shape and plausibility, counters that move, one VM's array
of one, the Prometheus series, the SDK and ``slicer vm top --once``."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import sys
import time
from typing import Any

import httpx

from pyslicer.client import SlicerClient
from tests.integration.conftest import RunningDaemon
from tests.integration.helpers import assert_error, sh
from tests.integration.test_clients import cli

MIB = 1024 * 1024
SBOX_RAM = 512 * MIB  # the sbox group's ram_mb in conftest.CONFIG
SBOX_DISK = 3 * 1024 * MIB  # its storage_size
BASE_DISK = 1024 * MIB  # the image's root filesystem, before the guest grows it in the background
INTEGER_FIELDS = (
    "totalCpus", "totalMemory", "memoryUsed", "memoryAvailable", "diskIOInflight", "openConnections",
    "openFiles", "entropy", "diskSpaceTotal", "diskSpaceUsed", "diskSpaceFree",
)  # fmt: skip  # what the Go SDK decodes as int/uint64
FLOAT_FIELDS = (
    "memoryUsedPercent", "loadAvg1", "loadAvg5", "loadAvg15", "diskReadTotal", "diskWriteTotal",
    "networkReadTotal", "networkWriteTotal", "diskSpaceUsedPercent",
)  # fmt: skip


def entry_of(api: httpx.Client, hostname: str) -> dict[str, Any]:
    response = api.get(f"/node/{hostname}/stats")
    assert response.status_code == 200, response.text
    entries = response.json()
    assert isinstance(entries, list) and len(entries) == 1, entries
    entry: dict[str, Any] = entries[0]
    assert entry["hostname"] == hostname
    assert "error" not in entry, entry
    return entry


def test_every_vm_has_an_entry_with_a_full_snapshot(api: httpx.Client, sandbox: str) -> None:
    response = api.get("/nodes/stats")
    assert response.status_code == 200, response.text
    entries = {entry["hostname"]: entry for entry in response.json()}
    listed = {node["hostname"] for node in api.get("/nodes").json()}
    assert set(entries) == listed and sandbox in entries
    entry = entries[sandbox]
    node = next(node for node in api.get("/nodes").json() if node["hostname"] == sandbox)
    assert (entry["ip"], entry["created_at"], entry["hostgroup"]) == (node["ip"], node["created_at"], "sbox")
    snapshot = entry["snapshot"]
    assert set(snapshot) == {"hostname", "arch", "timestamp", "uptime", *INTEGER_FIELDS, *FLOAT_FIELDS}
    for name in INTEGER_FIELDS:
        assert type(snapshot[name]) is int and snapshot[name] >= 0, name
    for name in FLOAT_FIELDS:
        assert isinstance(snapshot[name], (int, float)) and snapshot[name] >= 0, name
    assert snapshot["hostname"] == sandbox and snapshot["arch"] == "x86_64"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", snapshot["timestamp"])
    assert re.fullmatch(r"(\d+h)?(\d+m)?\d+s", snapshot["uptime"])


def test_the_figures_are_the_vms(api: httpx.Client, sandbox: str) -> None:
    snapshot = entry_of(api, sandbox)["snapshot"]
    assert snapshot["totalCpus"] == 2  # the sbox group's vcpu
    assert 0.8 * SBOX_RAM < snapshot["totalMemory"] <= SBOX_RAM  # the kernel keeps a little for itself
    assert snapshot["memoryUsed"] + snapshot["memoryAvailable"] == snapshot["totalMemory"]
    assert 0 < snapshot["memoryUsedPercent"] < 100
    assert 0.9 * BASE_DISK < snapshot["diskSpaceTotal"] <= SBOX_DISK
    assert snapshot["diskSpaceUsed"] + snapshot["diskSpaceFree"] <= snapshot["diskSpaceTotal"]
    assert snapshot["diskReadTotal"] > 0  # it booted from that disk
    # (openFiles is the kernel's file-nr, a per-CPU counter read without folding: 0 is possible early on)
    assert snapshot["entropy"] > 0, snapshot
    df = sh(api, sandbox, "df -k / | tail -1").split()  # the guest's own view: total and used in KiB
    # The same filesystem (or grown since by the guest's background resize, never shrunk):
    assert snapshot["diskSpaceTotal"] * 0.98 <= int(df[1]) * 1024 <= SBOX_DISK
    memory = sh(api, sandbox, "head -1 /proc/meminfo").split()
    assert int(memory[1]) * 1024 == snapshot["totalMemory"]


def test_host_counters_need_no_agent_and_are_plausible(api: httpx.Client, sandbox: str) -> None:
    host = entry_of(api, sandbox)["host"]
    assert host["cpu_seconds"] > 0.5  # booting under TCG costs seconds of CPU
    assert 64 * MIB < host["rss_bytes"] < 4 * SBOX_RAM
    # PSS counts shared pages (QEMU's libraries) in part; private is this QEMU's alone (guest RAM, code cache).
    assert 0 < host["private_bytes"] <= host["pss_bytes"] <= host["rss_bytes"]
    assert host["private_bytes"] > 32 * MIB  # at least the guest's touched RAM
    assert host["disk_read_bytes"] > 0 and host["disk_read_ops"] > 0
    assert host["net_rx_bytes"] >= 0 and host["net_tx_bytes"] >= 0  # the tap exists (present, not left out)


def test_counters_grow_after_writing_a_file(api: httpx.Client, sandbox: str) -> None:
    before = entry_of(api, sandbox)
    try:
        sh(api, sandbox, "dd if=/dev/urandom of=/var/tmp/stats-fill bs=1M count=16 2>/dev/null && sync")
        after = entry_of(api, sandbox)
    finally:
        sh(api, sandbox, "rm -f /var/tmp/stats-fill && sync")
    grown = {name: after["snapshot"][name] - before["snapshot"][name] for name in ("diskWriteTotal", "diskSpaceUsed")}
    assert grown["diskWriteTotal"] >= 16 * MIB, grown
    assert grown["diskSpaceUsed"] >= 15 * MIB, grown
    assert after["host"]["disk_write_bytes"] - before["host"]["disk_write_bytes"] >= 16 * MIB
    assert after["host"]["cpu_seconds"] > before["host"]["cpu_seconds"]


def test_one_vm_is_an_array_of_one_and_an_unknown_one_is_404(api: httpx.Client, sandbox: str) -> None:
    assert entry_of(api, sandbox)["snapshot"]["hostname"] == sandbox
    assert_error(api.get("/node/no-such-vm/stats"), 404)
    assert api.get("/node/no-such-vm/stats").json()["code"] == "vm_not_found"


def test_metrics_carry_each_vms_series(api: httpx.Client, sandbox: str) -> None:
    response = api.get("/metrics")
    assert response.status_code == 200, response.text
    text = response.text
    labels = f'{{host_group="sbox",hostname="{sandbox}"}}'
    for series in (
        "slicer_vm_stats_up",
        "slicer_vm_memory_total_bytes",
        "slicer_vm_load_avg_1",
        "slicer_vm_disk_written_bytes_total",
        "slicer_vm_disk_space_used_bytes",
        "slicer_vm_uptime_seconds",
        "slicer_vm_host_cpu_seconds_total",
        "slicer_vm_host_rss_bytes",
        "slicer_vm_host_pss_bytes",
        "slicer_vm_host_private_bytes",
        "slicer_vm_host_disk_read_bytes_total",
        "slicer_vm_host_network_received_bytes_total",
    ):
        assert f"{series}{labels} " in text, series
    assert f"slicer_vm_stats_up{labels} 1.0" in text
    assert "slicer_system_load_avg_1 " in text  # the daemon's own series are still there


def test_sdk_and_vm_top_once(daemon: RunningDaemon, sandbox: str) -> None:
    with SlicerClient(daemon.url, token=daemon.token) as slicer:
        every = {entry.hostname: entry for entry in slicer.node_stats()}
        one = slicer.vm_stats(sandbox)
    assert one.snapshot is not None and one.error is None
    assert one.snapshot.total_cpus == 2 and one.snapshot.total_memory > 0
    assert one.host is not None and one.host.rss_bytes and one.host.pss_bytes and one.host.private_bytes
    assert every[sandbox].snapshot is not None and every[sandbox].hostgroup == "sbox"
    top = cli(daemon, "vm", "top", "--once")
    assert top.returncode == 0, top.stderr
    lines = top.stdout.decode().splitlines()
    assert lines[0].split()[:3] == ["HOSTNAME", "GROUP", "STATUS"]
    mine = next(line for line in lines if line.startswith(sandbox + " "))
    assert mine.split()[1:3] == ["sbox", "Running"]
    assert "MiB/" in mine  # memory and disk as used/total
    assert lines[0].split()[6:8] == ["HOST", "RSS/PSS"]
    host_memory = mine.split()[6]  # (the guest's memory is the cell before it)
    assert re.fullmatch(r"[0-9.]+MiB/[0-9.]+MiB", host_memory), mine
    bad = cli(daemon, "vm", "top", "--interval", "0")
    assert bad.returncode == 2 and b"Traceback" not in bad.stderr, bad.stderr


def test_vm_top_refreshes_in_place_and_leaves_on_ctrl_c(daemon: RunningDaemon, sandbox: str) -> None:
    pid, terminal = pty.fork()
    if pid == 0:  # the child: slicer vm top on a terminal
        os.environ.update({"SLICER_URL": daemon.url, "SLICER_TOKEN": daemon.token, "COLUMNS": "200"})
        os.execv(sys.executable, [sys.executable, "-m", "pyslicer.cli.main", "vm", "top", "--interval", "0.3"])
    output = b""
    interrupted = False
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if select.select([terminal], [], [], 0.2)[0]:
                try:
                    chunk = os.read(terminal, 65536)
                except OSError:  # the child is gone and the terminal closed
                    break
                if not chunk:
                    break
                output += chunk
            if not interrupted and output.count(sandbox.encode()) >= 3:  # three screens, drawn over each other
                os.kill(pid, signal.SIGINT)
                interrupted = True
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        os.close(terminal)
    assert interrupted, output[-2000:]
    assert status == 0, output[-2000:]
    assert b"\x1b[1A" in output  # the cursor went back up: the table was redrawn in place, not appended
    assert output.rfind(b"\x1b[?25h") > output.rfind(b"\x1b[?25l")  # and the cursor is shown again
    assert b"Traceback" not in output and b"KeyboardInterrupt" not in output


def test_a_paused_vm_has_an_error_and_host_counters_not_a_failed_request(api: httpx.Client, sandbox: str) -> None:
    assert api.post(f"/vm/{sandbox}/pause").status_code == 200
    try:
        response = api.get("/nodes/stats")
        one = api.get(f"/node/{sandbox}/stats")
        metrics = api.get("/metrics")
    finally:
        assert api.post(f"/vm/{sandbox}/resume").status_code == 200
    assert response.status_code == 200 and one.status_code == 200, (response.text, one.text)
    entry = next(entry for entry in response.json() if entry["hostname"] == sandbox)
    assert one.json() == [entry] or one.json()[0]["error"] == entry["error"]
    assert "paused" in entry["error"] and not entry.get("snapshot")
    assert entry["status"] == "Paused"
    assert entry["host"]["cpu_seconds"] > 0 and entry["host"]["rss_bytes"] > 0  # no agent needed for these
    assert metrics.status_code == 200
    assert f'slicer_vm_stats_up{{host_group="sbox",hostname="{sandbox}"}} 0.0' in metrics.text
    assert entry_of(api, sandbox)["snapshot"]["hostname"] == sandbox  # answers again once resumed
