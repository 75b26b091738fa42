"""Side by side, in one run, on the same guest image and daemon:

(a) cold create vs fast create (restored from the group's template), both `POST nodes?wait=agent`, rounds
    alternating, two host groups of the same shape (one with `fast_create: false`);
(b) suspend (the API call) and restore -> agent ready, for a 512 MiB guest, against a cold create;
(c) the memory (PSS of each QEMU, summed) of N idle fast-created sandboxes against N cold-booted ones.

Run as root: `.venv/bin/python bench/bench_snapshots.py [--rounds 5] [--vms 5]`. Prints a table; asserts nothing.
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
  - name: fast
    count: 0
    vcpu: 1
    ram_mb: 512
    persistent: false
  - name: cold
    count: 0
    vcpu: 1
    ram_mb: 512
    persistent: false
    fast_create: false
  accel: auto
  api:
    bind_address: 127.0.0.1
    port: {port}
    auth:
      enabled: false
"""
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


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

    def qemus(self) -> dict[str, ProcessIdentity]:
        found = {}
        for pidfile in (self.data_dir / "run").glob("*/qemu.pid"):
            with contextlib.suppress(OSError, ValueError):
                identity = ProcessIdentity.of(int(pidfile.read_text()))
                if identity is not None:
                    found[pidfile.parent.name] = identity
        return found

    def create(self, group: str, **body: object) -> tuple[str, float]:
        started = time.perf_counter()
        response = self.client.post(f"/hostgroup/{group}/nodes", params={"wait": "agent", "timeout": "5m"}, json=body)
        assert response.status_code == 201, response.text
        return response.json()["hostname"], time.perf_counter() - started

    def delete(self, group: str, hostname: str) -> None:
        self.client.delete(f"/hostgroup/{group}/nodes/{hostname}")

    def timed(self, path: str, **params: str) -> float:
        started = time.perf_counter()
        response = self.client.post(path, params=params)
        assert response.status_code == 200, response.text
        return time.perf_counter() - started

    def wait_for_template(self, group: str) -> None:
        while not any((p / "state.vmstate").exists() for p in (self.data_dir / "templates" / group).glob("[!.]*")):
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vms", type=int, default=5)
    parser.add_argument("--image-cache", type=Path, default=Path("/var/tmp/pyslicer-test-images"))
    parser.add_argument("--keep-log", type=Path, help="copy the daemon's log here")
    args = parser.parse_args()

    asyncio.run(ensure_image(args.image_cache, progress=lambda line: print(line, flush=True)))
    work = Path(tempfile.mkdtemp(prefix="pyslicer-bench-"))
    (work / "data").mkdir()
    (work / "data" / "images").symlink_to(args.image_cache / "images")
    daemon = Daemon(work)
    cold: list[float] = []
    fast: list[float] = []
    suspend: list[float] = []
    restore: list[float] = []
    pss: dict[str, list[int]] = {"fast": [], "cold": []}
    leftovers: set[ProcessIdentity] = set()
    try:
        daemon.start()
        first, _ = daemon.create("fast")  # booted: the group's first create starts its template
        daemon.wait_for_template("fast")
        daemon.delete("fast", first)
        for index in range(args.rounds):
            for group, times in (
                (("cold", cold), ("fast", fast)) if index % 2 == 0 else (("fast", fast), ("cold", cold))
            ):
                hostname, created = daemon.create(group)
                times.append(created)
                daemon.delete(group, hostname)
            print(f"round {index + 1}: cold {cold[-1]:.2f}s  fast {fast[-1]:.2f}s", flush=True)

        hostname, _ = daemon.create("cold", persistent=True)
        for index in range(args.rounds):
            suspend.append(daemon.timed(f"/vm/{hostname}/suspend"))
            restore.append(daemon.timed(f"/vm/{hostname}/restore", wait="agent", timeout="5m"))
            print(f"round {index + 1}: suspend {suspend[-1]:.2f}s  restore {restore[-1]:.2f}s", flush=True)
        daemon.delete("cold", hostname)

        for group in ("fast", "cold"):
            hostnames = [daemon.create(group)[0] for _ in range(args.vms)]
            time.sleep(15)  # idle: what a booted guest still touches has settled
            qemus = daemon.qemus()
            leftovers |= set(qemus.values())
            pss[group] = [pss_bytes(qemus[h].pid) for h in hostnames]
            for hostname in hostnames:
                daemon.delete(group, hostname)
    finally:
        leftovers |= set(daemon.qemus().values())
        daemon.stop()
        for identity in leftovers:  # only if the daemon failed to stop them
            if identity.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(identity.pid, signal.SIGKILL)
        if args.keep_log is not None:
            shutil.copy(work / "daemon.log", args.keep_log)
        shutil.rmtree(work, ignore_errors=True)

    cold_median, fast_median = statistics.median(cold), statistics.median(fast)
    print()
    print(f"pyslicer snapshot benchmark: {args.rounds} rounds, {args.vms} idle VMs per kind, 512 MiB guests")
    print()
    print("| measure | result | against | ratio |")
    print("|---|---|---|---|")
    print(
        f"| fast create -> agent ready, median | {fast_median:.2f} s | cold create {cold_median:.2f} s "
        f"| {fast_median / cold_median:.3f} |"
    )
    print(f"| fast create, min / max | {min(fast):.2f} / {max(fast):.2f} s | {min(cold):.2f} / {max(cold):.2f} s | |")
    print(
        f"| suspend (API call), median | {statistics.median(suspend):.2f} s | cold create {cold_median:.2f} s "
        f"| {statistics.median(suspend) / cold_median:.3f} |"
    )
    print(
        f"| restore -> agent ready, median | {statistics.median(restore):.2f} s | cold create {cold_median:.2f} s "
        f"| {statistics.median(restore) / cold_median:.3f} |"
    )
    fast_pss, cold_pss = sum(pss["fast"]) / MIB, sum(pss["cold"]) / MIB
    print(
        f"| PSS of {args.vms} idle fast-created QEMUs | {fast_pss:.0f} MiB ({fast_pss / args.vms:.0f} each) "
        f"| {args.vms} cold-booted {cold_pss:.0f} MiB ({cold_pss / args.vms:.0f} each) | {fast_pss / cold_pss:.2f} |"
    )


if __name__ == "__main__":
    main()
