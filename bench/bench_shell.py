"""The shell and forward WebSockets, side by side in one run, on the same image:

- keystroke echo round trip through ``/vm/{h}/shell`` (the async SDK): one byte written, until its echo is
  read back; with bash (readline echoes it) and with sh (the guest's terminal driver echoes it, in cooked
  mode), p50/p99 over many keystrokes;
- forward throughput both ways through ``/vm/{h}/forward`` (the async SDK's stream) to a python3 server in the
  guest (a sink that answers the byte count, a source), against the raw virtio-serial channel and the bare
  agent channel of a bare QEMU launch of the image (``bench_files.bare_vm``, the same measurement), and against
  the guest's own TCP loopback between two python3 processes: every forward passes through the guest's TCP
  stack, so that is its ceiling.

Run as root: ``.venv/bin/python bench/bench_shell.py [--keys 300] [--size-mib 64]``. Prints a markdown table;
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from pyslicer.client import AsyncShell, AsyncSlicerClient
from pyslicer.vmm.accel import choose_accel

MIB = 1024 * 1024
SERVER_PORT = 7100
SERVER = r"""
import socket, socketserver, sys
# As cheap as a Python server gets, so the table measures the forward rather than the server: received into one
# buffer, sent from one (a fresh 1 MiB bytes per read costs an mmap and 256 page faults, slow under TCG).
class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        sock, line = self.request, b""
        while not line.endswith(b"\n"):
            line += sock.recv(1)
        command = line.split()
        if command[0] == b"SINK":
            total, buffer = 0, memoryview(bytearray(1 << 20))
            while size := sock.recv_into(buffer):
                total += size
            sock.sendall(b"%d\n" % total)
        elif command[0] == b"SOURCE":
            left, chunk = int(command[1]), memoryview(bytes(1 << 20))
            while left:
                n = min(left, len(chunk))
                sock.sendall(chunk[:n])
                left -= n
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""
# The ceiling of any forward through the guest's TCP stack: two python3 processes in the guest over loopback,
# moving the same bytes in 64 KiB pieces (a forward's frame) and in 1 MiB pieces; prints MiB/s for each.
LOOPBACK = r"""
import os, socket, sys, time
size = int(sys.argv[1])
for chunk in (64 << 10, 1 << 20):
    server = socket.create_server(("127.0.0.1", 0))
    if os.fork() == 0:
        sock, data, left = socket.create_connection(server.getsockname()), memoryview(bytes(chunk)), size
        while left:
            left -= sock.send(data[: min(left, chunk)])
        os._exit(0)
    peer, _ = server.accept()
    buffer, got, started = memoryview(bytearray(chunk)), 0, time.perf_counter()
    while n := peer.recv_into(buffer):
        got += n
    os.wait()
    print(got / (1 << 20) / (time.perf_counter() - started))
"""


