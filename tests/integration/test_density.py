"""Density against real guests on a daemon of its own: memory a guest frees comes back to the host (free page
reporting through the balloon), the admission check refuses a create past the overcommit ratio and leaves the
running VM alone, the guest's memory settings, and the OOM scores of QEMU and the daemon."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from pyslicer.daemon.admission import VMM_OVERHEAD_BYTES, read_host_memory
from tests.integration.conftest import RunningDaemon, start_daemon, stop_daemon
from tests.integration.helpers import assert_error, created_sandbox, exec_buffered, sh

MIB = 1024 * 1024
RAM = 512 * MIB
TB_SIZE = 32 * MIB
# Room for one sandbox and a half: the second create must be refused.
ONE_AND_A_HALF = 1.5 * (RAM + VMM_OVERHEAD_BYTES + TB_SIZE)
CONFIG = """
config:
  host_groups:
  - name: sbox
    count: 0
    vcpu: 1
    ram_mb: 512
    persistent: false
  accel: tcg
  tcg_tb_size: 32M
  memory_overcommit_ratio: {ratio}
  api:
    bind_address: {{address}}
    port: {{port}}
    auth:
      enabled: true
"""
ALLOCATE = 200 * MIB


@pytest.fixture(scope="module")
def dense(guest_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    ratio = ONE_AND_A_HALF / read_host_memory().total_bytes
    config = CONFIG.format(ratio=f"{ratio:.6f}")
    running = start_daemon(tmp_path_factory.mktemp("dense"), guest_image, config_template=config)
    try:
        yield running
    finally:
        stop_daemon(running)


@pytest.fixture(scope="module")
def dense_api(dense: RunningDaemon) -> Iterator[httpx.Client]:
    with dense.client() as client:
        yield client


@pytest.fixture(scope="module")
def guest(dense_api: httpx.Client) -> Iterator[str]:
    with created_sandbox(dense_api) as hostname:
        yield hostname


def host_figures(api: httpx.Client, hostname: str) -> dict[str, int]:
    response = api.get(f"/node/{hostname}/stats")
    assert response.status_code == 200, response.text
    host: dict[str, int] = response.json()[0]["host"]
    return host


def settled_rss(api: httpx.Client, hostname: str, deadline: float) -> int:
    """The QEMU's RSS once it stops falling (free page reporting runs ~2 s after pages are freed)."""
    last = host_figures(api, hostname)["rss_bytes"]
    while time.monotonic() < deadline:
        time.sleep(3)
        now = host_figures(api, hostname)["rss_bytes"]
        if now >= last - 2 * MIB:
            return now
        last = now
    return last


def test_the_guest_runs_the_balloon_and_skips_zeroing_allocations(dense_api: httpx.Client, guest: str) -> None:
    assert "init_on_alloc=0" in sh(dense_api, guest, "cat /proc/cmdline").split()
    bound = sh(dense_api, guest, "ls /sys/bus/virtio/drivers/virtio_balloon/")
    assert "virtio" in bound, bound  # a device is bound to the driver, not just the module loaded
    assert int(sh(dense_api, guest, "cat /sys/module/page_reporting/parameters/page_reporting_order")) >= 0


def test_memory_the_guest_frees_comes_back_to_the_host(dense_api: httpx.Client, guest: str) -> None:
    baseline = settled_rss(dense_api, guest, time.monotonic() + 60)
    # Touch 200 MiB for a few seconds (a bytes object is written through, unlike a calloc'ed bytearray),
    # then exit: the guest frees it all.
    script = f"data = b'x' * {ALLOCATE}; import time; time.sleep(6)"
    peak = baseline
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(exec_buffered, dense_api, guest, "python3", "-c", script)
        while not running.done():
            peak = max(peak, host_figures(dense_api, guest)["rss_bytes"])
            time.sleep(0.5)
        assert running.result()["exit_code"] == 0, running.result()
    assert peak >= baseline + ALLOCATE * 3 // 4, (baseline // MIB, peak // MIB)  # the host did back it
    deadline = time.monotonic() + 60  # generous: a busy TCG guest reports late
    after = host_figures(dense_api, guest)["rss_bytes"]
    while after > baseline + ALLOCATE // 4 and time.monotonic() < deadline:
        time.sleep(1)
        after = host_figures(dense_api, guest)["rss_bytes"]
    assert after <= baseline + ALLOCATE // 4, (baseline // MIB, peak // MIB, after // MIB)


def test_a_create_past_the_overcommit_ratio_is_refused_and_the_running_vm_is_untouched(
    dense_api: httpx.Client, guest: str
) -> None:
    response = dense_api.post("/hostgroup/sbox/nodes?wait=agent&timeout=3m", json={})
    assert_error(response, 409)
    body = response.json()
    assert body["code"] == "memory_overcommit", body
    assert "memory_overcommit_ratio" in body["error"] and "limit" in body["error"], body
    assert [node["hostname"] for node in dense_api.get("/nodes").json()] == [guest]
    assert sh(dense_api, guest, "echo still-here").strip() == "still-here"
    # A smaller VM fits beside it.
    with created_sandbox(dense_api, ram_bytes=128 * MIB) as small:
        assert sh(dense_api, small, "echo small").strip() == "small"


def test_qemu_goes_before_the_daemon_under_memory_pressure(dense: RunningDaemon, guest: str) -> None:
    daemon_score = int(Path(f"/proc/{dense.process.pid}/oom_score_adj").read_text())
    for pid in dense.qemu_pids():
        assert int(Path(f"/proc/{pid}/oom_score_adj").read_text()) == 300
        assert daemon_score < 300


def test_metrics_show_the_commitment_against_the_limit(dense_api: httpx.Client, guest: str) -> None:
    text = dense_api.get("/metrics").text
    figures = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith(("slicer_host_memory_committed_bytes ", "slicer_host_memory_commit_limit_bytes "))
    }
    assert figures["slicer_host_memory_committed_bytes"] == RAM + VMM_OVERHEAD_BYTES + TB_SIZE  # the one guest
    assert abs(figures["slicer_host_memory_commit_limit_bytes"] - ONE_AND_A_HALF) < MIB
