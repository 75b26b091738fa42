"""What polling stats costs: the daemon's CPU time per second while `GET /nodes/stats` is polled once a second for
N running VMs, side by side with the same daemon left idle, in alternating windows (so machine noise hits both).

Also shown: the VMs' QEMU CPU over the same windows (the guest side: each agent reads /proc under TCG), and the
poll's latency. The cost per VM-poll is (polling - idle) / VM-polls answered; the figure for 50 VMs is that
cost times 50, extrapolated, not measured (50 TCG guests do not fit this 2-core box's CPU sensibly).

Run as root: `.venv/bin/python bench/bench_stats.py [--vms 10] [--rounds 3] [--window 20]`. Prints a table;
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from pyslicer.image import ensure_image

CONFIG = """
config:
  host_groups:
  - name: sbox
    count: 0
    vcpu: 1
    ram_mb: 256
    persistent: false
  accel: auto
  api:
    bind_address: 127.0.0.1
    port: {port}
    auth:
      enabled: false
"""
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (all its threads), 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def qemu_pids(daemon_pid: int) -> list[int]:
    pids = []
    for task in Path(f"/proc/{daemon_pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in map(int, (task / "children").read_text().split()):
                # QEMU daemonizes and is reparented to the daemon, its subreaper
                if Path(f"/proc/{child}/comm").read_text().startswith("qemu-system"):
                    pids.append(child)
    return pids


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Window:
    """CPU of the daemon and of the QEMUs over one window of wall time."""

    def __init__(self, daemon_pid: int, qemus: list[int]) -> None:
        self.daemon_pid, self.qemus = daemon_pid, qemus
        self.started = time.monotonic()
        self.daemon_start = cpu_seconds(daemon_pid)
        self.qemu_start = sum(cpu_seconds(pid) for pid in qemus)

    def close(self) -> tuple[float, float, float]:
        """Wall seconds, daemon CPU seconds, QEMU CPU seconds (all VMs)."""
        return (
            time.monotonic() - self.started,
            cpu_seconds(self.daemon_pid) - self.daemon_start,
            sum(cpu_seconds(pid) for pid in self.qemus) - self.qemu_start,
        )


def idle_window(daemon_pid: int, qemus: list[int], seconds: float) -> tuple[float, float, float]:
    window = Window(daemon_pid, qemus)
    time.sleep(seconds)
    return window.close()


def polling_window(
    client: httpx.Client, daemon_pid: int, qemus: list[int], seconds: float
) -> tuple[tuple[float, float, float], int, int, list[float]]:
    """Poll once a second (on the second, not back to back). Returns the window's CPU, the polls, the VM
    entries that came with a snapshot, and each poll's latency."""
    window = Window(daemon_pid, qemus)
    polls = answered = 0
    latencies: list[float] = []
    next_poll = time.monotonic()
    deadline = next_poll + seconds
    while next_poll < deadline:
        time.sleep(max(0.0, next_poll - time.monotonic()))
        started = time.perf_counter()
        entries = client.get("/nodes/stats").json()
        latencies.append(time.perf_counter() - started)
        polls += 1
        answered += sum(1 for entry in entries if entry.get("snapshot"))
        next_poll += 1.0
    time.sleep(max(0.0, deadline - time.monotonic()))
    return window.close(), polls, answered, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="idle/polling window pairs")
    parser.add_argument("--window", type=float, default=20.0, help="seconds per window")
    parser.add_argument("--image-cache", type=Path, default=Path("/var/tmp/pyslicer-test-images"))
    args = parser.parse_args()

    asyncio.run(ensure_image(args.image_cache, progress=lambda line: print(line, flush=True)))
    work = Path(tempfile.mkdtemp(prefix="pyslicer-bench-stats-"))
    data_dir = work / "data"
    data_dir.mkdir()
    (data_dir / "images").symlink_to(args.image_cache / "images")
    port = free_port()
    (work / "slicer.yaml").write_text(CONFIG.format(port=port))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "pyslicer.cli.main", "up", str(work / "slicer.yaml"), "--data-dir", str(data_dir)],
        stdout=(work / "daemon.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    idle: list[tuple[float, float, float]] = []
    polling: list[tuple[float, float, float]] = []
    polls = answered = 0
    latencies: list[float] = []
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
        while True:
            with contextlib.suppress(httpx.TransportError):
                if client.get("/healthz").status_code == 200:
                    break
            if daemon.poll() is not None:
                sys.exit((work / "daemon.log").read_text())
            time.sleep(0.1)
        started = time.perf_counter()

        def create(_: int) -> str:
            response = client.post("/hostgroup/sbox/nodes", params={"wait": "agent", "timeout": "10m"}, json={})
            response.raise_for_status()
            return str(response.json()["hostname"])

        with ThreadPoolExecutor(args.vms) as pool:
            hostnames = list(pool.map(create, range(args.vms)))
        print(f"{args.vms} VMs ready in {time.perf_counter() - started:.1f}s; settling", flush=True)
        time.sleep(15)  # let boot-time work (the background resize, first imports) finish
        client.get("/nodes/stats")  # the agents import the stats module once
        qemus = qemu_pids(daemon.pid)
        for index in range(args.rounds):
            idle.append(idle_window(daemon.pid, qemus, args.window))
            window, count, entries, times = polling_window(client, daemon.pid, qemus, args.window)
            polling.append(window)
            polls, answered, latencies = polls + count, answered + entries, latencies + times
            print(
                f"round {index + 1}: daemon idle {idle[-1][1] / idle[-1][0] * 100:.2f}% "
                f"polling {window[1] / window[0] * 100:.2f}% of a core",
                flush=True,
            )
        for hostname in hostnames:
            client.delete(f"/hostgroup/sbox/nodes/{hostname}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(120)
        shutil.rmtree(work, ignore_errors=True)

    def rate(windows: list[tuple[float, float, float]], which: int) -> float:
        return sum(w[which] for w in windows) / sum(w[0] for w in windows)

    daemon_idle, daemon_polling = rate(idle, 1), rate(polling, 1)
    qemu_idle, qemu_polling = rate(idle, 2), rate(polling, 2)
    polling_seconds = sum(w[0] for w in polling)
    per_vm_poll = (daemon_polling - daemon_idle) * polling_seconds / max(1, answered)
    guest_per_vm_poll = (qemu_polling - qemu_idle) * polling_seconds / max(1, answered)
    ms = 1000.0
    print()
    print(
        f"stats polling cost: {args.vms} VMs (1 vCPU, 256 MiB, TCG), {args.rounds} x {args.window:g}s idle and "
        f"polling windows alternating; {polls} polls, {answered} of {polls * args.vms} entries with a snapshot"
    )
    print()
    print("| measure | idle | polling /nodes/stats at 1 Hz | difference |")
    print("|---|---|---|---|")
    print(
        f"| daemon CPU, % of one core | {daemon_idle * 100:.2f}% | {daemon_polling * 100:.2f}% "
        f"| +{(daemon_polling - daemon_idle) * 100:.2f}% (ratio {daemon_polling / max(daemon_idle, 1e-9):.2f}) |"
    )
    print(
        f"| all {args.vms} QEMUs' CPU, % of one core | {qemu_idle * 100:.1f}% | {qemu_polling * 100:.1f}% "
        f"| +{(qemu_polling - qemu_idle) * 100:.1f}% |"
    )
    print(f"| daemon CPU per VM-poll | | | {per_vm_poll * ms:.2f} ms |")
    print(f"| QEMU (guest agent) CPU per VM-poll | | | {guest_per_vm_poll * ms:.2f} ms |")
    print(
        f"| `GET /nodes/stats` latency p50 / p99 | | {percentile(latencies, 0.5) * ms:.1f} / "
        f"{percentile(latencies, 0.99) * ms:.1f} ms | |"
    )
    print(
        f"| 50 VMs polled at 1 Hz, EXTRAPOLATED (50 x per VM-poll) | | | daemon {per_vm_poll * 50 * 100:.1f}% "
        f"of a core, guests {guest_per_vm_poll * 50 * 100:.1f}% of a core |"
    )


if __name__ == "__main__":
    main()
