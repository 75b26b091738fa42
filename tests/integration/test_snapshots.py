"""Suspend and restore against real guests: processes and memory survive; bad requests and bad states."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx

from tests.integration.conftest import RunningDaemon, start_daemon, stop_daemon
from tests.integration.helpers import assert_error, created_sandbox, sh
from tests.integration.test_clients import cli
from tests.integration.test_lifecycle import status_of

# A process to find again, and memory content: /dev/shm is in the guest's RAM, not on its disk.
REMEMBER = "sleep 100000 >/dev/null 2>&1 & echo $! > /dev/shm/pid; head -c 4194304 /dev/urandom > /dev/shm/blob"
RECALL = (
    'pid=$(cat /dev/shm/pid); kill -0 "$pid" && cat /proc/$pid/cmdline | tr "\\0" " "; echo; sha256sum /dev/shm/blob'
)


def state_file(daemon: RunningDaemon, hostname: str) -> str:
    return str(daemon.data_dir / "states" / f"{hostname}.vmstate")


def test_suspend_and_restore_keep_processes_memory_and_clock(daemon: RunningDaemon, api: httpx.Client) -> None:
    with created_sandbox(api, cpus=1, ram_bytes=256 * 1024**2, persistent=True) as hostname:
        assert_error(api.post(f"/vm/{hostname}/restore"), 409, "not Suspended")
        sh(api, hostname, REMEMBER)
        before = sh(api, hostname, RECALL)
        assert "sleep 100000" in before
        qemus = daemon.qemu_pids()

        suspended = api.post(f"/vm/{hostname}/suspend")
        assert suspended.status_code == 200, suspended.text
        assert suspended.json()["status"] == "Suspended"
        assert status_of(api, hostname) == "Suspended"
        assert len(daemon.qemu_pids()) == len(qemus) - 1  # its QEMU ended: memory released
        assert_error(api.post(f"/vm/{hostname}/exec", params={"cmd": "true"}), 409, "suspended")
        assert_error(api.post(f"/vm/{hostname}/suspend"), 409, "Suspended")
        assert_error(api.post(f"/vm/{hostname}/pause"), 409)
        time.sleep(3)  # the host's clock moves on; the guest's must catch up when it is back

        restored = api.post(f"/vm/{hostname}/restore", params={"wait": "agent", "timeout": "2m"})
        assert restored.status_code == 200, restored.text
        assert restored.json()["status"] == "Running"
        assert sh(api, hostname, RECALL) == before  # same PID, same command, same bytes in RAM
        guest_now = float(sh(api, hostname, "date +%s.%N"))
        assert abs(guest_now - time.time()) < 2, guest_now
        # Its network is its own again: the gateway (the host side of its group's bridge) answers.
        gateway = sh(api, hostname, "ip route show default | cut -d' ' -f3").strip()
        sh(api, hostname, f"/usr/local/sbin/busybox ping -c 1 -W 5 {gateway}")

        # Through the CLI too; then a damaged state: a clear error, the VM Stopped, never a crash.
        result = cli(daemon, "vm", "suspend", hostname)
        assert result.returncode == 0, result.stderr
        with open(state_file(daemon, hostname), "r+b") as f:
            f.truncate(200_000)
        result = cli(daemon, "vm", "restore", hostname)
        assert result.returncode != 0
        assert b"cannot restore" in result.stderr and b"Stopped" in result.stderr, result.stderr
        assert status_of(api, hostname) == "Stopped"
        assert_error(api.post(f"/vm/{hostname}/restore"), 409, "not Suspended")


def qemu_command_line(daemon: RunningDaemon, hostname: str) -> str:
    pid = next(pid for pid in daemon.qemu_pids() if f"/{hostname}/" in Path(f"/proc/{pid}/cmdline").read_text())
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")


def wait_for_template(daemon: RunningDaemon, group: str, timeout: float = 240) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = [p for p in (daemon.data_dir / "templates" / group).glob("[!.]*") if (p / "state.vmstate").exists()]
        if ready:
            return ready[0]
        time.sleep(0.5)
    raise AssertionError(f"no template for {group}:\n{daemon.log()[-3000:]}")


IDENTITY = (
    "hostname; cat /etc/machine-id; cat /sys/class/net/eth0/address; ip -4 -o addr show dev eth0 | awk '{print $4}'"
)
# rc.sshd makes a guest's key at its first boot, and again after a restore has dropped the template's.
HOST_KEY = (
    "for i in $(seq 600); do [ -s /etc/ssh/ssh_host_ed25519_key.pub ] && break; sleep 0.1; done; "
    "cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub"
)


def test_fast_create_gives_distinct_working_sandboxes(daemon: RunningDaemon, api: httpx.Client) -> None:
    userdata = "echo ran >> /var/tmp/userdata-runs\n"
    # Another shape than the group's boots; the group's own shape starts the template at its first create (which
    # boots too), unless an earlier test did.
    with created_sandbox(api, userdata=userdata, wait="userdata", cpus=1) as cold:
        assert "-incoming" not in qemu_command_line(daemon, cold)
        with created_sandbox(api):
            pass
        template = wait_for_template(daemon, "sbox")
        metrics = api.get("/metrics").text
        used = next(line for line in metrics.splitlines() if line.startswith('slicer_snapshot_bytes{kind="template"}'))
        assert float(used.split()[-1]) > 0
        with (
            created_sandbox(api, userdata=userdata, wait="userdata") as first,
            created_sandbox(api, userdata=userdata, wait="userdata") as second,
        ):
            identities = {}
            for hostname in (cold, first, second):
                listed = next(n for n in api.get("/nodes").json() if n["hostname"] == hostname)
                name, machine_id, mac, address = sh(api, hostname, IDENTITY).split()
                assert name == hostname
                assert len(machine_id) == 32
                assert address.split("/")[0] == listed["ip"]
                assert sh(api, hostname, "wc -l < /var/tmp/userdata-runs").strip() == "1"
                gateway = sh(api, hostname, "ip route show default | cut -d' ' -f3").strip()
                sh(api, hostname, f"/usr/local/sbin/busybox ping -c 1 -W 5 {gateway}")
                identities[hostname] = (
                    machine_id,
                    mac,
                    address,
                    sh(api, hostname, "head -c 16 /dev/urandom | od -An -tx1"),
                    sh(api, hostname, HOST_KEY).strip(),
                )
            for restored in (first, second):
                command = qemu_command_line(daemon, restored)
                assert "-incoming" in command and f"mem-path={template}/memory.ram,share=off" in command
            # No two share a machine-id, MAC, address, random numbers or SSH host key.
            for index in range(5):
                assert len({identity[index] for identity in identities.values()}) == 3, identities
            # A restored sandbox suspends and restores as any other (its RAM saved whole, not its template's).
            before = sh(api, first, IDENTITY)
            assert api.post(f"/vm/{first}/suspend").status_code == 200
            restored = api.post(f"/vm/{first}/restore", params={"wait": "agent"})
            assert restored.status_code == 200, restored.text
            assert sh(api, first, IDENTITY) == before
            assert "memory-backend-ram" in qemu_command_line(daemon, first)


ONE_GROUP = """
config:
  host_groups:
  - name: keep
    count: 0
    vcpu: 1
    ram_mb: 256
    persistent: true
    fast_create: false
  hypervisor: qemu
  accel: auto
  api:
    bind_address: {address}
    port: {port}
    auth:
      enabled: true