def load_bench_files() -> ModuleType:
    path = Path(__file__).resolve().parent / "bench_files.py"
    spec = importlib.util.spec_from_file_location("bench_files", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_files"] = module
    spec.loader.exec_module(module)
    return module


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def echo_times(shell: AsyncShell, keys: int) -> list[float]:
    """Seconds from writing one printable byte to reading its echo, for each of ``keys`` keystrokes."""
    times = []
    for index in range(keys):
        key = bytes([ord("a") + index % 26])
        started = time.perf_counter()
        await shell.write(key)
        seen = b""
        while key not in seen:
            seen += await shell.read()
        times.append(time.perf_counter() - started)
        if index % 60 == 59:
            await shell.write(b"\x15")  # ^U: clear the line, so readline's redraws stay small
            await asyncio.sleep(0.05)
            await drain(shell)
    return times


async def drain(shell: AsyncShell) -> None:
    while True:
        try:
            await asyncio.wait_for(shell.read(), 0.2)
        except TimeoutError:
            return


async def settle(shell: AsyncShell, marker: bytes) -> None:
    """Wait for the shell to be at its prompt (a marker printed by a command), then drain."""
    seen = b""
    await shell.write(b"echo " + marker[:2] + b"''" + marker[2:] + b"\n")
    while marker not in seen:
        seen += await shell.read()
    await drain(shell)


async def forward_rates(client: AsyncSlicerClient, hostname: str, size: int) -> dict[str, float]:
    upstream = f"127.0.0.1:{SERVER_PORT}"
    stream = await client.forward_connection(hostname, upstream)
    chunk = bytes(MIB)
    started = time.perf_counter()
    await stream.write(b"SINK\n")
    for _ in range(size // MIB):
        await stream.write(chunk)
    await stream.close_write()
    answer = b""
    while data := await stream.read():
        answer += data
    seconds_in = time.perf_counter() - started
    await stream.close()
    assert int(answer) == size, answer
    stream = await client.forward_connection(hostname, upstream)
    started = time.perf_counter()
    await stream.write(b"SOURCE %d\n" % size)
    got = 0
    while data := await stream.read():
        got += len(data)
    seconds_out = time.perf_counter() - started
    await stream.close()
    assert got == size, got
    return {"forward_in": size / MIB / seconds_in, "forward_out": size / MIB / seconds_out}


async def measure_daemon(url: str, hostname: str, keys: int, size: int) -> dict[str, object]:
    results: dict[str, object] = {}
    async with AsyncSlicerClient(url, timeout=600) as client:
        for name, shell_path in (("bash", "/bin/bash"), ("sh", "/bin/sh")):
            shell = await client.shell(hostname, shell=shell_path)
            try:
                await settle(shell, b"ready-mark")
                results[name] = await echo_times(shell, keys)
            finally:
                await shell.close()
        results.update(await forward_rates(client, hostname, size))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=300, help="keystrokes per shell")
    parser.add_argument("--size-mib", type=int, default=64, help="bytes per forward transfer")
    parser.add_argument("--image-cache", type=Path, default=Path("/var/tmp/pyslicer-test-images"))
    args = parser.parse_args()
    files = load_bench_files()
    size = args.size_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="pyslicer-bench-shell-"))
    try:
        image = files.build_image(files.NEW_SRC, args.image_cache)
        print("bare VM: raw channel and bare agent channel", flush=True)
        raw = asyncio.run(files.bare_vm(image, work, size, raw=True))
        print("daemon", flush=True)
        daemon = files.Daemon(files.NEW_SRC, args.image_cache, work)
        try:
            script = f"cat > /run/bench-server.py <<'EOF'\n{SERVER}\nEOF\n"
            script += f"setsid python3 /run/bench-server.py {SERVER_PORT} > /dev/null 2>&1 < /dev/null & sleep 3"
            answer = daemon.client.post(
                f"/vm/{daemon.hostname}/exec",
                params={"cmd": "/bin/sh", "args": ["-c", script], "buffered": "true"},
            ).json()
            assert answer["exit_code"] == 0, answer
            script = f"cat > /run/bench-loopback.py <<'EOF'\n{LOOPBACK}\nEOF\npython3 /run/bench-loopback.py {size}"
            answer = daemon.client.post(
                f"/vm/{daemon.hostname}/exec",
                params={"cmd": "/bin/sh", "args": ["-c", script], "buffered": "true"},
            ).json()
            assert answer["exit_code"] == 0, answer
            loopback = [float(line) for line in answer["stdout"].split()]
            url = str(daemon.client.base_url).rstrip("/")
            results = asyncio.run(measure_daemon(url, daemon.hostname, args.keys, size))
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    accel, _ = choose_accel("auto")
    print()
    print(f"pyslicer shell and forward benchmark: accel={accel}, 1 vCPU guest, {args.keys} keystrokes per shell")
    print()
    print("| keystroke echo through /vm/{h}/shell | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|")
    for name, label in (("bash", "bash (readline echoes)"), ("sh", "sh (the guest's tty driver echoes)")):
        times = results[name]
        assert isinstance(times, list)
        p50, p99 = percentile(times, 0.5) * 1000, percentile(times, 0.99) * 1000
        print(f"| {label} | {p50:.2f} | {p99:.2f} | {max(times) * 1000:.2f} |")
    print()
    print(
        f"| path ({args.size_mib} MiB each way) | host -> guest MiB/s | guest -> host MiB/s | share of raw (in / out) |"
    )
    print("|---|---|---|---|")
    rows = [
        ("raw virtio-serial port, dd to /dev/null / from /dev/zero", raw["raw_in"], raw["raw_out"]),
        ("bare agent channel, exec stdin / stdout", raw["bare_in"], raw["bare_out"]),
        ("forward WebSocket (SDK stream) to a guest server", results["forward_in"], results["forward_out"]),
        ("in the guest: TCP loopback, python3 to python3, 64 KiB pieces", loopback[0], loopback[0]),
        ("in the guest: TCP loopback, python3 to python3, 1 MiB pieces", loopback[1], loopback[1]),
    ]
    for label, rate_in, rate_out in rows:
        assert isinstance(rate_in, float) and isinstance(rate_out, float)
        share = f"{rate_in / raw['raw_in']:.0%} / {rate_out / raw['raw_out']:.0%}"
        print(f"| {label} | {rate_in:.1f} | {rate_out:.1f} | {share} |")
    print()
    forward_in, forward_out = results["forward_in"], results["forward_out"]
    assert isinstance(forward_in, float) and isinstance(forward_out, float)
    print(
        f"- forward as a share of the guest's own TCP loopback in 64 KiB pieces: {forward_in / loopback[0]:.0%} in, "
        f"{forward_out / loopback[0]:.0%} out (target: at least 50% of the raw channel)"
    )
    print(f"- shell echo p50 (bash) {percentile(results['bash'], 0.5) * 1000:.2f} ms (target: at most 5 ms)")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
