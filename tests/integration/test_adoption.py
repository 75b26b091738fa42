"""VMs outlive their daemon: a daemon killed with SIGKILL is followed by one that adopts every VM it left (same
boot, same processes), a VM whose config entry went is shut down cleanly with its disk kept, and whatever no record
owns is removed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from pyslicer.net import NetworkNamespace
from tests.integration.conftest import CONFIG, RunningDaemon, free_port, start_daemon, stop_daemon
from tests.integration.helpers import assert_error, sh, wait_for_agent

SBOX_GROUP = CONFIG[CONFIG.index("  - name: sbox") : CONFIG.index("  hypervisor:")]
CONFIG_WITHOUT_SBOX = CONFIG.replace(SBOX_GROUP, "")
BOOT_ID = "cat /proc/sys/kernel/random/boot_id"


def statuses(api: httpx.Client) -> dict[str, str]:
    return {n["hostname"]: n["status"] for n in api.get("/nodes").json()}


def taps(daemon: RunningDaemon) -> set[str]:
    name = NetworkNamespace(daemon.data_dir.absolute()).name
    listing = subprocess.run(["ip", "-j", "-n", name, "link", "show", "type", "tun"], capture_output=True, check=True)
    return {link["ifname"] for link in json.loads(listing.stdout or b"[]")}


def kill_daemon(daemon: RunningDaemon) -> None:
    daemon.process.kill()
    daemon.process.wait()


def test_a_killed_daemon_leaves_its_vms_to_the_next(guest_image: Path, tmp_path: Path) -> None:
    first = start_daemon(tmp_path, guest_image)
    daemons = [first]
    try:
        with first.client() as api:
            created = api.post("/hostgroup/sbox/nodes?wait=agent", json={"cpus": 1, "ram_bytes": 256 * 1024**2})
            assert created.status_code == 201, created.text
            ephemeral = created.json()["hostname"]
            kept = api.post(
                "/hostgroup/sbox/nodes?wait=agent", json={"hostname": "keeper", "persistent": True, "cpus": 1}
            )
            assert kept.status_code == 201, kept.text
            wait_for_agent(api, "svc-1")
            vms = ("svc-1", ephemeral, "keeper")
            boots = {vm: sh(api, vm, BOOT_ID) for vm in vms}
            detached = "setsid sleep 100000 >/dev/null 2>&1 </dev/null & echo $!"
            sleepers = {vm: sh(api, vm, detached).strip() for vm in vms}
            sh(api, "keeper", "echo kept > /root/state && sync")
            assert api.post("/vm/keeper/pause").status_code == 200
            qemus = first.qemus()
            assert len(qemus) == 3
        kill_daemon(first)
        assert all(identity.is_alive() for identity in qemus), "the VMs outlive their daemon"

        # Left behind by nobody: they must be gone after the next start.
        (first.data_dir / "disks" / "ghost.qcow2").write_bytes(b"")
        (first.data_dir / "logs" / "ghost.log").write_text("boo\n")
        netns = NetworkNamespace(first.data_dir.absolute()).name
        subprocess.run(["ip", "-n", netns, "tuntap", "add", "dev", "tapsbox99", "mode", "tap"], check=True)

        second = start_daemon(tmp_path, guest_image)
        daemons.append(second)
        with second.client() as api:
            assert statuses(api) == {"svc-1": "Running", ephemeral: "Running", "keeper": "Paused"}
            assert second.qemus() == qemus, "the same QEMUs, adopted"
            assert_error(api.post("/vm/keeper/exec", params={"cmd": "true"}), 409, "paused")
            assert api.post("/vm/keeper/resume").status_code == 200
            for vm in vms:
                wait_for_agent(api, vm, timeout=60)
                assert sh(api, vm, f"kill -0 {sleepers[vm]} && {BOOT_ID}") == boots[vm], f"{vm} noticed nothing"
            assert sh(api, "keeper", "cat /root/state") == "kept\n"
            assert len(taps(second)) == 3 and "tapsbox99" not in taps(second)
        assert not (second.data_dir / "disks" / "ghost.qcow2").exists()
        assert not (second.data_dir / "logs" / "ghost.log").exists()
        assert "adopted its running VM" in second.log()
        # SIGUSR1 (an upgrade, a restart): the daemon exits and leaves every VM running.
        second.process.send_signal(signal.SIGUSR1)
        assert second.process.wait(60) == 0
        assert all(identity.is_alive() for identity in qemus)

        # The sbox group leaves the config: its VMs are shut down cleanly, their disks kept; the service stays.
        third = start_daemon(tmp_path, guest_image, config_template=CONFIG_WITHOUT_SBOX)
        daemons.append(third)
        with third.client() as api:
            assert statuses(api) == {"svc-1": "Running"}
            assert sh(api, "svc-1", f"kill -0 {sleepers['svc-1']} && {BOOT_ID}") == boots["svc-1"]
            assert len(third.qemus()) == 1
        log = third.log()
        assert "keeper: host group 'sbox' (or its service entry) is no longer in the config" in log
        assert "no clean shutdown" not in log
        assert (third.data_dir / "disks" / "keeper.qcow2").exists()
        assert (third.data_dir / "disks" / f"{ephemeral}.qcow2").exists()
        third.process.send_signal(signal.SIGTERM)
        assert third.process.wait(90) == 0

        # Back with the group: the persistent VM is there, stopped; the ephemeral sandbox's disk goes; the service
        # boots afresh (the SIGTERM shut it down).
        fourth = start_daemon(tmp_path, guest_image)
        daemons.append(fourth)
        with fourth.client() as api:
            assert statuses(api) == {"svc-1": "Running", "keeper": "Stopped"}
            wait_for_agent(api, "svc-1")
            assert sh(api, "svc-1", BOOT_ID) != boots["svc-1"]
        assert not (fourth.data_dir / "disks" / f"{ephemeral}.qcow2").exists()
    finally:
        for daemon in reversed(daemons):
            stop_daemon(daemon)


def test_a_damaged_state_database_stops_the_start_and_changes_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "disks").mkdir(parents=True)
    (data_dir / "disks" / "vm-1.qcow2").write_bytes(b"precious")
    damaged = b"SQLite format 3\x00" + b"\xff" * 4000
    (data_dir / "state.db").write_bytes(damaged)
    config = tmp_path / "slicer.yaml"
    config.write_text(CONFIG.format(port=free_port(), address="127.0.0.1"))
    started = subprocess.run(
        [sys.executable, "-m", "pyslicer.cli.main", "up", str(config), "--data-dir", str(data_dir)],
        capture_output=True,
        timeout=120,
    )
    assert started.returncode == 1, started
    assert b"state database" in started.stderr and b"damaged" in started.stderr, started.stderr
    assert b"Traceback" not in started.stderr
    assert (data_dir / "state.db").read_bytes() == damaged
    assert (data_dir / "disks" / "vm-1.qcow2").read_bytes() == b"precious"
    assert not NetworkNamespace(data_dir.absolute()).exists
