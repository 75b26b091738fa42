"""Density: host memory per sandbox, the old settings against the new ones, side by side in one run.

(a) TCG's code cache (``tcg_tb_size``): one daemon per size, all up at once, one 512 MiB sandbox each; the
    sandboxes take turns (one busy at a time) running the same commands, so each size sees the same machine.
    Boot (create -> agent ready, one at a time), exec latency per command, and the QEMU's memory at the end.
(b) N sandboxes of 512 MiB under the old settings (QEMU's 1 GiB code cache, no free page reporting) and N
    under the new (the defaults), two daemons up at once, every sandbox given one exec every few seconds for M
    minutes; host memory per sandbox (RSS and PSS, mean and max, from ``/nodes/stats``) at a tenth, half and
    the end of the run (1, 5 and 10 minutes at the issue's M=10).
(c) with ``--ksm``: KSM switched on for a few minutes with both fleets still running (and switched back off
    after: it is a host-wide setting), the same figures again. QEMU marks guest RAM mergeable by default.

Run as root: `.venv/bin/python bench/bench_density.py [--vms 50] [--minutes 10] [--ksm]`. The defaults are the
issue's; on a shared 2-core machine run it scaled down (`--vms 6 --minutes 3`). Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
    ram_mb: {ram_mb}
    persistent: false
  accel: auto
  tcg_tb_size: {tb_size}M
  free_page_reporting: {reporting}
  memory_overcommit_ratio: 100
  api:
    bind_address: 127.0.0.1
    port: {port}
    auth:
      enabled: false
"""
MIB = 1024 * 1024
# Each exec is one of these in turn: nothing, an interpreter start, and a pipeline of small programs.
WORKLOAD = (
    ("true", ["true"]),
    ("python3 -c pass", ["python3", "-c", "pass"]),
    ("ls -l /usr/bin piped to sha256sum", ["sh", "-c", "ls -l /usr/bin | sha256sum"]),
)
# (a) adds a heavier one that translates a lot of code.
HEAVY = ("python3 import json, asyncio, http.server", ["python3", "-c", "import json, asyncio, http.server"])
KSM = Path("/sys/kernel/mm/ksm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f}" if values else "-"


class Daemon:
    def __init__(self, work: Path, images: Path, *, ram_mb: int, tb_size: int, reporting: bool) -> None:
        self.work = work
        self.data_dir = work / "data"
        self.data_dir.mkdir(parents=True)
        (self.data_dir / "images").symlink_to(images)
        self.port = free_port()
        config = CONFIG.format(ram_mb=ram_mb, tb_size=tb_size, reporting=str(reporting).lower(), port=self.port)
        (work / "slicer.yaml").write_text(config)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=600)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pyslicer.cli.main", "up", str(work / "slicer.yaml"), "--data-dir",
             str(self.data_dir)],
            stdout=(work / "daemon.log").open("ab"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.qemus: set[ProcessIdentity] = set()

    def wait_up(self) -> None:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if self.client.get("/healthz", timeout=1).status_code == 200:
                    return
            if self.process.poll() is not None:
                sys.exit((self.work / "daemon.log").read_text())
            time.sleep(0.05)

    def create(self) -> tuple[str, float]:
        started = time.perf_counter()
        response = self.client.post("/hostgroup/sbox/nodes", params={"wait": "agent", "timeout": "10m"}, json={})
        if response.status_code != 201:
            sys.exit(f"create failed: {response.status_code} {response.text}")
        self.remember_qemus()
        return response.json()["hostname"], time.perf_counter() - started

    def remember_qemus(self) -> None:
        for pidfile in (self.data_dir / "run").glob("*/qemu.pid"):
            with contextlib.suppress(OSError, ValueError):
                identity = ProcessIdentity.of(int(pidfile.read_text()))
                if identity is not None:
                    self.qemus.add(identity)

    def exec(self, hostname: str, argv: list[str]) -> float:
        started = time.perf_counter()
        params = [("cmd", argv[0]), *(("args", arg) for arg in argv[1:]), ("buffered", "true")]
        response = self.client.post(f"/vm/{hostname}/exec", params=params)
        elapsed = time.perf_counter() - started
        if response.status_code != 200 or response.json().get("exit_code") != 0:
            print(f"exec {argv} on {hostname}: {response.status_code} {response.text[:200]}", flush=True)
        return elapsed

    def host_memory(self) -> list[dict[str, int]]:
        return [entry.get("host", {}) for entry in self.client.get("/nodes/stats").json()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(300)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for identity in self.qemus:  # only ours, and only if the daemon failed to stop them
            if identity.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(identity.pid, signal.SIGKILL)
        self.client.close()


@contextlib.contextmanager
def daemons(images: Path, settings: list[tuple[int, bool]], ram_mb: int) -> Iterator[list[Daemon]]:
    work = Path(tempfile.mkdtemp(prefix="pyslicer-density-"))
    started: list[Daemon] = []
    try:
        for index, (tb_size, reporting) in enumerate(settings):
            started.append(Daemon(work / str(index), images, ram_mb=ram_mb, tb_size=tb_size, reporting=reporting))
        for daemon in started:
            daemon.wait_up()
        yield started
    finally:
        for daemon in started:
            daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


def code_cache(images: Path, sizes: list[int], rounds: int, ram_mb: int) -> None:
    commands = [*WORKLOAD, HEAVY]
    with daemons(images, [(size, True) for size in sizes], ram_mb) as fleet:
        boots: dict[int, float] = {}
        hosts: dict[int, str] = {}
        for size, daemon in zip(sizes, fleet, strict=True):
            hosts[size], boots[size] = daemon.create()
            print(f"tb-size {size} MiB: agent ready in {boots[size]:.1f}s", flush=True)
        latency: dict[tuple[int, str], list[float]] = {}
        for round_index in range(rounds):
            for size, daemon in zip(sizes, fleet, strict=True):
                for name, argv in commands:
                    latency.setdefault((size, name), []).append(daemon.exec(hosts[size], argv))
            print(f"round {round_index + 1}/{rounds} done", flush=True)
        memory = {size: daemon.host_memory()[0] for size, daemon in zip(sizes, fleet, strict=True)}
    base = 1024 if 1024 in sizes else sizes[-1]
    print()
    print(f"(a) TCG code cache: one {ram_mb} MiB sandbox per size, {rounds} rounds taking turns; exec medians in ms")
    print()
    names = [name for name, _ in commands]
    print("| tb-size | boot s | " + " | ".join(names) + " | RSS MiB | private MiB | boot, heavy exec vs "
          f"{base} MiB |")  # fmt: skip
    print("|---|---|" + "---|" * len(names) + "---|---|---|")
    for size in sizes:
        cells = [median_ms(latency[(size, name)]) for name in names]
        heavy = statistics.median(latency[(size, HEAVY[0])]) / statistics.median(latency[(base, HEAVY[0])])
        rss = memory[size].get("rss_bytes", 0) / MIB
        private = memory[size].get("private_bytes", 0) / MIB
        print(f"| {size} MiB | {boots[size]:.1f} | " + " | ".join(cells) + f" | {rss:.0f} | {private:.0f} | "
              f"{boots[size] / boots[base]:.2f}, {heavy:.2f} |")  # fmt: skip


@dataclass
class Sample:
    label: str
    per_setting: dict[str, list[dict[str, int]]] = field(default_factory=dict)


def figure(entries: list[dict[str, int]], key: str) -> tuple[float, float]:
    values = [entry[key] / MIB for entry in entries if entry.get(key)]
    return (statistics.mean(values), max(values)) if values else (0.0, 0.0)


def print_samples(samples: list[Sample], names: list[str], vms: int, ram_mb: int, mem_total: int) -> None:
    print()
    print(f"(b) {vms} sandboxes of {ram_mb} MiB per setting, one exec each every few seconds; host memory per "
          "sandbox in MiB")  # fmt: skip
    print()
    print("| at | setting | RSS mean | RSS max | PSS mean | PSS max | private mean | fit in this host by PSS |")
    print("|---|---|---|---|---|---|---|---|")
    for sample in samples:
        for name in names:
            entries = sample.per_setting[name]
            rss, rss_max = figure(entries, "rss_bytes")
            pss, pss_max = figure(entries, "pss_bytes")
            private, _ = figure(entries, "private_bytes")
            fit = int(mem_total / MIB / pss) if pss else 0
            print(f"| {sample.label} | {name} | {rss:.0f} | {rss_max:.0f} | {pss:.0f} | {pss_max:.0f} | "
                  f"{private:.0f} | {fit} |")  # fmt: skip
    last = samples[-1].per_setting
    old, new = figure(last[names[0]], "pss_bytes")[0], figure(last[names[1]], "pss_bytes")[0]
    if old and new:
        print(f"\nPSS per sandbox at the end, new / old: {new / old:.2f}")


def busy(fleet: list[Daemon], hosts: list[list[str]], every: float, until: float, latency: list[list[float]]) -> None:
    """One exec per sandbox every ``every`` seconds (spread over the period) until ``until``."""
    stop = threading.Event()
    jobs = [(index, hostname) for index, names in enumerate(hosts) for hostname in names]

    def run(position: int, index: int, hostname: str) -> None:
        commands = itertools.cycle(WORKLOAD)
        stop.wait(every * position / len(jobs))
        while not stop.is_set() and time.monotonic() < until:
            started = time.monotonic()
            latency[index].append(fleet[index].exec(hostname, next(commands)[1]))
            stop.wait(max(0.0, every - (time.monotonic() - started)))

    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(run, position, index, hostname) for position, (index, hostname) in enumerate(jobs)]
        try:
            for future in futures:
                future.result()
        finally:
            stop.set()


def density(images: Path, vms: int, minutes: float, every: float, ram_mb: int, ksm_minutes: float | None) -> None:
    settings = {"old (tb 1024M, no reporting)": (1024, False), "new (defaults)": (64, True)}
    names = list(settings)
    with daemons(images, list(settings.values()), ram_mb) as fleet:
        hosts: list[list[str]] = [[] for _ in fleet]

        def create(index: int) -> None:
            hosts[index].append(fleet[index].create()[0])

        started = time.monotonic()
        with ThreadPoolExecutor(2) as pool:  # two cores: more boots at once only make each slower
            list(pool.map(create, [index for _ in range(vms) for index in range(len(fleet))]))
        print(f"{vms * len(fleet)} sandboxes ready in {time.monotonic() - started:.0f}s", flush=True)
        latency: list[list[float]] = [[] for _ in fleet]
        samples: list[Sample] = []
        begin = time.monotonic()
        for fraction in (0.1, 0.5, 1.0):
            busy(fleet, hosts, every, begin + fraction * minutes * 60, latency)
            label = f"{fraction * minutes:g} min"
            samples.append(Sample(label, {name: d.host_memory() for name, d in zip(names, fleet, strict=True)}))
            print(f"sampled at {label}", flush=True)
        if ksm_minutes:
            with ksm_on():
                busy(fleet, hosts, every, time.monotonic() + ksm_minutes * 60, latency)
                label = f"+{ksm_minutes:g} min KSM"
                samples.append(Sample(label, {name: d.host_memory() for name, d in zip(names, fleet, strict=True)}))
                merged = int((KSM / "pages_sharing").read_text()) * os.sysconf("SC_PAGE_SIZE") // MIB
                print(f"KSM: {merged} MiB shared (all of this host's mergeable memory)", flush=True)
    mem_total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    print_samples(samples, names, vms, ram_mb, mem_total)
    for name, times in zip(names, latency, strict=True):
        print(f"exec latency under {name}: median {median_ms(times)} ms over {len(times)} execs")


@contextlib.contextmanager
def ksm_on() -> Iterator[None]:
    saved = {name: (KSM / name).read_text().strip() for name in ("run", "pages_to_scan")}
    try:
        (KSM / "pages_to_scan").write_text("1000")
        (KSM / "run").write_text("1")
        yield
    finally:
        for name, value in saved.items():
            (KSM / name).write_text(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=50, help="sandboxes per setting in (b)")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--every", type=float, default=5, help="seconds between one sandbox's execs")
    parser.add_argument("--ram-mb", type=int, default=512)
    parser.add_argument("--tb-sizes", default="16,32,64,128,256,1024", help="MiB, for (a)")
    parser.add_argument("--tb-rounds", type=int, default=5)
    parser.add_argument("--ksm", type=float, nargs="?", const=2.0, default=None, metavar="MINUTES")
    parser.add_argument("--skip", choices=("a", "b"), help="leave one part out")
    parser.add_argument("--image-cache", type=Path, default=Path("/var/tmp/pyslicer-test-images"))
    args = parser.parse_args()

    asyncio.run(ensure_image(args.image_cache, progress=lambda line: print(line, flush=True)))
    images = args.image_cache / "images"
    if args.skip != "a":
        code_cache(images, [int(size) for size in args.tb_sizes.split(",")], args.tb_rounds, args.ram_mb)
    if args.skip != "b":
        density(images, args.vms, args.minutes, args.every, args.ram_mb, args.ksm)


if __name__ == "__main__":
    main()
