"""Side by side, in one run, on the same guest image and daemon:

(a) commit of a stopped VM (the API call), for a VM that wrote little and one that wrote --written-mb, against
    what a flattening design would pay: ``qemu-img convert`` of the same disk (its chain) into one qcow2;
(b) fork -> agent ready (wait=agent) against a cold create -> agent ready, rounds alternating;
(c) fork with wait=none (the API answer) against the same.

Run as root: `.venv/bin/python bench/bench_commits.py [--rounds 5] [--written-mb 64]`. Prints a table; asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from pyslicer.image import ensure_image
from pyslicer.vmm import ProcessIdentity

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Daemon:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.data_dir = work / "data"
        self.port = free_port()
        (work / "slicer.yaml").write_text(CONFIG.format(port=self.port))
        self.process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=300)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pyslicer.cli.main", "up", str(self.work / "slicer.yaml"), "--data-dir",
             str(self.data_dir)],
            stdout=(self.work / "daemon.log").open("ab"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        while True:
            with contextlib.suppress(httpx.TransportError):
                if self.client.get("/healthz", timeout=1).status_code == 200:
                    return
            if self.process.poll() is not None:
                sys.exit((self.work / "daemon.log").read_text())
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(120)

    def qemus(self) -> set[ProcessIdentity]:
        found = set()
        for pidfile in (self.data_dir / "run").glob("*/qemu.pid"):
            with contextlib.suppress(OSError, ValueError):
                identity = ProcessIdentity.of(int(pidfile.read_text()))
                if identity is not None:
                    found.add(identity)
        return found

    def post(self, path: str, expect: int = 200, **kwargs: object) -> tuple[dict[str, object], float]:
        started = time.perf_counter()
        response = self.client.post(path, **kwargs)  # type: ignore[arg-type]
        elapsed = time.perf_counter() - started
        assert response.status_code == expect, response.text
        body: dict[str, object] = response.json()
        return body, elapsed

    def exec(self, hostname: str, script: str) -> None:
        params = {"cmd": "/bin/sh", "args": ["-c", script], "buffered": "true"}
        answer = self.client.post(f"/vm/{hostname}/exec", params=params)
        assert answer.json()["exit_code"] == 0, answer.text

    def delete(self, hostname: str) -> None:
        self.client.delete(f"/hostgroup/sbox/nodes/{hostname}")

    def wait_agent(self, hostname: str) -> None:
        while self.client.get(f"/vm/{hostname}/health").status_code != 200:
            time.sleep(0.02)


def stopped_source(daemon: Daemon, written_mb: int) -> str:
    body, _ = daemon.post("/hostgroup/sbox/nodes", 201, params={"wait": "agent"}, json={"persistent": True})
    hostname = str(body["hostname"])
    if written_mb:
        daemon.exec(hostname, f"head -c {written_mb}M /dev/urandom > /root/blob && sync")
    daemon.post(f"/vm/{hostname}/shutdown")
    return hostname


def flatten_seconds(disk: Path) -> float:
    """What committing by copying would cost: the disk's chain converted into one standalone qcow2."""
    target = disk.with_name(".bench-flat.qcow2")
    started = time.perf_counter()
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(disk), str(target)], check=True)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--written-mb", type=int, default=64)
    parser.add_argument("--image-cache", type=Path, default=Path("/var/tmp/pyslicer-test-images"))
    args = parser.parse_args()

    asyncio.run(ensure_image(args.image_cache, progress=lambda line: print(line, flush=True)))
    work = Path(tempfile.mkdtemp(prefix="pyslicer-bench-"))
    (work / "data").mkdir()
    (work / "data" / "images").symlink_to(args.image_cache / "images")
    daemon = Daemon(work)
    commits: dict[int, tuple[float, float, int]] = {}  # written MiB -> (commit s, flatten s, commit bytes)
    cold: list[float] = []
    forked: list[float] = []
    no_wait: list[float] = []
    no_wait_ready: list[float] = []
    leftovers: set[ProcessIdentity] = set()
    try:
        daemon.start()
        commit_id = ""
        for written in (0, args.written_mb):
            source = stopped_source(daemon, written)
            flat = flatten_seconds(daemon.data_dir / "disks" / f"{source}.qcow2")
            body, took = daemon.post(f"/vm/{source}/commit")
            commit_id = str(body["commit_id"])
            [listed] = [c for c in daemon.client.get("/vm/commits").json() if c["commit_id"] == commit_id]
            commits[written] = (took, flat, int(listed["size_bytes"]))
            print(f"commit of a VM that wrote {written} MiB: {took * 1000:.1f} ms (flatten {flat:.2f} s)", flush=True)
        for index in range(args.rounds):
            body, took = daemon.post("/hostgroup/sbox/nodes", 201, params={"wait": "agent"}, json={})
            cold.append(took)
            daemon.delete(str(body["hostname"]))
            body, took = daemon.post(f"/vm/commits/{commit_id}/fork", params={"wait": "agent"})
            forked.append(took)
            daemon.delete(str(body["hostname"]))
            started = time.perf_counter()
            body, took = daemon.post(f"/vm/commits/{commit_id}/fork", params={"wait": "none"})
            no_wait.append(took)
            daemon.wait_agent(str(body["hostname"]))
            no_wait_ready.append(time.perf_counter() - started)
            daemon.delete(str(body["hostname"]))
            print(f"round {index + 1}: cold {cold[-1]:.2f}s  fork {forked[-1]:.2f}s  "
                  f"fork wait=none {no_wait[-1] * 1000:.0f} ms", flush=True)  # fmt: skip
        leftovers = daemon.qemus()
    finally:
        daemon.stop()
        for identity in leftovers:  # only if the daemon failed to stop them
            if identity.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(identity.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)

    cold_median = statistics.median(cold)
    print()
    print(f"pyslicer commit benchmark: {args.rounds} rounds (cold create and fork alternating)")
    print()
    print("| measure | result | against | ratio |")
    print("|---|---|---|---|")
    for written, (took, flat, size) in commits.items():
        print(
            f"| commit of a stopped VM that wrote {written} MiB (commit {size / 2**20:.1f} MiB) | "
            f"{took * 1000:.1f} ms | flattening its disk {flat:.2f} s | {took / flat:.3f} |"
        )
    print(
        f"| fork -> agent ready, median | {statistics.median(forked):.2f} s | cold create -> agent "
        f"{cold_median:.2f} s | {statistics.median(forked) / cold_median:.2f} |"
    )
    print(
        f"| fork wait=none -> answer, median | {statistics.median(no_wait) * 1000:.0f} ms | cold create -> agent "
        f"{cold_median:.2f} s | {statistics.median(no_wait) / cold_median:.3f} |"
    )
    print(
        f"| fork wait=none -> agent ready, median | {statistics.median(no_wait_ready):.2f} s | cold create -> "
        f"agent {cold_median:.2f} s | {statistics.median(no_wait_ready) / cold_median:.2f} |"
    )


if __name__ == "__main__":
    main()
