"""Stats: the agent's /proc parsers on sample text, the daemon's checks of what a guest answers, the host-side
parsers, the wire shape, the Prometheus series, and the op end to end through the real agent on this host."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pyslicer.agent import stats as agent_stats
from pyslicer.api.metrics import vm_metrics
from pyslicer.api.stats import stats_entry
from pyslicer.daemon.agent_link import AgentLink
from pyslicer.daemon.stats import (
    GuestSnapshot,
    HostCounters,
    MalformedStats,
    NodeStats,
    ProcessMemory,
    parse_process_stat,
    parse_smaps_rollup,
    parse_tap_bytes,
)
from tests.test_agent_link import link  # noqa: F401  # the fixture

# Slicer's SlicerSnapshot (Go SDK types.go) and which of its fields Go decodes as integers (a 1.0 there fails).
SNAPSHOT_FIELDS = {
    "hostname": str,
    "arch": str,
    "timestamp": str,
    "uptime": str,
    "totalCpus": int,
    "totalMemory": int,
    "memoryUsed": int,
    "memoryAvailable": int,
    "memoryUsedPercent": float,
    "loadAvg1": float,
    "loadAvg5": float,
    "loadAvg15": float,
    "diskReadTotal": float,
    "diskWriteTotal": float,
    "networkReadTotal": float,
    "networkWriteTotal": float,
    "diskIOInflight": int,
    "openConnections": int,
    "openFiles": int,
    "entropy": int,
    "diskSpaceTotal": int,
    "diskSpaceUsed": int,
    "diskSpaceFree": int,
    "diskSpaceUsedPercent": float,
}

MEMINFO = """MemTotal:         503276 kB
MemFree:          350000 kB
MemAvailable:     421000 kB
Buffers:            1234 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""

DISKSTATS = """ 254       0 vda 3000 10 121576 500 200 30 15264 900 2 1400 1400 0 0 0 0
 254       1 vda1 2900 10 121000 490 200 30 15264 900 0 1390 1390 0 0 0 0
   7       0 loop0 50 0 800 3 0 0 0 0 0 10 3 0 0 0 0
 259       0 nvme0n1 10 0 20 1 1 0 8 1 1 5 5
 259       1 nvme0n1p1 10 0 20 1 1 0 8 1 1 5 5
 broken line
 254      16 vdb x y z 1 2 3 4 5 6 7 8
"""

NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes  packets errs drop fifo frame compressed multicast|bytes  packets errs drop fifo colls carrier compressed
  lo:  999999  10  0  0  0  0  0  0  999999  10  0  0  0  0  0  0
  eth0:  44041  300  0  0  0  0  0  0  19872  200  0  0  0  0  0  0
  eth1:  100  1  0  0  0  0  0  0  50  1  0  0  0  0  0  0
garbage without colon
 eth2: not numbers at all here 1 2 3 4 5 6 7
