"""Create timeouts, a QEMU that dies, an agent that cannot answer, delete, and daemon shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from pyslicer.client import SlicerClient
from pyslicer.net import NetworkNamespace
from tests.integration.conftest import CONFIG, RunningDaemon, free_port, start_daemon, stop_daemon
from tests.integration.helpers import assert_error, created_sandbox, exec_buffered, sh, wait_for_agent
from tests.integration.test_clients import cli


def node_names(api: httpx.Client) -> set[str]:
    return {n["hostname"] for n in api.get("/nodes").json()}


def test_wait_timeout_is_408_and_removes_the_vm(daemon: RunningDaemon, api: httpx.Client) -> None:
    before_nodes, before_qemu = node_names(api), daemon.qemu_pids()
    response = api.post("/hostgroup/sbox/nodes?wait=agent&timeout=10ms", json={"cpus": 1})
    assert_error(response, 408, "timed out")
    assert node_names(api) == before_nodes
    assert daemon.qemu_pids() == before_qemu
    assert {p.stem for p in (daemon.data_dir / "disks").glob("*.qcow2")} == {
        n for n in before_nodes if (daemon.data_dir / "disks" / f"{n}.qcow2").exists()
    }


def status_of(api: httpx.Client, hostname: str) -> str | None:
    return next((n["status"] for n in api.get("/nodes").json() if n["hostname"] == hostname), None)


def wait_for_status(api: httpx.Client, hostname: str, wanted: str | None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (status := status_of(api, hostname)) != wanted and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == wanted


def qemu_of(daemon: RunningDaemon, hostname: str) -> int:
    return next(pid for pid in daemon.qemu_pids() if f"/{hostname}/" in Path(f"/proc/{pid}/cmdline").read_text())


def test_agent_unreachable_dead_qemu_and_delete(daemon: RunningDaemon, api: httpx.Client) -> None:
    created = api.post("/hostgroup/sbox/nodes", json={"cpus": 1, "ram_bytes": 256 * 1024**2, "persistent": True})
    assert created.status_code == 201, created.text
    hostname = created.json()["hostname"]
    disk = daemon.data_dir / "disks" / f"{hostname}.qcow2"
    try:
        assert disk.exists()
        # Straight after create the guest is still booting: the agent cannot answer yet.
        assert_error(api.post(f"/vm/{hostname}/exec", params={"cmd": "true"}), 503)
        wait_for_agent(api, hostname)
        assert exec_buffered(api, hostname, "true")["exit_code"] == 0

        # An agent that stops answering gives 503, and the node stays listed.
        exec_buffered(api, hostname, "/bin/sh", "-c", "(sleep 0.5; kill -STOP $PPID) >/dev/null 2>&1 &")
        time.sleep(1.5)
        assert_error(api.get(f"/vm/{hostname}/health"), 503)
        assert hostname in node_names(api)

        # A QEMU killed from outside: the persistent VM shows Stopped, its run files go, its disk stays, and it
        # can be relaunched.
        victim = qemu_of(daemon, hostname)
        os.kill(victim, signal.SIGKILL)
        wait_for_status(api, hostname, "Stopped")
        assert_error(api.post(f"/vm/{hostname}/exec", params={"cmd": "true"}), 409, "stopped")
        assert victim not in daemon.qemu_pids()
        assert disk.exists()
        relaunched = api.post(f"/vm/{hostname}/relaunch", params={"wait": "agent", "timeout": "3m"})
        assert relaunched.status_code == 200, relaunched.text
        assert relaunched.json()["hostname"] == hostname
        assert exec_buffered(api, hostname, "true")["exit_code"] == 0

        # A guest that ignores the graceful stop is killed once the timeout has run out, and ends Stopped.
        ignore = "printf '#!/bin/sh\\nexit 0\\n' > /run/ignore && chmod +x /run/ignore"
        sh(api, hostname, f"{ignore} && mount --bind /run/ignore /usr/local/sbin/busybox")
        assert_error(api.post(f"/vm/{hostname}/shutdown", params={"timeout": "11m"}), 400, "timeout")
        stopped = api.post(f"/vm/{hostname}/shutdown", params={"timeout": "2s"})
        assert stopped.status_code == 200 and stopped.json()["status"] == "Stopped", stopped.text
        assert f"{hostname}: no clean shutdown within 2s; killing it" in daemon.log()
        assert status_of(api, hostname) == "Stopped"
    finally:
        deleted = api.delete(f"/hostgroup/sbox/nodes/{hostname}")
    assert deleted.json() == {"message": "Node deleted", "disk_removed": "true"}
    assert hostname not in node_names(api)
    assert not disk.exists()
    assert_error(api.get(f"/vm/{hostname}/health"), 404)


def test_pause_resume_shutdown_relaunch(daemon: RunningDaemon, api: httpx.Client) -> None:
    """Every transition of one persistent VM, with a process inside that lives through pause and resume."""
    with created_sandbox(api, persistent=True, cpus=1, ram_bytes=256 * 1024**2) as hostname:
        boot_id = sh(api, hostname, "cat /proc/sys/kernel/random/boot_id")
        sleeper = sh(api, hostname, "setsid sleep 100000 >/dev/null 2>&1 < /dev/null & echo $!").strip()
        sh(api, hostname, "echo before > /root/kept && sync")
        assert_error(api.post(f"/vm/{hostname}/resume"), 409, "Running")

        paused = api.post(f"/vm/{hostname}/pause")
        assert paused.status_code == 200, paused.text
        assert paused.json() == {"hostname": hostname, "status": "Paused", "disk_removed": False}
        assert status_of(api, hostname) == "Paused"
        assert_error(api.post(f"/vm/{hostname}/exec", params={"cmd": "true"}), 409, "paused")
        assert_error(api.get(f"/vm/{hostname}/fs/stat", params={"path": "/"}), 409, "paused")
        assert_error(api.post(f"/vm/{hostname}/pause"), 409, "Paused")
        time.sleep(3)  # the guest's clock stands still meanwhile

        resumed = api.post(f"/vm/{hostname}/resume")
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["status"] == "Running"
        guest_time = float(sh(api, hostname, "date +%s.%N"))
        assert abs(guest_time - time.time()) < 1.0, "the guest's clock was set on resume"
        assert sh(api, hostname, f"kill -0 {sleeper} && cat /proc/sys/kernel/random/boot_id") == boot_id

        qemu = qemu_of(daemon, hostname)
        assert_error(api.post(f"/vm/{hostname}/shutdown", params={"action": "halt"}), 400, "action")
        stopped = api.post(f"/vm/{hostname}/shutdown", params={"action": "reboot"})  # what the Go SDK sends
        assert stopped.status_code == 200, stopped.text
        assert stopped.json() == {"hostname": hostname, "status": "Stopped", "disk_removed": False}
        assert not Path(f"/proc/{qemu}").exists() or "qemu" not in Path(f"/proc/{qemu}/cmdline").read_text()
        assert status_of(api, hostname) == "Stopped"
        for path in ("pause", "resume", "shutdown"):
            assert_error(api.post(f"/vm/{hostname}/{path}"), 409, "Stopped")
        assert_error(api.post(f"/vm/{hostname}/exec", params={"cmd": "true"}), 409, "stopped")
        assert "no clean shutdown" not in daemon.log().split(hostname)[-1]

        relaunched = api.post(f"/vm/{hostname}/relaunch")
        assert relaunched.status_code == 200, relaunched.text
        assert relaunched.json()["persistent"] is True
        assert_error(api.post(f"/vm/{hostname}/relaunch"), 409, "Booting")
        wait_for_agent(api, hostname)
        assert_error(api.post(f"/vm/{hostname}/relaunch"), 409, "Running")
        assert sh(api, hostname, "cat /root/kept") == "before\n"
        assert sh(api, hostname, "cat /proc/sys/kernel/random/boot_id") != boot_id

        # The same through the CLI and the Python SDK.
        assert cli(daemon, "vm", "pause", hostname).stdout == f"{hostname} paused\n".encode()
        with SlicerClient(daemon.url, token=daemon.token) as sdk:
            assert sdk.resume(hostname).status == "Running"
            assert cli(daemon, "vm", "shutdown", hostname).stdout == f"{hostname} stopped\n".encode()
            assert sdk.relaunch(hostname, wait="agent", timeout=180).hostname == hostname
            assert sdk.exec_buffered(hostname, "cat", ["/root/kept"]).stdout == b"before\n"
            refused = cli(daemon, "vm", "resume", hostname)
            assert refused.returncode == 1 and b"it is Running" in refused.stderr, refused

        # The TS SDK sends the action as a JSON body; a paused VM can be shut down too.
        assert api.post(f"/vm/{hostname}/pause").status_code == 200
        stopped = api.post(f"/vm/{hostname}/shutdown", json={"action": "shutdown"})
        assert stopped.status_code == 200 and stopped.json()["status"] == "Stopped", stopped.text
    assert_error(api.post(f"/vm/{hostname}/pause"), 404)


def test_an_ephemeral_sandbox_goes_when_it_stops(daemon: RunningDaemon, api: httpx.Client) -> None:
    """Shut down, or its QEMU killed from outside: an ephemeral sandbox is removed with its disk."""
    first = api.post("/hostgroup/sbox/nodes?wait=agent", json={"cpus": 1, "ram_bytes": 256 * 1024**2})
    second = api.post("/hostgroup/sbox/nodes?wait=agent", json={"cpus": 1, "ram_bytes": 256 * 1024**2})
    assert first.status_code == second.status_code == 201, (first.text, second.text)
    shut, killed = first.json()["hostname"], second.json()["hostname"]
    try:
        stopped = api.post(f"/vm/{shut}/shutdown", content=b"{}", headers={"Content-Type": "application/json"})
        assert stopped.json() == {"hostname": shut, "status": "Deleted", "disk_removed": True}, stopped.text
        os.kill(qemu_of(daemon, killed), signal.SIGKILL)
        wait_for_status(api, killed, None)
        for hostname in (shut, killed):
            assert not (daemon.data_dir / "disks" / f"{hostname}.qcow2").exists()
            assert_error(api.post(f"/vm/{hostname}/relaunch"), 404)
    finally:
        for hostname in (shut, killed):
            api.delete(f"/hostgroup/sbox/nodes/{hostname}")


def test_daemon_stop_removes_sandboxes_and_keeps_what_persists(guest_image: Path, tmp_path: Path) -> None:
    second = start_daemon(tmp_path, guest_image)
    try:
        with second.client() as api:
            created = api.post("/hostgroup/sbox/nodes?wait=agent", json={})
            assert created.status_code == 201, created.text
            hostname = created.json()["hostname"]
            kept = api.post("/hostgroup/sbox/nodes?wait=agent", json={"hostname": "keeper", "persistent": True})
            assert kept.status_code == 201, kept.text
            wait_for_agent(api, "svc-1")
            for vm in ("svc-1", "keeper"):
                assert exec_buffered(api, vm, "/bin/sh", "-c", f"echo {vm} > /root/state")["exit_code"] == 0
            qemu_pids = second.qemu_pids()
            assert len(qemu_pids) == 3
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(90) == 0
    finally:
        stop_daemon(second)
    for pid in qemu_pids:
        assert not Path(f"/proc/{pid}").exists() or "qemu" not in Path(f"/proc/{pid}/comm").read_text()
    disks = {p.name for p in (second.data_dir / "disks").iterdir()}
    assert disks == {"svc-1.qcow2", "keeper.qcow2"}, "the ephemeral sandbox's disk goes, persistent disks stay"
    assert not list((second.data_dir / "run").rglob("*.sock"))
    assert f"{hostname}.log" not in {p.name for p in (second.data_dir / "logs").iterdir()}
    assert "no clean shutdown" not in second.log()
    assert not NetworkNamespace(second.data_dir.absolute()).exists, "the daemon's namespace goes with it"

    # The service and the persistent sandbox come back on the next start with what they wrote before
    # their clean shutdown. This daemon serves on a unix socket, where no token is needed.
    third = start_daemon(tmp_path, guest_image, unix_socket=True)
    try:
        assert Path(third.url).stat().st_mode & 0o777 == 0o600, "no auth on the socket: only its owner may connect"
        with third.client() as api:
            assert sorted(n["hostname"] for n in api.get("/nodes").json()) == ["keeper", "svc-1"]
            for vm in ("svc-1", "keeper"):
                wait_for_agent(api, vm)
                assert exec_buffered(api, vm, "cat", "/root/state")["stdout"] == f"{vm}\n"
        with SlicerClient(third.url) as sdk:
            assert sdk.exec_buffered("svc-1", "hostname").stdout == b"svc-1\n"
            sdk.delete_node("sbox", "keeper")
        # another daemon (another data dir) may not take over a socket a live daemon serves on
        other = tmp_path / "other.yaml"
        other.write_text(CONFIG.format(port=free_port(), address=third.url))
        refused = subprocess.run(
            [sys.executable, "-m", "pyslicer.cli.main", "up", str(other), "--data-dir", str(tmp_path / "other")],
            capture_output=True,
            timeout=120,
        )
        assert refused.returncode == 1 and b"in use by a running server" in refused.stderr, refused
        assert Path(third.url).exists()
    finally:
        stop_daemon(third)
    assert not Path(third.url).exists(), "the daemon removes its socket when it stops"
    assert {p.name for p in (third.data_dir / "disks").iterdir()} == {"svc-1.qcow2"}


def test_concurrent_creates_of_one_hostname(daemon: RunningDaemon, api: httpx.Client) -> None:
    """Only one wins; the loser must not disturb the winner's VM or disk."""
    with ThreadPoolExecutor(4) as pool, daemon.client() as a, daemon.client() as b:
        answers = list(pool.map(lambda c: c.post("/hostgroup/sbox/nodes", json={"hostname": "twin"}), (a, b)))
    assert sorted(r.status_code for r in answers) == [201, 400], [r.text for r in answers]
    assert_error(next(r for r in answers if r.status_code == 400), 400, "already in use")
    assert (daemon.data_dir / "disks" / "twin.qcow2").exists()
    assert "twin" in node_names(api)
    assert api.delete("/hostgroup/sbox/nodes/twin").status_code == 200
    assert not (daemon.data_dir / "disks" / "twin.qcow2").exists()


def test_a_second_daemon_on_the_same_data_dir_is_refused(
    daemon: RunningDaemon, api: httpx.Client, sandbox: str, tmp_path: Path
) -> None:
    config = tmp_path / "slicer.yaml"
    config.write_text(CONFIG.format(port=free_port(), address="127.0.0.1"))
    second = subprocess.run(
        [sys.executable, "-m", "pyslicer.cli.main", "up", str(config), "--data-dir", str(daemon.data_dir)],
        capture_output=True,
        timeout=120,
    )
    assert second.returncode == 1 and b"in use by another slicer daemon" in second.stderr, second
    # the first daemon, its namespace and its VMs are untouched
    assert NetworkNamespace(daemon.data_dir.absolute()).exists
    assert exec_buffered(api, sandbox, "true")["exit_code"] == 0
