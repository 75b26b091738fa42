"""What the API layer costs per exec, old tree against new, side by side in one run.

Each tree's ASGI app is served by uvicorn (as `slicer up` serves it) in a process of its own, in front of a
stand-in daemon whose exec answers at once (started, then exit), so only HTTP, routing, validation and the
NDJSON frames are measured: no guest, no agent link. A stdlib http.client sends the same streaming exec to
both, alternating request by request, so the machine's noise hits both. The old tree is a checkout of an
earlier commit, e.g.

    git worktree add --detach /tmp/base a0730ae
    .venv/bin/python bench/bench_api.py --old /tmp/base/src [--requests 3000]

Prints a markdown table; asserts nothing. (The real exec path adds the agent: see bench/bench_core.py.)
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

NEW_SRC = Path(__file__).resolve().parents[1] / "src"
TOKEN = "bench"
PATH = "/vm/sbox-1/exec?cmd=true&stdio=base64&uid=0"

# Runs in the server process, on either tree: both know AgentStream-like streams of Message events; the
# old API opens them through node.open_exec, the new one asks daemon.exec for an ExecProcess.
SERVER = """
import sys, uvicorn, uvloop
from pyslicer.daemon.agent_link import Message

class Stream:
    closed = False
    async def __aiter__(self):
        yield Message({"type": "started", "pid": 5, "started_at": "2026-12-01T00:00:00Z"})
        yield Message({"type": "exit", "exit_code": 0, "ended_at": "2026-12-01T00:00:00Z"})
    def consumed(self, size): pass
    def cancel(self): pass
    def close_input(self): pass
    async def write(self, data): pass

class Node:
    hostname = "sbox-1"
    def open_exec(self, request): return Stream()
    def exec(self, request):
        from pyslicer.daemon.exec import ExecProcess
        return ExecProcess(Stream())

class Daemon:
    launch_counts, nodes, groups = {}, {}, {}
    def node(self, hostname): return Node()
    def exec(self, hostname, request): return Node().exec(request)

from pyslicer.api.app import create_app
config = uvicorn.Config(create_app(Daemon(), token=sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]),
                        lifespan="off", log_level="warning")
uvloop.run(uvicorn.Server(config).serve())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(src: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(src)}
    process = subprocess.Popen([sys.executable, "-c", SERVER, str(port), TOKEN], env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"the server on {src} did not start")


def exec_once(connection: http.client.HTTPConnection) -> float:
    started = time.perf_counter()
    connection.request("POST", PATH, headers={"Authorization": f"Bearer {TOKEN}"})
    response = connection.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200 or b'"exit"' not in body:
        raise SystemExit(f"unexpected answer {response.status}: {body[:200]!r}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, default=Path("/tmp/base/src"), help="the old tree's src/")
    parser.add_argument("--new", type=Path, default=NEW_SRC, help="the new tree's src/ (this checkout's)")
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()

    servers = {"old": start(args.old), "new": start(args.new)}
    samples: dict[str, list[float]] = {"old": [], "new": []}
    try:
        connections = {name: http.client.HTTPConnection("127.0.0.1", port) for name, (_, port) in servers.items()}
        for index in range(args.requests + 200):
            order = ("old", "new") if index % 2 else ("new", "old")
            for name in order:
                elapsed = exec_once(connections[name])
                if index >= 200:  # warm-up
                    samples[name].append(elapsed)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(10)

    def quantile(values: list[float], q: float) -> float:
        return sorted(values)[int(q * (len(values) - 1))] * 1e6

    old, new = samples["old"], samples["new"]
    print(f"\nAPI layer per streaming exec, {args.requests} requests each, alternating; stand-in daemon, no guest\n")
    print("| measure | old | new | new - old |")
    print("|---|---:|---:|---:|")
    print(
        f"| round trip, median (us) | {statistics.median(old) * 1e6:.0f} | {statistics.median(new) * 1e6:.0f} "
        f"| {(statistics.median(new) - statistics.median(old)) * 1e6:+.0f} |"
    )
    for q in (0.1, 0.9, 0.99):
        print(
            f"| round trip, p{int(q * 100)} (us) | {quantile(old, q):.0f} | {quantile(new, q):.0f} "
            f"| {quantile(new, q) - quantile(old, q):+.0f} |"
        )


if __name__ == "__main__":
    main()