"""

SNMP = """Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 1000
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs
Tcp: 1 200 120000 -1 40 12 0 3 7 5000
Udp: InDatagrams NoPorts
Udp: 10 0
"""


def test_meminfo_in_bytes() -> None:
    memory = agent_stats.parse_meminfo(MEMINFO)
    assert memory == {"MemTotal": 503276 * 1024, "MemFree": 350000 * 1024, "MemAvailable": 421000 * 1024}
    assert agent_stats.parse_meminfo("MemTotal: 12\nMemAvailable: lots kB\n") == {"MemTotal": 12}
    assert agent_stats.parse_meminfo("") == {}


def test_loadavg() -> None:
    assert agent_stats.parse_loadavg("0.52 0.31 0.10 1/87 4321\n") == (0.52, 0.31, 0.10)
    assert agent_stats.parse_loadavg("") == (0.0, 0.0, 0.0)
    assert agent_stats.parse_loadavg("nope 1") == (0.0, 0.0, 0.0)


def test_diskstats_count_whole_disks_once() -> None:
    read, written, inflight = agent_stats.parse_diskstats(DISKSTATS)
    assert read == (121576 + 20) * 512  # vda and nvme0n1: not the partitions, loop or the broken vdb line
    assert written == (15264 + 8) * 512
    assert inflight == 2 + 1


@pytest.mark.parametrize(
    ("name", "whole"),
    [("vda", True), ("vda1", False), ("sda", True), ("sdb12", False), ("nvme0n1", True), ("nvme0n1p2", False),
     ("mmcblk0", True), ("mmcblk0p1", False), ("loop3", False), ("dm-0", False), ("ram0", False)],
)  # fmt: skip
def test_whole_disks(name: str, whole: bool) -> None:
    assert agent_stats.is_whole_disk(name) is whole


def test_net_dev_skips_loopback_and_garbage() -> None:
    assert agent_stats.parse_net_dev(NET_DEV) == (44041 + 100, 19872 + 50)
    assert agent_stats.parse_net_dev("") == (0, 0)


def test_established_connections() -> None:
    assert agent_stats.established_connections(SNMP) == 7
    assert agent_stats.established_connections("") == 0
    assert agent_stats.established_connections("Tcp: CurrEstab\nTcp: 1 2\n") == 0  # not one value per name
    assert agent_stats.established_connections("Tcp: CurrEstab\nTcp: -1\n") == 0
    assert agent_stats.established_connections("Tcp: InSegs\nTcp: 5\n") == 0


def test_proc_files_are_read_afresh_from_one_fd(tmp_path: Path) -> None:
    proc = agent_stats.ProcFiles()
    path = tmp_path / "counter"
    assert proc.read(str(path)) == ""  # not there (yet): tried again next time
    path.write_text("1 first\n")
    assert proc.read(str(path)) == "1 first\n"
    with path.open("r+") as file:  # the same file (inode), new text, as /proc gives
        file.write("2")
    assert proc.read(str(path)) == "2 first\n"
    big = "x" * (3 * agent_stats.READ_SIZE + 5)
    path.write_text(big)
    assert proc.read(str(path)) == big
    path.write_text("z" * agent_stats.READ_SIZE)  # exactly one read's worth: the EOF read finds nothing more
    assert proc.read(str(path)) == "z" * agent_stats.READ_SIZE
    proc.forget(str(path))


def test_first_int() -> None:
    assert agent_stats.first_int("480\t0\t9223372036854775807\n") == 480
    assert agent_stats.first_int("256\n") == 256
    assert agent_stats.first_int("") == 0
    assert agent_stats.first_int("-1 x") == 0


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (45.9, "45s"), (413, "6m53s"), (3600, "1h0m0s"), (93605, "26h0m5s"), (-3, "0s")]
)
def test_go_duration(seconds: float, text: str) -> None:
    assert agent_stats.go_duration(seconds) == text


def test_snapshot_of_this_host_has_every_field_with_the_right_type() -> None:
    snapshot: dict[str, Any] = dict(agent_stats.snapshot())
    assert set(snapshot) == set(SNAPSHOT_FIELDS)
    for name, kind in SNAPSHOT_FIELDS.items():
        value = snapshot[name]
        assert isinstance(value, (int, float) if kind is float else kind) and not isinstance(value, bool), name
    assert snapshot["totalMemory"] > snapshot["memoryAvailable"] > 0
    assert snapshot["memoryUsed"] == snapshot["totalMemory"] - snapshot["memoryAvailable"]
    assert snapshot["diskSpaceTotal"] >= snapshot["diskSpaceUsed"] > 0
    GuestSnapshot.from_guest(snapshot)  # the daemon takes what the agent sends


# -- what the daemon accepts from a guest ------------------------------------------------------------


def good_answer() -> dict[str, Any]:
    return {
        "hostname": "sbox-1",
        "arch": "x86_64",
        "timestamp": "2025-09-02T07:39:32.388239809Z",
        "uptime": "6m53s",
        "totalCpus": 2,
        "totalMemory": 4024136000,
        "memoryUsed": 220184000,
        "memoryAvailable": 3803952000,
        "memoryUsedPercent": 5.471584459372148,
        "loadAvg1": 0,
        "loadAvg5": 0.5,
        "loadAvg15": 0,
        "diskReadTotal": 62245888,
        "diskWriteTotal": 7815168,
        "networkReadTotal": 44041,
        "networkWriteTotal": 19872,
        "diskIOInflight": 0,
        "openConnections": 0,
        "openFiles": 480,
        "entropy": 256,
        "diskSpaceTotal": 26241896448,
        "diskSpaceUsed": 820826112,
        "diskSpaceFree": 24062115840,
        "diskSpaceUsedPercent": 3.12792222782572,
    }


def test_a_good_answer_is_taken_as_it_is() -> None:
    snapshot = GuestSnapshot.from_guest(good_answer())
    assert snapshot.totalMemory == 4024136000 and snapshot.loadAvg5 == 0.5
    assert snapshot.uptime_seconds == 413
    assert isinstance(snapshot.loadAvg1, float)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("totalMemory", None),
        ("totalMemory", -1),
        ("totalMemory", 2**64),
        ("totalMemory", True),
        ("totalMemory", 1.5),
        ("totalMemory", "1024"),
        ("totalCpus", 0),
        ("openFiles", [1]),
        ("loadAvg1", math.nan),
        ("loadAvg1", math.inf),
        ("loadAvg1", -0.5),
        ("loadAvg1", "0.5"),
        ("memoryUsedPercent", 100.5),
        ("diskSpaceUsedPercent", False),
        ("timestamp", "yesterday"),
        ("timestamp", "2025-09-02 07:39:32"),
        ("timestamp", 1756798772),
        ("uptime", "6 minutes"),
        ("uptime", "-5s"),
        ("uptime", 413),
        ("hostname", "x" * 256),
        ("hostname", "evil\nline"),
        ("arch", None),
    ],
)
def test_a_bad_field_refuses_the_snapshot(field: str, value: Any) -> None:
    answer = good_answer()
    answer[field] = value
    with pytest.raises(MalformedStats, match=field):
        GuestSnapshot.from_guest(answer)


def test_a_missing_field_refuses_the_snapshot() -> None:
    answer = good_answer()
    del answer["entropy"]
    with pytest.raises(MalformedStats, match="entropy"):
        GuestSnapshot.from_guest(answer)


@pytest.mark.parametrize("answer", [None, [], "stats", 7, {"type": "error", "error": "unknown op 'stats'"}])
def test_an_answer_that_is_no_snapshot_is_refused(answer: object) -> None:
    with pytest.raises(MalformedStats):
        GuestSnapshot.from_guest(answer)


# -- the host side -----------------------------------------------------------------------------------


def test_process_stat() -> None:
    fields = ["S", *map(str, range(4, 52))]  # field 3 onwards; utime is field 14, stime 15, rss 24
    text = "1234 (qemu-system) x) " + " ".join(fields)
    cpu, rss = parse_process_stat(text) or (None, None)
    assert cpu is not None and math.isclose(cpu, (14 + 15) / os.sysconf("SC_CLK_TCK"))
    assert rss == 24 * os.sysconf("SC_PAGE_SIZE")
    assert parse_process_stat("") is None
    assert parse_process_stat("1 (x) S 1 2") is None
    assert parse_process_stat("1 (x) " + " ".join(["z"] * 50)) is None


def test_process_stat_of_this_process() -> None:
    parsed = parse_process_stat(Path("/proc/self/stat").read_text())
    assert parsed is not None and parsed[0] >= 0 and parsed[1] > 1024 * 1024


SMAPS_ROLLUP = """\
564f53d1c000-7ffc96db9000 ---p 00000000 00:00 0                          [rollup]
Rss:              257996 kB
Pss:              224735 kB
Pss_Dirty:        199108 kB
Shared_Clean:      58304 kB
Shared_Dirty:       1152 kB
Private_Clean:         8 kB
Private_Dirty:    198532 kB
AnonHugePages:    141312 kB
"""


def test_smaps_rollup() -> None:
    assert parse_smaps_rollup(SMAPS_ROLLUP) == ProcessMemory(257996 * 1024, 224735 * 1024, 198540 * 1024)
    assert parse_smaps_rollup("") is None
    assert parse_smaps_rollup(SMAPS_ROLLUP.replace("Pss:  ", "Pxx:  ")) is None  # a figure missing
    assert parse_smaps_rollup(SMAPS_ROLLUP.replace("198532", "-1")) is None  # or not a count


def test_smaps_rollup_of_this_process() -> None:
    memory = parse_smaps_rollup(Path("/proc/self/smaps_rollup").read_text())
    assert memory is not None and 0 < memory.private_bytes <= memory.rss_bytes
    assert 0 < memory.pss_bytes <= memory.rss_bytes


def test_tap_bytes_are_the_vms_view() -> None:
    text = NET_DEV.replace("eth1", "sboxtap0")
    assert parse_tap_bytes(text, "sboxtap0") == (50, 100)  # the tap sent 50 to the VM, received 100 from it
    assert parse_tap_bytes(text, "sboxtap1") is None
    assert parse_tap_bytes(NET_DEV, "eth2") is None  # not numbers


# -- on the wire and in /metrics ---------------------------------------------------------------------


def entries() -> list[NodeStats]:
    answered = NodeStats(
        hostname="sbox-1",
        host_group="sbox",
        ip="192.168.137.2",
        created_at="2025-09-02T07:32:37.667253Z",
        status="Running",
        snapshot=GuestSnapshot.from_guest(good_answer()),
        host=HostCounters(
            cpu_seconds=1.5,
            rss_bytes=300 << 20,
            pss_bytes=250 << 20,
            private_bytes=200 << 20,
            net_rx_bytes=10,
            net_tx_bytes=20,
        ),
    )
    paused = replace(answered, hostname="sbox-2", status="Paused", snapshot=None, error="sbox-2 is paused")
    return [answered, paused]


def test_the_wire_shape_is_what_the_sdks_decode() -> None:
    answered, paused = (
        json.loads(stats_entry(entry).model_dump_json(exclude_none=True)) for entry in entries()
    )  # as the routes answer (response_model_exclude_none)
    assert {"hostname", "ip", "created_at", "snapshot", "host"} <= set(answered)
    assert "error" not in answered
    snapshot = answered["snapshot"]
    assert set(snapshot) == set(SNAPSHOT_FIELDS)
    for name, kind in SNAPSHOT_FIELDS.items():
        if kind is int:
            assert type(snapshot[name]) is int, name  # Go's int and uint64 refuse 0.0
    assert answered["host"] == {
        "cpu_seconds": 1.5, "rss_bytes": 300 << 20, "pss_bytes": 250 << 20, "private_bytes": 200 << 20,
        "net_rx_bytes": 10, "net_tx_bytes": 20,
    }  # fmt: skip
    assert paused["error"] == "sbox-2 is paused" and "snapshot" not in paused


def test_vm_series_with_a_vm_whose_agent_did_not_answer() -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.registry import Collector

    class Once(Collector):
        def collect(self) -> Any:
            return vm_metrics(entries())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Once())
    text = generate_latest(registry).decode()
    assert 'slicer_vm_stats_up{host_group="sbox",hostname="sbox-1"} 1.0' in text
    assert 'slicer_vm_stats_up{host_group="sbox",hostname="sbox-2"} 0.0' in text
    assert 'slicer_vm_memory_total_bytes{host_group="sbox",hostname="sbox-1"} 4.024136e+09' in text
    assert 'slicer_vm_memory_total_bytes{host_group="sbox",hostname="sbox-2"}' not in text
    assert 'slicer_vm_uptime_seconds{host_group="sbox",hostname="sbox-1"} 413.0' in text
    assert 'slicer_vm_host_cpu_seconds_total{host_group="sbox",hostname="sbox-2"} 1.5' in text  # no agent needed
    assert "slicer_vm_host_disk_read_bytes_total{" not in text  # not read: left out, not 0


# -- end to end through the real agent ---------------------------------------------------------------


async def test_the_agent_answers_stats(link: AgentLink) -> None:  # noqa: F811
    body = await link.call({"op": "stats"}, timeout=10)
    snapshot = GuestSnapshot.from_guest(body)
    assert snapshot.totalMemory > 0 and snapshot.diskSpaceTotal > 0
    assert snapshot.timestamp.endswith("Z")
