"""Moving bytes in and out of a guest, side by side in one run, on the same image:

- the raw virtio-serial channel: a second port on a bare QEMU launch of the image, bytes to `dd` as the sink
  in the guest (and from `dd` the other way), no agent logic;
- the bare agent channel on that VM: exec stdin into `cat > /dev/null`, exec stdout from `head -c`;
- pyslicer's API on a sandbox: the same two execs over HTTP, and `cp` upload and download of a file
  (binary mode), with the daemon's peak RSS growth during a bigger copy each way;
- with `--old SRC`: the bare channel and the API execs again, for an older checkout's agent and daemon (its own
  image, built on first use), e.g. `git worktree add --detach /tmp/base c24e672` then `--old /tmp/base/src`.

Run as root: `.venv/bin/python bench/bench_files.py [--size-mib 256] [--rss-mib 1024] [--old /tmp/base/src]`.
Prints a markdown table; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from pyslicer.daemon.storage import create_overlay
from pyslicer.image import GuestImage
from pyslicer.protocol import (
    Channel,
    FrameDecoder,
    FrameType,
    decode_json,
    encode,
    encode_json,
    window_increment,
)
from pyslicer.vmm.accel import choose_accel
from pyslicer.vmm.base import VMSpec
from pyslicer.vmm.qemu import build_command

MIB = 1024 * 1024
CHUNK = MIB
RAM = 1024 * MIB
NEW_SRC = Path(__file__).resolve().parents[1] / "src"
CONFIG = """
config:
  host_groups:
  - name: sbox
    count: 0
    vcpu: 1
    ram_mb: 1024
    storage_size: 4G
    persistent: false
  accel: auto
  api:
    bind_address: 127.0.0.1
    port: {port}
    auth:
      enabled: false
