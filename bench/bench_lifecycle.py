"""Side by side, in one run, on the same guest image and daemon:

(a) pause and resume latency (the API call; and resume until an exec answers);
(b) shutdown -> Stopped and relaunch -> agent ready, against a cold create -> agent ready (rounds alternate);
(c) a daemon restart: killed with SIGKILL while N VMs run, the next daemon up, then every VM answering its health
    check (adopted, not booted), against the same daemon starting with no VMs.

Run as root: `.venv/bin/python bench/bench_lifecycle.py [--rounds 3] [--pauses 20] [--vms 10]`. Prints a table;
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
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
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
MS = 1000.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def spread(values: list[float]) -> str:
    return f"{percentile(values, 0.5) * MS:.1f} / {percentile(values, 0.99) * MS:.1f} ms"


class Daemon:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.data_dir = work / "data"
        self.port = free_port()
        (work / "slicer.yaml").write_text(CONFIG.format(port=self.port))
        self.process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=300)

    def start(self) -> float:
        """Start it; seconds until it answers /healthz."""
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pyslicer.cli.main", "up", str(self.work / "slicer.yaml"), "--data-dir",
             str(self.data_dir)],
            stdout=(self.work / "daemon.log").open("ab"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        while True:
            with contextlib.suppress(httpx.TransportError):
                if self.client.get("/healthz", timeout=1).status_code == 200:
                    return time.perf_counter() - started
            if self.process.poll() is not None:
                sys.exit((self.work / "daemon.log").read_text())
            time.sleep(0.02)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

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

    def create(self, **body: object) -> tuple[str, float]:
        started = time.perf_counter()
        response = self.client.post("/hostgroup/sbox/nodes", params={"wait": "agent", "timeout": "5m"}, json=body)
        assert response.status_code == 201, response.text
        return response.json()["hostname"], time.perf_counter() - started

    def timed(self, path: str, **params: str) -> float:
        started = time.perf_counter()
        response = self.client.post(path, params=params)
        assert response.status_code == 200, response.text
        return time.perf_counter() - started

    def answering(self, hostnames: list[str]) -> None:
        waiting = set(hostnames)
        while waiting:
            waiting = {h for h in waiting if self.client.get(f"/vm/{h}/health").status_code != 200}
            if waiting:
                time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pauses", type=int, default=20)
    parser.add_argument("--vms", type=int, default=10)
    parser.add_argument("--image-cache", type=Path, default=Path("/var/tmp/pyslicer-test-images"))
    args = parser.parse_args()

    asyncio.run(ensure_image(args.image_cache, progress=lambda line: print(line, flush=True)))
    work = Path(tempfile.mkdtemp(prefix="pyslicer-bench-"))
    (work / "data").mkdir()
    (work / "data" / "images").symlink_to(args.image_cache / "images")
    daemon = Daemon(work)
    pause: list[float] = []
    resume: list[float] = []
    resume_exec: list[float] = []
    cold: list[float] = []
    shutdown: list[float] = []
    relaunch: list[float] = []
    leftovers: set[ProcessIdentity] = set()
    try:
        empty_start = daemon.start()
        for index in range(args.rounds):
            hostname, created = daemon.create(persistent=True)
            cold.append(created)
            if index == 0:
                for _ in range(args.pauses):
                    pause.append(daemon.timed(f"/vm/{hostname}/pause"))
                    resume.append(daemon.timed(f"/vm/{hostname}/resume"))
                    daemon.timed(f"/vm/{hostname}/pause")
                    started = time.perf_counter()
                    daemon.client.post(f"/vm/{hostname}/resume")
                    answer = daemon.client.post(f"/vm/{hostname}/exec", params={"cmd": "true", "buffered": "true"})
                    assert answer.json()["exit_code"] == 0, answer.text
                    resume_exec.append(time.perf_counter() - started)
            shutdown.append(daemon.timed(f"/vm/{hostname}/shutdown"))
            relaunch.append(daemon.timed(f"/vm/{hostname}/relaunch", wait="agent", timeout="5m"))
            daemon.client.delete(f"/hostgroup/sbox/nodes/{hostname}")
            print(f"round {index + 1}: cold {cold[-1]:.2f}s  shutdown {shutdown[-1]:.2f}s  "
                  f"relaunch {relaunch[-1]:.2f}s", flush=True)  # fmt: skip

        with ThreadPoolExecutor(2) as pool:  # two cores: more at once only makes each boot slower
            fleet = [h for h, _ in pool.map(lambda i: daemon.create(persistent=i % 2 == 0), range(args.vms))]
        leftovers = daemon.qemus()
        daemon.kill()
        started = time.perf_counter()
        restart_up = daemon.start()
        daemon.answering(fleet)
        restart_all = time.perf_counter() - started
        adopted = daemon.qemus() == leftovers
    finally:
        daemon.stop()
        for identity in leftovers:  # only if the daemon failed to stop them
            if identity.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(identity.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)

    cold_median = statistics.median(cold)
    print()
    print(f"pyslicer lifecycle benchmark: {args.rounds} rounds, {args.pauses} pause/resume pairs, {args.vms} VMs")
    print()
    print("| measure | result | against | ratio |")
    print("|---|---|---|---|")
    print(f"| pause (API call) p50 / p99 | {spread(pause)} | | |")
    print(f"| resume (API call) p50 / p99 | {spread(resume)} | | |")
    print(f"| resume -> exec `true` answered, p50 / p99 | {spread(resume_exec)} | | |")
    print(
        f"| shutdown -> Stopped, median | {statistics.median(shutdown):.2f} s | cold create -> agent "
        f"{cold_median:.2f} s | {statistics.median(shutdown) / cold_median:.2f} |"
    )
    print(
        f"| relaunch -> agent ready, median | {statistics.median(relaunch):.2f} s | cold create -> agent "
        f"{cold_median:.2f} s | {statistics.median(relaunch) / cold_median:.2f} |"
    )
    print(
        f"| daemon restart after SIGKILL with {args.vms} VMs -> API up | {restart_up:.2f} s | start with no VMs "
        f"{empty_start:.2f} s | {restart_up / empty_start:.2f} |"
    )
    print(
        f"| same -> all {args.vms} VMs answering (adopted: {'yes' if adopted else 'NO'}) | {restart_all:.2f} s "
        f"| one cold create {cold_median:.2f} s | {restart_all / cold_median:.2f} |"
    )


if __name__ == "__main__":
    main()
