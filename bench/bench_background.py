"""Background-exec log follow latency against foreground exec streaming, side by side in one run, on one sandbox.

The same guest script writes a line with its own clock (`date +%s%N`) every `--interval` seconds; the client notes
when each line's frame arrives and takes the difference: through a streaming `POST exec` (foreground), and through
`GET exec/{id}/logs?follow=true` of a background exec (the line goes into the agent's ring, then out to the
follower). Rounds alternate between the two. The guest's clock follows the host's (the agent steps it to the
host's time; about a millisecond of error when idle, see docs/protocol.md), the same for both paths, so the
ratio is the number to read.

Run as root: `.venv/bin/python bench/bench_background.py [--lines 100] [--rounds 3] [--url URL --token T --vm VM]`
(without --url it starts a daemon and a sandbox of its own, as bench_files.py does). Prints a markdown table;
asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_files import NEW_SRC, Daemon  # a sibling script, not a package

SCRIPT = "for i in $(seq 1 {lines}); do date +%s%N; sleep {interval}; done"


def latencies(lines: Iterator[str], base64_data: bool) -> list[float]:
    """Milliseconds from each guest timestamp to the arrival of its frame."""
    found: list[float] = []
    for line in lines:
        if not line:
            continue
        arrived = time.time_ns()
        frame = json.loads(line)
        if frame.get("type") != "stdout":
            continue
        data = base64.b64decode(frame["data"]) if base64_data else frame["data"].encode()
        for stamp in data.split():
            found.append((arrived - int(stamp)) / 1e6)
    return found


def foreground(client: httpx.Client, vm: str, script: str) -> list[float]:
    params = {"cmd": "/bin/sh", "args": ["-c", script]}
    with client.stream("POST", f"/vm/{vm}/exec", params=params) as response:
        response.raise_for_status()
        return latencies(response.iter_lines(), base64_data=False)


def background(client: httpx.Client, vm: str, script: str) -> list[float]:
    params = {"background": "true", "cmd": "/bin/sh", "args": ["-c", script], "stdio": "base64"}
    started = client.post(f"/vm/{vm}/exec", params=params)
    started.raise_for_status()
    exec_id = started.json()["exec_id"]
    try:
        with client.stream("GET", f"/vm/{vm}/exec/{exec_id}/logs", params={"follow": "true"}) as response:
            response.raise_for_status()
            return latencies(response.iter_lines(), base64_data=True)
    finally:
        client.post(f"/vm/{vm}/exec/{exec_id}/kill", json={"signal": "KILL"})
        client.get(f"/vm/{vm}/exec/{exec_id}/wait-exit", params={"timeout": 30})
        client.delete(f"/vm/{vm}/exec/{exec_id}")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100, help="lines per round")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between lines")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each path, alternating")
    parser.add_argument("--url", help="a running daemon (else one is started)")
    parser.add_argument("--token", help="its token")
    parser.add_argument("--vm", help="a running VM on it")
    parser.add_argument("--image-cache", type=Path, default=Path("/var/tmp/pyslicer-test-images"))
    args = parser.parse_args()

    daemon: Daemon | None = None
    if args.url:
        headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
        client = httpx.Client(base_url=args.url, headers=headers, timeout=600)
        vm = args.vm
    else:
        daemon = Daemon(NEW_SRC, args.image_cache, Path(tempfile.mkdtemp(prefix="bench-bg-")))
        client, vm = daemon.client, daemon.hostname
    try:
        script = SCRIPT.format(lines=args.lines, interval=args.interval)
        results: dict[str, list[float]] = {"foreground exec stream": [], "background logs follow": []}
        foreground(client, vm, "true")  # warm the path (the first exec imports what exec needs in the agent)
        for _ in range(args.rounds):
            results["foreground exec stream"] += foreground(client, vm, script)
            results["background logs follow"] += background(client, vm, script)
    finally:
        if daemon is not None:
            daemon.stop()

    print(
        f"\nguest write -> frame at the client, {args.rounds} x {args.lines} lines, {args.interval * 1000:g} ms apart\n"
    )
    print("| path | frames | p50 ms | p99 ms | mean ms |")
    print("|---|---|---|---|---|")
    for name, values in results.items():
        print(
            f"| {name} | {len(values)} | {percentile(values, 0.5):.2f} | {percentile(values, 0.99):.2f} "
            f"| {statistics.fmean(values):.2f} |"
        )
    fg, bg = results["foreground exec stream"], results["background logs follow"]
    print(
        f"\nbackground / foreground: p50 x{percentile(bg, 0.5) / percentile(fg, 0.5):.2f}, "
        f"p99 x{percentile(bg, 0.99) / percentile(fg, 0.99):.2f}"
    )


if __name__ == "__main__":
    main()