"""
# Text, so that the API's JSON frames carry it as it is (NULs would be escaped six bytes each).
SOURCE = "yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {size}"
FIND_PORT = 'for p in /sys/class/virtio-ports/*; do [ "$(cat $p/name)" = bench ] && echo /dev/${p##*/}; done'


def mib_per_s(size: int, seconds: float) -> float:
    return size / MIB / seconds


def zeros(size: int) -> Iterator[bytes]:
    chunk = b"\0" * CHUNK
    for _ in range(size // CHUNK):
        yield chunk


# -- the raw channel and the bare agent channel ------------------------------------------------------------


class BareAgent:
    """The agent's channel with nothing of the daemon: frames written and read by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()
        self.next_stream = 1
        self.pending: list[Any] = []

    @classmethod
    async def connect(cls, path: Path) -> BareAgent:
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(0.01)
        agent = cls(reader, writer)
        writer.write(encode_json(FrameType.HELLO, 0, {"version": 1}))
        while not any(f.type == FrameType.READY for f in await agent.frames()):
            pass
        return agent

    async def frames(self) -> list[Any]:
        data = await self.reader.read(1 << 20)
        if not data:
            raise ConnectionError("agent channel closed")
        return self.decoder.feed(data)

    def open(self, request: dict[str, Any]) -> int:
        stream, self.next_stream = self.next_stream, self.next_stream + 1
        self.writer.write(encode_json(FrameType.OPEN, stream, {**request, "window": 1 << 30}))
        return stream

    async def until_closed(self, stream: int, on_frame: Callable[[Any], None] = lambda f: None) -> bytes:
        output = bytearray()
        while True:
            for frame in await self.frames():
                if frame.stream != stream:
                    continue
                on_frame(frame)
                if frame.type == FrameType.DATA:
                    output += frame.payload
                elif frame.type == FrameType.MESSAGE and decode_json(frame).get("type") == "error":
                    raise RuntimeError(decode_json(frame))
                elif frame.type == FrameType.CLOSE:
                    return bytes(output)

    async def sh(self, command: str) -> bytes:
        return await self.until_closed(self.open({"op": "exec", "cmd": command, "shell": "/bin/sh"}))

    async def stdin_to_sink(self, size: int) -> float:
        """exec `cat > /dev/null` fed ``size`` bytes under the agent's credit; seconds until it exited."""
        stream = self.open({"op": "exec", "cmd": "cat > /dev/null", "shell": "/bin/sh", "stdin": True})
        credit = 256 * 1024
        granted = asyncio.Event()
        payload = b"\0" * 65536

        def on_frame(frame: Any) -> None:
            nonlocal credit
            if frame.type == FrameType.WINDOW:
                credit += window_increment(frame)
                granted.set()

        closed = asyncio.ensure_future(self.until_closed(stream, on_frame))
        started = time.perf_counter()
        for _ in range(size // len(payload)):
            while credit < len(payload):
                granted.clear()
                await granted.wait()
            credit -= len(payload)
            self.writer.write(encode(FrameType.DATA, stream, payload, Channel.STDIN))
            await self.writer.drain()
        self.writer.write(encode(FrameType.EOF, stream, b"", Channel.STDIN))
        await closed
        return time.perf_counter() - started

    async def stdout_from_source(self, size: int) -> float:
        started = time.perf_counter()
        got = await self.sh(SOURCE.format(size=size))
        assert len(got) == size, len(got)
        return time.perf_counter() - started


async def bare_vm(image: GuestImage, work: Path, size: int, *, raw: bool) -> dict[str, float]:
    """A bare QEMU launch with a second port ("bench"); raw channel and bare agent channel rates."""
    accel, _ = choose_accel("auto")
    run_dir = Path(tempfile.mkdtemp(prefix="bare-", dir=work))
    spec = VMSpec(
        name="bench-bare",
        vcpus=1,
        ram_bytes=RAM,
        kernel=image.kernel,
        initrd=image.initrd,
        disk=run_dir / "disk.qcow2",
        run_dir=run_dir,
        console_log=run_dir / "console.log",
        kernel_args={"slicer.hostname": "bench-bare"},
    )
    await create_overlay(image.rootfs, spec.disk, None)
    command = build_command(shutil.which("qemu-system-x86_64") or "qemu-system-x86_64", spec, accel)
    bench_socket = run_dir / "bench.sock"
    command += ["-chardev", f"socket,id=bench0,path={bench_socket},server=on,wait=off"]
    command += ["-device", "virtserialport,chardev=bench0,name=bench"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rates: dict[str, float] = {}
    try:
        agent = await BareAgent.connect(spec.agent_socket)
        if raw:
            device = (await agent.sh(FIND_PORT)).decode().strip()
            reader, writer = await asyncio.open_unix_connection(str(bench_socket))
            for key, target in (("raw_in", "/dev/null"), ("raw_disk_in", "/root/raw.bin")):
                sink = agent.open(
                    {
                        "op": "exec",
                        "cmd": f"dd if={device} of={target} bs=1M count={size // MIB} iflag=fullblock 2>/dev/null",
                        "shell": "/bin/sh",
                    }
                )
                await asyncio.sleep(1.0)  # dd is reading before the clock starts
                started = time.perf_counter()
                for chunk in zeros(size):
                    writer.write(chunk)
                    await writer.drain()
                await agent.until_closed(sink)
                rates[key] = mib_per_s(size, time.perf_counter() - started)
            for key, origin in (("raw_out", "/dev/zero"), ("raw_disk_out", "/root/raw.bin")):
                started = time.perf_counter()
                source = agent.open(
                    {
                        "op": "exec",
                        "cmd": f"dd if={origin} of={device} bs=1M count={size // MIB} 2>/dev/null",
                        "shell": "/bin/sh",
                    }
                )
                got = 0
                while got < size:
                    got += len(await reader.read(1 << 20))
                rates[key] = mib_per_s(size, time.perf_counter() - started)
                await agent.until_closed(source)
            await agent.sh("rm -f /root/raw.bin")
            writer.close()
        rates["bare_in"] = mib_per_s(size, await agent.stdin_to_sink(size))
        rates["bare_out"] = mib_per_s(size, await agent.stdout_from_source(size))
        agent.writer.close()
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(run_dir, ignore_errors=True)
    return rates


# -- the daemon ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def build_image(src: Path, cache: Path) -> GuestImage:
    """The image of the agent in ``src`` (built by that tree's own builder, in a process of its own)."""
    cache.mkdir(parents=True, exist_ok=True)
    code = (
        "import asyncio, pathlib, sys; from pyslicer.image import ensure_image; "
        "asyncio.run(ensure_image(pathlib.Path(sys.argv[1])))"
    )
    subprocess.run([sys.executable, "-c", code, str(cache)], env={**os.environ, "PYTHONPATH": str(src)}, check=True)
    directory = cache / "images" / "default"
    return GuestImage(directory / "vmlinux", directory / "initrd.gz", directory / "rootfs.ext4", manifest={})


class Daemon:
    def __init__(self, src: Path, cache: Path, work: Path) -> None:
        self.src = src
        self.work = Path(tempfile.mkdtemp(prefix="daemon-", dir=work))
        data_dir = self.work / "data"
        data_dir.mkdir()
        (data_dir / "images").symlink_to(cache / "images")
        port = free_port()
        (self.work / "slicer.yaml").write_text(CONFIG.format(port=port))
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pyslicer.cli.main",
                "up",
                str(self.work / "slicer.yaml"),
                "--data-dir",
                str(data_dir),
            ],
            stdout=(self.work / "daemon.log").open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(src)},
        )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
        while True:
            with contextlib.suppress(httpx.TransportError):
                if self.client.get("/healthz").status_code == 200:
                    break
            if self.process.poll() is not None:
                sys.exit((self.work / "daemon.log").read_text())
            time.sleep(0.1)
        response = self.client.post("/hostgroup/sbox/nodes", params={"wait": "agent", "timeout": "5m"}, json={})
        response.raise_for_status()
        self.hostname: str = response.json()["hostname"]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(120)
        shutil.rmtree(self.work, ignore_errors=True)

    def rss(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def exec_stdin(self, size: int) -> float:
        started = time.perf_counter()
        response = self.client.post(
            f"/vm/{self.hostname}/exec",
            params={"cmd": "wc -c", "shell": "/bin/sh", "stdin": "true"},
            content=zeros(size),
        )
        elapsed = time.perf_counter() - started
        assert str(size) in response.text, response.text[-500:]
        return elapsed

    def cli_exec_stdin(self, size: int) -> float:
        """`slicer vm exec HOST -- sh -c 'cat > /dev/null' < FILE`, as a user pipes a file in."""
        source = self.work / "stdin.bin"
        with source.open("wb") as file:
            file.truncate(size)
        command = [sys.executable, "-m", "pyslicer.cli.main", "vm", "exec", "--url", str(self.client.base_url)]
        command += [self.hostname, "--", "sh", "-c", "cat > /dev/null"]
        started = time.perf_counter()
        with source.open("rb") as stdin:
            subprocess.run(command, stdin=stdin, check=True, env={**os.environ, "PYTHONPATH": str(self.src)})
        elapsed = time.perf_counter() - started
        source.unlink()
        return elapsed

    def exec_stdout(self, size: int) -> float:
        started = time.perf_counter()
        received = 0
        with self.client.stream(
            "POST", f"/vm/{self.hostname}/exec", params={"cmd": SOURCE.format(size=size), "shell": "/bin/sh"}
        ) as response:
            for line in response.iter_lines():
                received += len(line)
        elapsed = time.perf_counter() - started
        assert received > size, received
        return elapsed

    def upload(self, size: int, path: str) -> float:
        started = time.perf_counter()
        response = self.client.post(
            f"/vm/{self.hostname}/cp",
            params={"path": path, "mode": "binary"},
            content=zeros(size),
            headers={"Content-Type": "application/octet-stream"},
        )
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        return elapsed

    def download(self, size: int, path: str) -> tuple[float, str]:
        digest = hashlib.sha256()
        started = time.perf_counter()
        received = 0
        with self.client.stream("GET", f"/vm/{self.hostname}/cp", params={"path": path, "mode": "binary"}) as response:
            response.raise_for_status()
            for chunk in response.iter_raw(CHUNK):
                received += len(chunk)
                digest.update(chunk)
        assert received == size, received
        return time.perf_counter() - started, digest.hexdigest()

    def peak_rss_growth(self, run: Callable[[], object]) -> int:
        before = self.rss()
        peak = before
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.05):
                peak = max(peak, self.rss())

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            run()
        finally:
            done.set()
            sampler.join()
        return peak - before


