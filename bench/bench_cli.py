"""What the `slicer` command line costs, side by side in one run (rounds alternate, so machine noise hits both):

(a) `python -c pass` vs `slicer --help`: the interpreter alone vs the CLI's start-up (target: at most 8x);
(b) `slicer vm exec VM -- true` vs the bare HTTP round trip of the same exec (a stdlib http.client POST of the
    query the CLI sends, on a fresh connection, as the CLI makes one): what the CLI adds (target: <= 100 ms).
    Twice: with stdin piped from /dev/null (the CLI streams it, over its full-duplex transport) and with
    --no-stdin (what a terminal gets; the pooled httpx transport).

(b) starts a daemon on a temporary data dir (the guest image from the shared cache) and boots one sandbox;
everything is removed at the end. Run as root: `.venv/bin/python bench/bench_cli.py [--rounds 40]
[--exec-rounds 30] [--no-exec]`. Prints a markdown table; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlencode

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
MS = 1000.0


def slicer_command() -> list[str]:
    script = Path(sys.executable).with_name("slicer")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pyslicer.cli.main"]


def run(command: Sequence[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}")
    return elapsed


def alternate(rounds: int, *measures: Callable[[], float]) -> list[list[float]]:
    for measure in measures:  # warm the page cache and the .pyc files
        measure()
    samples: list[list[float]] = [[] for _ in measures]
    for _ in range(rounds):
        for index, measure in enumerate(measures):
            samples[index].append(measure())
    return samples


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def bare_exec(port: int, hostname: str, stdin: bool) -> Callable[[], float]:
    """The exec the CLI sends (same query), from the stdlib, on a fresh connection."""
    query = [("cmd", "true"), *([("stdin", "true")] if stdin else []), ("stdout", "true"), ("stderr", "true")]
    target = f"/vm/{hostname}/exec?{urlencode([*query, ('stdio', 'base64')])}"

    def measure() -> float:
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port)
        connection.request("POST", target, body=b"" if stdin else None)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        elapsed = time.perf_counter() - started
        last = json.loads(body.splitlines()[-1])
        if response.status != 200 or last.get("type") != "exit" or last.get("exit_code"):
            raise RuntimeError(f"exec failed: {response.status} {body[-300:]!r}")
        return elapsed

    return measure


def cli_exec(command: list[str], env: dict[str, str]) -> Callable[[], float]:
    return lambda: run(command, env)


class Daemon:
    """`slicer up` on a temporary data dir, with one booted sandbox; `close` removes everything."""

    def __init__(self, image_cache: Path) -> None:
        from pyslicer.image import ensure_image

        asyncio.run(ensure_image(image_cache, progress=lambda line: print(line, flush=True)))
        self.work = Path(tempfile.mkdtemp(prefix="pyslicer-bench-cli-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.hostname: str | None = None
        self.port = free_port()
        data_dir = self.work / "data"
        data_dir.mkdir()
        (data_dir / "images").symlink_to(image_cache / "images")
        (self.work / "slicer.yaml").write_text(CONFIG.format(port=self.port))
        with (self.work / "daemon.log").open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pyslicer.cli.main", "up", str(self.work / "slicer.yaml"),
                 "--data-dir", str(data_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def request(self, method: str, path: str, timeout: float = 300) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=b"{}" if method == "POST" else None)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def boot_sandbox(self) -> str:
        assert self.process is not None
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError):
                if self.request("GET", "/healthz", timeout=2)[0] == 200:
                    break
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.work / "daemon.log").read_text(errors="replace"))
            time.sleep(0.1)
        status, body = self.request("POST", "/hostgroup/sbox/nodes?wait=agent&timeout=5m")
        if status not in (200, 201):
            raise RuntimeError(f"cannot boot a sandbox: {status} {body!r}")
        self.hostname = str(json.loads(body)["hostname"])
        return self.hostname

    def close(self) -> None:
        try:
            if self.hostname is not None and self.process is not None and self.process.poll() is None:
                with contextlib.suppress(OSError):
                    self.request("DELETE", f"/hostgroup/sbox/nodes/{self.hostname}", timeout=60)
        finally:
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(60)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            shutil.rmtree(self.work, ignore_errors=True)


def row(measure: str, baseline: Sequence[float], slicer: Sequence[float], compare: str, target: str) -> str:
    return (
        f"| {measure} | {statistics.median(baseline) * MS:.1f} / {percentile(baseline, 0.9) * MS:.1f} ms "
        f"| {statistics.median(slicer) * MS:.1f} / {percentile(slicer, 0.9) * MS:.1f} ms | {compare} | {target} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40, help="rounds of (a)")
    parser.add_argument("--exec-rounds", type=int, default=30, help="rounds of each pair in (b)")
    parser.add_argument("--no-exec", action="store_true", help="skip (b): no daemon, no VM")
    parser.add_argument("--image-cache", type=Path, default=Path("/var/tmp/pyslicer-test-images"))
    args = parser.parse_args()

    slicer = slicer_command()
    passes, helps = alternate(
        args.rounds, lambda: run([sys.executable, "-c", "pass"]), lambda: run([*slicer, "--help"])
    )
    exec_rows: list[str] = []
    if not args.no_exec:
        daemon = Daemon(args.image_cache)
        try:
            hostname = daemon.boot_sandbox()
            env = {**os.environ, "SLICER_URL": f"http://127.0.0.1:{daemon.port}"}
            env.pop("SLICER_TOKEN", None)
            env.pop("SLICER_TOKEN_FILE", None)
            for label, flags, stdin in (
                ("stdin piped from /dev/null", [], True),
                ("`--no-stdin` (as from a terminal)", ["--no-stdin"], False),
            ):
                bare, cli = alternate(
                    args.exec_rounds,
                    bare_exec(daemon.port, hostname, stdin),
                    cli_exec([*slicer, "vm", "exec", *flags, hostname, "--", "true"], env),
                )
                added = [c - b for b, c in zip(bare, cli, strict=True)]
                exec_rows.append(
                    row(
                        f"exec `true`, {label}: bare HTTP round trip vs `slicer vm exec`",
                        bare,
                        cli,
                        f"adds {statistics.median(added) * MS:.1f} ms (median of pairs; min "
                        f"{min(added) * MS:.1f}, p90 {percentile(added, 0.9) * MS:.1f})",
                        "<= 100 ms",
                    )
                )
        finally:
            daemon.close()

    ratios = [h / p for p, h in zip(passes, helps, strict=True)]
    print()
    print(
        f"pyslicer CLI benchmark: {args.rounds} rounds of (a), {args.exec_rounds} of each pair in (b), alternating; "
        f"`{' '.join(Path(part).name for part in slicer)}`, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    print()
    print("| measure | baseline: median / p90 | slicer: median / p90 | ratio / difference | target |")
    print("|---|---|---|---|---|")
    print(
        row(
            "`python -c pass` vs `slicer --help`",
            passes,
            helps,
            f"{statistics.median(helps) / statistics.median(passes):.1f}x (median of pairs "
            f"{statistics.median(ratios):.1f}x; min vs min {min(helps) / min(passes):.1f}x)",
            "<= 8x",
        )
    )
    for line in exec_rows:
        print(line)


if __name__ == "__main__":
    main()