"""


def test_no_room_for_the_state_and_suspended_across_a_restart(guest_image: Path, tmp_path: Path) -> None:
    states = tmp_path / "data" / "states"
    states.mkdir(parents=True)
    (tmp_path / "data" / "images").symlink_to(guest_image)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "snapmem-test", str(states)], check=True)
    mounted = True
    first = start_daemon(tmp_path, guest_image, config_template=ONE_GROUP)
    second = None
    try:
        with first.client() as api:
            created = api.post("/hostgroup/keep/nodes", params={"wait": "agent", "timeout": "3m"}, json={})
            assert created.status_code == 201, created.text
            hostname = created.json()["hostname"]
            sh(api, hostname, REMEMBER)
            before = sh(api, hostname, RECALL)
            assert_error(api.post(f"/vm/{hostname}/suspend"), 413, "needs up to", "keeps running")
            assert status_of(api, hostname) == "Running"
            assert sh(api, hostname, RECALL) == before
            assert list(states.iterdir()) == []
            subprocess.run(["umount", str(states)], check=True)
            mounted = False
            assert api.post(f"/vm/{hostname}/suspend").status_code == 200
        stop_daemon(first)
        assert first.qemu_pids() == set()
        second = start_daemon(tmp_path, guest_image, config_template=ONE_GROUP)
        with second.client() as api:
            assert status_of(api, hostname) == "Suspended"
            assert second.qemu_pids() == set()
            restored = api.post(f"/vm/{hostname}/restore", params={"wait": "agent"})
            assert restored.status_code == 200, restored.text
            assert sh(api, hostname, RECALL) == before
            assert not (states / f"{hostname}.vmstate").exists()
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(states)], check=False)
        stop_daemon(first)
        if second is not None:
            stop_daemon(second)