def measure(name: str, src: Path, cache: Path, work: Path, size: int, rss_size: int) -> dict[str, float]:
    """One tree's rates; for the new tree also cp and the daemon's RSS growth (``rss_*``, bytes)."""
    print(f"{name}: image", flush=True)
    image = build_image(src, cache)
    print(f"{name}: bare VM", flush=True)
    rates = asyncio.run(bare_vm(image, work, size, raw=name == "new"))
    print(f"{name}: daemon", flush=True)
    daemon = Daemon(src, cache, work)
    try:
        rates["api_exec_in"] = mib_per_s(size, daemon.exec_stdin(size))
        rates["api_exec_out"] = mib_per_s(size, daemon.exec_stdout(size))
        rates["cli_exec_in"] = mib_per_s(size, daemon.cli_exec_stdin(size))
        if name == "new":
            rates["cp_in"] = mib_per_s(size, daemon.upload(size, "/root/bench.bin"))
            seconds, digest = daemon.download(size, "/root/bench.bin")
            rates["cp_out"] = mib_per_s(size, seconds)
            rates["cp_digest_ok"] = float(digest == hashlib.sha256(b"".join(zeros(size))).hexdigest())
            rates["rss_upload"] = daemon.peak_rss_growth(lambda: daemon.upload(rss_size, "/root/big.bin"))
            rates["rss_download"] = daemon.peak_rss_growth(lambda: daemon.download(rss_size, "/root/big.bin"))
    finally:
        daemon.stop()
    print(f"{name}: {rates}", flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=256, help="bytes per transfer")
    parser.add_argument("--rss-mib", type=int, default=1024, help="the copy watched for the daemon's RSS")
    parser.add_argument("--image-cache", type=Path, default=Path("/var/tmp/pyslicer-test-images"))
    parser.add_argument("--old", type=Path, help="an older checkout's src/, for exec before and after")
    args = parser.parse_args()
    size = args.size_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="pyslicer-bench-files-"))
    trees = {"new": (NEW_SRC, args.image_cache)}
    if args.old:
        trees["old"] = (args.old.resolve(), Path("/var/tmp/pyslicer-bench-old-image"))
    try:
        sides = {
            name: measure(name, src, cache, work, size, args.rss_mib * MIB) for name, (src, cache) in trees.items()
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    new = sides["new"]
    accel, _ = choose_accel("auto")
    print()
    print(f"pyslicer file-transfer benchmark: accel={accel}, {args.size_mib} MiB per transfer, 1 vCPU guest")
    print()
    print("| path | host -> guest MiB/s | guest -> host MiB/s | share of raw (in / out) |")
    print("|---|---|---|---|")

    def row(label: str, key_in: str, key_out: str, rates: dict[str, float]) -> None:
        share = f"{rates[key_in] / new['raw_in']:.0%} / {rates[key_out] / new['raw_out']:.0%}"
        print(f"| {label} | {rates[key_in]:.1f} | {rates[key_out]:.1f} | {share} |")

    row("raw virtio-serial port, dd to /dev/null / from /dev/zero", "raw_in", "raw_out", new)
    row("raw port, dd to / from a file on the guest's disk", "raw_disk_in", "raw_disk_out", new)
    row("bare agent channel, exec stdin / stdout", "bare_in", "bare_out", new)
    if "old" in sides:
        row("bare agent channel, old agent", "bare_in", "bare_out", sides["old"])
    row("API exec stdin / stdout", "api_exec_in", "api_exec_out", new)
    if "old" in sides:
        row("API exec stdin / stdout, old daemon and agent", "api_exec_in", "api_exec_out", sides["old"])
    row("API cp upload / download (binary)", "cp_in", "cp_out", new)
    print()
    for name, rates in sides.items():
        print(f"- `slicer vm exec` with a file on stdin ({name}): {rates['cli_exec_in']:.1f} MiB/s")
    print()
    ok = bool(new["cp_digest_ok"])
    print(f"- cp upload / download: {new['cp_in'] / new['cp_out']:.2f} (target: within 20%); sha256 back: {ok}")
    print(
        f"- cp against the raw port to and from the same place (a file on the guest's disk): upload "
        f"{new['cp_in'] / new['raw_disk_in']:.0%}, download {new['cp_out'] / new['raw_disk_out']:.0%}"
    )
    print(
        f"- daemon peak RSS growth during a {args.rss_mib} MiB copy: upload {new['rss_upload'] / MIB:.1f} MiB, "
        f"download {new['rss_download'] / MIB:.1f} MiB (target <= 64 MiB)"
    )


if __name__ == "__main__":
    main()
