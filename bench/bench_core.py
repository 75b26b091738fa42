"""Side by side, in one run, on the same guest image:

(a) a raw QEMU launch of the image -> its agent answering READY, versus pyslicer's
    `POST /hostgroup/sbox/nodes?wait=agent` end to end (rounds alternate, so machine noise hits both);
(b) `exec` of `true`: round trip through the API (buffered and streaming) and through the bare agent channel,
    against the guest-side duration (ended_at - started_at), to show what the daemon and HTTP add.

Run as root: `.venv/bin/python bench/bench_core.py [--rounds 5] [--execs 50]`. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import http.client
import json
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
from typing import Any

import httpx

from pyslicer.daemon.storage import create_overlay
from pyslicer.image import GuestImage, ensure_image
from pyslicer.protocol import FrameDecoder, FrameType, decode_json, encode_json
from pyslicer.vmm.accel import choose_accel
from pyslicer.vmm.base import VMSpec
from pyslicer.vmm.qemu import build_command

RAM = 512 * 1024 * 1024
CONFIG = """
config:
  host_groups:
  - name: sbox
    count: 0
    vcpu: 1
    ram_mb: 512
    persistent: false
  accel: auto
  api:
    bind_address: 127.0.0.1
    port: {port}
    auth:
      enabled: false
"""


def parse_time(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class RawAgent:
    """The agent channel with nothing of the daemon: what any launcher of this image would have."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()
        self.next_stream = 1

    @classmethod
    async def connect(cls, path: Path) -> RawAgent:
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(0.005)
        agent = cls(reader, writer)
        writer.write(encode_json(FrameType.HELLO, 0, {"version": 1}))
        await agent.until(lambda frame: frame.type == FrameType.READY)
        return agent

    async def until(self, done: Any) -> list[Any]:
        seen = []
        while True:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("agent channel closed")
            for frame in self.decoder.feed(data):
                seen.append(frame)
                if done(frame):
                    return seen

    async def exec_true(self) -> tuple[float, float]:
        stream, self.next_stream = self.next_stream, self.next_stream + 1
        started = time.perf_counter()
        self.writer.write(encode_json(FrameType.OPEN, stream, {"op": "exec", "cmd": "true"}))
        frames = await self.until(lambda f: f.type == FrameType.CLOSE and f.stream == stream)
        round_trip = time.perf_counter() - started
        events = [decode_json(f) for f in frames if f.type == FrameType.MESSAGE]
        began = next(e["started_at"] for e in events if e.get("type") == "started")
        ended = next(e["ended_at"] for e in events if e.get("type") == "exit")
        return round_trip, parse_time(ended) - parse_time(began)


