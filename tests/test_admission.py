"""The host memory admission check, against a host whose memory the test chooses."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pyslicer.daemon.admission import HostMemory, MemoryAdmission, parse_meminfo, read_host_memory
from pyslicer.daemon.data_dir import DataDir
from pyslicer.daemon.fleet import Fleet
from pyslicer.daemon.lifecycle import NodeState
from pyslicer.daemon.registry import NodeRecord, Registry
from pyslicer.errors import Conflict
from pyslicer.image import GuestImage

MIB = 1024 * 1024
GIB = 1024 * MIB


def admission(ratio: float, total: int = 24 * GIB, available: int = 20 * GIB) -> MemoryAdmission:
    return MemoryAdmission(ratio, vmm_overhead_bytes=112 * MIB, read=lambda: HostMemory(total, available))


def test_creates_are_admitted_up_to_the_ratio_and_refused_past_it() -> None:
    check = admission(3.0)
    per_vm = 512 * MIB + 112 * MIB
    fits = int(3.0 * 24 * GIB // per_vm)
    assert fits >= 100  # the target: a hundred 512 MiB sandboxes in 24 GiB
    check.check("sbox-x", 512 * MIB, [512 * MIB] * (fits - 1))
    with pytest.raises(Conflict) as refused:
        check.check("sbox-y", 512 * MIB, [512 * MIB] * fits)
    assert refused.value.code == "memory_overcommit"
    message = refused.value.message
    assert "sbox-y" in message and "memory_overcommit_ratio 3 x 24.0 GiB" in message and "72.0 GiB" in message


def test_a_ratio_below_one_keeps_room_on_the_host() -> None:
    check = admission(0.5, total=2 * GIB)
    check.check("a", 512 * MIB, [])
    with pytest.raises(Conflict):
        check.check("b", 512 * MIB, [512 * MIB])


def test_a_host_short_of_memory_refuses_even_under_the_limit() -> None:
    check = admission(3.0, available=200 * MIB)
    with pytest.raises(Conflict) as refused:
        check.check("sbox-1", 512 * MIB, [])
    assert refused.value.code == "host_memory_low"
    assert "only 200 MiB available" in refused.value.message


def test_meminfo() -> None:
    text = "MemTotal:       24684412 kB\nMemFree:        1 kB\nMemAvailable:   23000000 kB\nBuffers: x kB\n"
    assert parse_meminfo(text) == HostMemory(24684412 * 1024, 23000000 * 1024)
    assert parse_meminfo("") == HostMemory(0, 0)
    host = read_host_memory()
    assert 0 < host.available_bytes <= host.total_bytes


def test_relaunch_and_restore_are_admitted_too(tmp_path: Path) -> None:
    """A stopped or suspended VM holds no memory; bringing it back takes room as a create does, and past the
    limit it stays as it was (refused before anything is booted: this fleet has no host groups or hypervisor at all)."""

    async def run() -> None:
        data_dir = DataDir(tmp_path / "data")
        data_dir.hold()
        registry = await Registry.open(data_dir.path / "state.db")
        try:
            await check(data_dir, registry)
        finally:
            await registry.close()
            data_dir.release()

    async def check(data_dir: DataDir, registry: Registry) -> None:
        image = GuestImage(tmp_path / "k", tmp_path / "i", tmp_path / "r", {})
        fleet = Fleet({}, data_dir, None, image, registry, None, None, admission=admission(1.0, total=2 * GIB))  # type: ignore[arg-type]
        running = fleet._add(NodeRecord("big-1", "box", 1, GIB, 0, "", False, True))
        running.transition(NodeState.BOOTING)
        stopped = fleet._add(NodeRecord("big-2", "box", 1, GIB, 0, "", False, True))
        stopped.transition(NodeState.STOPPED)
        suspended = fleet._add(NodeRecord("big-3", "box", 1, GIB, 0, "", False, True))
        suspended.transition(NodeState.SUSPENDED)
        with pytest.raises(Conflict, match=r"big-2 .* past the limit") as refused:
            await fleet.relaunch(stopped)
        assert refused.value.code == "memory_overcommit" and stopped.state is NodeState.STOPPED
        with pytest.raises(Conflict, match=r"big-3 .* past the limit"):
            await fleet.restore(suspended)
        assert suspended.state is NodeState.SUSPENDED

    asyncio.run(run())