async def raw_boot(image: GuestImage, work: Path, index: int, execs: int) -> tuple[float, list[tuple[float, float]]]:
    accel, _ = choose_accel("auto")
    run_dir = work / f"raw-{index}"
    spec = VMSpec(
        name=f"raw-{index}",
        vcpus=1,
        ram_bytes=RAM,
        kernel=image.kernel,
        initrd=image.initrd,
        disk=run_dir / "disk.qcow2",
        run_dir=run_dir,
        console_log=run_dir / "console.log",
        kernel_args={"slicer.hostname": f"raw-{index}"},
    )
    run_dir.mkdir(parents=True)
    await create_overlay(image.rootfs, spec.disk, None)
    command = build_command(shutil.which("qemu-system-x86_64") or "qemu-system-x86_64", spec, accel)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        agent = await RawAgent.connect(spec.agent_socket)
        ready = time.perf_counter() - started
        samples = [await agent.exec_true() for _ in range(execs)]
        agent.writer.close()
        return ready, samples
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(run_dir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def lean_exec_overheads(port: int, hostname: str, execs: int) -> list[float]:
    """The same streaming exec from the stdlib's http.client: what the server side costs without httpx's
    own per-request work."""
    connection = http.client.HTTPConnection("127.0.0.1", port)
    overheads = []
    for _ in range(execs):
        started = time.perf_counter()
        connection.request("POST", f"/vm/{hostname}/exec?cmd=true")
        body = connection.getresponse().read()
        round_trip = time.perf_counter() - started
        frames = [json.loads(line) for line in body.splitlines()]
        overheads.append(round_trip - (parse_time(frames[-1]["ended_at"]) - parse_time(frames[0]["started_at"])))
    connection.close()
    return overheads


def api_exec_samples(client: httpx.Client, hostname: str, execs: int) -> dict[str, list[float]]:
    buffered, streamed, overhead = [], [], []
    for _ in range(execs):
        started = time.perf_counter()
        response = client.post(f"/vm/{hostname}/exec", params={"cmd": "true", "buffered": "true"})
        buffered.append(time.perf_counter() - started)
        assert response.json()["exit_code"] == 0, response.text
    for _ in range(execs):
        started = time.perf_counter()
        response = client.post(f"/vm/{hostname}/exec", params={"cmd": "true"})
        round_trip = time.perf_counter() - started
        frames = [json.loads(line) for line in response.text.splitlines()]
        guest = parse_time(frames[-1]["ended_at"]) - parse_time(frames[0]["started_at"])
        streamed.append(round_trip)
        overhead.append(round_trip - guest)
    return {"buffered": buffered, "streamed": streamed, "overhead": overhead}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--execs", type=int, default=50)
    parser.add_argument("--image-cache", type=Path, default=Path("/var/tmp/pyslicer-test-images"))
    args = parser.parse_args()

    image = asyncio.run(ensure_image(args.image_cache, progress=lambda line: print(line, flush=True)))
    work = Path(tempfile.mkdtemp(prefix="pyslicer-bench-"))
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
    raw_ready: list[float] = []
    api_ready: list[float] = []
    raw_exec: list[tuple[float, float]] = []
    api_exec: dict[str, list[float]] = {}
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
        while True:
            with contextlib.suppress(httpx.TransportError):
                if client.get("/healthz").status_code == 200:
                    break
            if daemon.poll() is not None:
                sys.exit((work / "daemon.log").read_text())
            time.sleep(0.1)
        for index in range(args.rounds):
            last = index == args.rounds - 1
            ready, samples = asyncio.run(raw_boot(image, work, index, args.execs if last else 0))
            raw_ready.append(ready)
            raw_exec += samples
            started = time.perf_counter()
            response = client.post("/hostgroup/sbox/nodes", params={"wait": "agent", "timeout": "5m"}, json={})
            api_ready.append(time.perf_counter() - started)
            hostname = response.json()["hostname"]
            if last:
                api_exec = api_exec_samples(client, hostname, args.execs)
                api_exec["lean"] = lean_exec_overheads(port, hostname, args.execs)
            client.delete(f"/hostgroup/sbox/nodes/{hostname}")
            print(f"round {index + 1}: raw {raw_ready[-1]:.2f}s  api {api_ready[-1]:.2f}s", flush=True)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        shutil.rmtree(work, ignore_errors=True)

    ms = 1000.0
    raw_median, api_median = statistics.median(raw_ready), statistics.median(api_ready)
    raw_rt = [rt for rt, _ in raw_exec]
    raw_overhead = [rt - guest for rt, guest in raw_exec]
    accel, _ = choose_accel("auto")
    print()
    print(f"pyslicer core benchmark: accel={accel}, {args.rounds} boots each (alternating), {args.execs} execs each")
    print()
    print("| measure | raw (same image, no daemon) | pyslicer API | ratio / overhead |")
    print("|---|---|---|---|")
    print(
        f"| launch -> agent ready, median | {raw_median:.3f} s | {api_median:.3f} s "
        f"| ratio {api_median / raw_median:.3f} (target <= 1.10) |"
    )
    print(f"| launch -> agent ready, min | {min(raw_ready):.3f} s | {min(api_ready):.3f} s | |")
    print(
        f"| exec `true` round trip p50 / p99 | {percentile(raw_rt, 0.5) * ms:.1f} / "
        f"{percentile(raw_rt, 0.99) * ms:.1f} ms (bare channel) | {percentile(api_exec['streamed'], 0.5) * ms:.1f} / "
        f"{percentile(api_exec['streamed'], 0.99) * ms:.1f} ms (streaming) | |"
    )
    print(
        f"| exec `true` buffered round trip p50 / p99 | | {percentile(api_exec['buffered'], 0.5) * ms:.1f} / "
        f"{percentile(api_exec['buffered'], 0.99) * ms:.1f} ms | |"
    )
    api_guest = [rt - o for rt, o in zip(api_exec["streamed"], api_exec["overhead"], strict=True)]
    raw_guest = [guest for _, guest in raw_exec]
    print(
        f"| guest-side duration (ended_at - started_at) p50 | {statistics.median(raw_guest) * ms:.1f} ms "
        f"| {statistics.median(api_guest) * ms:.1f} ms | |"
    )
    print(
        f"| overhead = round trip - guest duration, p50 / p99 | {percentile(raw_overhead, 0.5) * ms:.2f} / "
        f"{percentile(raw_overhead, 0.99) * ms:.2f} ms | {percentile(api_exec['overhead'], 0.5) * ms:.2f} / "
        f"{percentile(api_exec['overhead'], 0.99) * ms:.2f} ms (httpx client) | target p50 <= 3 ms |"
    )
    print(
        f"| same overhead from a stdlib http.client | | {percentile(api_exec['lean'], 0.5) * ms:.2f} / "
        f"{percentile(api_exec['lean'], 0.99) * ms:.2f} ms | |"
    )
    os.sync()


if __name__ == "__main__":
    main()
