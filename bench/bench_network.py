"""Side by side, in one run, on one daemon whose uplink leads into a namespace this bench makes (the "outside",
a receiver at 203.0.113.10; no packet leaves the machine):

(a) create -> agent ready, for a VM with the group's empty policy against one created with a policy of 100 rules
    (rounds alternate);
(b) TCP throughput of a Python sender in a guest: VM to VM over the bridge, and VM to the outside through NAT,
    each from a VM with no rules and from one whose chain holds 100 rules (none matching, so every new packet
    walks them all).

Run as root: `.venv/bin/python bench/bench_network.py [--rounds 3] [--mib 16]` (with PYSLICER_TEST_IMAGE_CACHE
set, it boots the tests' image). Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

OUTSIDE = "203.0.113.10"
CONFIG = """
config:
  host_groups:
  - name: br
    count: 0
    vcpu: 1
    ram_mb: 256
    persistent: false
    network:
      gateway: 10.88.0.1/24
  network:
    uplink: {outside}
  api:
    bind_address: 127.0.0.1
    port: {port}
    auth:
      enabled: false
"""
# 100 documentation/benchmark CIDRs no packet here goes to: every new packet is checked against all of them.
RULES = [f"198.18.{i}.0/24" for i in range(100)]
RECEIVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7001)); s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    while c.recv(1 << 16):
        pass
    c.sendall(b"done"); c.close()
"""
SENDER = """
import socket, sys, time
chunk = b"x" * (1 << 16); total = int(sys.argv[2]) << 20
c = socket.create_connection((sys.argv[1], 7001), timeout=60)
started = time.perf_counter(); sent = 0
while sent < total:
    c.sendall(chunk); sent += len(chunk)
c.shutdown(socket.SHUT_WR); c.recv(4)
print(sent / (time.perf_counter() - started) / (1 << 20))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def exec_buffered(api: httpx.Client, hostname: str, *argv: str, background: bool = False) -> dict[str, Any]:
    params: dict[str, Any] = {"cmd": argv[0], "args": list(argv[1:])}
    params["background" if background else "buffered"] = "true"
    answer: dict[str, Any] = api.post(f"/vm/{hostname}/exec", params=params).raise_for_status().json()
    return answer


def create(api: httpx.Client, rules: bool) -> tuple[str, str, float]:
    body = {"network": {"drop": RULES}} if rules else {}
    started = time.perf_counter()
    created = api.post("/hostgroup/br/nodes?wait=agent&timeout=5m", json=body).raise_for_status().json()
    return created["hostname"], created["ip"], time.perf_counter() - started


def throughput(api: httpx.Client, sender: str, target: str, mib: int) -> float:
    result = exec_buffered(api, sender, "/usr/bin/python3", "-c", SENDER, target, str(mib))
    if result["exit_code"] != 0:
        raise RuntimeError(f"sender in {sender}: {result}")
    return float(result["stdout"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mib", type=int, default=16)
    args = parser.parse_args()
    outside = f"pbench-out-{secrets.token_hex(3)}"
    work = Path(tempfile.mkdtemp(prefix="bench-network-"))
    port = free_port()
    (work / "slicer.yaml").write_text(CONFIG.format(outside=outside, port=port))
    cache = os.environ.get("PYSLICER_TEST_IMAGE_CACHE")
    if cache:  # the tests' image, instead of a build of its own
        (work / "d").mkdir()
        (work / "d" / "images").symlink_to(Path(cache) / "images")
    subprocess.run(["ip", "netns", "add", outside], check=True)
    receiver = daemon = None
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
    try:
        subprocess.run(["ip", "-n", outside, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", outside, "addr", "add", f"{OUTSIDE}/32", "dev", "lo"], check=True)
        receiver = subprocess.Popen(
            ["ip", "netns", "exec", outside, sys.executable, "-c", RECEIVER, OUTSIDE], stdout=subprocess.PIPE
        )
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == b"ready"
        daemon = subprocess.Popen(
            [sys.executable, "-m", "pyslicer.cli.main", "up", str(work / "slicer.yaml"), "--data-dir", str(work / "d")],
            stdout=(work / "daemon.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for _ in range(600):
            try:
                if api.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        ready: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for rules in (False, True):
                hostname, _, seconds = create(api, rules)
                ready[rules].append(seconds)
                api.delete(f"/hostgroup/br/nodes/{hostname}")
        plain, _, _ = create(api, False)
        ruled, _, _ = create(api, True)
        sink, sink_ip, _ = create(api, False)
        exec_buffered(api, sink, "/usr/bin/python3", "-c", RECEIVER, "0.0.0.0", background=True)
        time.sleep(5)  # (the receiver starting under TCG)
        rates: dict[tuple[str, bool], list[float]] = {}
        for _ in range(args.rounds):
            for rules, sender in ((False, plain), (True, ruled)):
                rates.setdefault(("VM -> VM", rules), []).append(throughput(api, sender, sink_ip, args.mib))
                rates.setdefault(("VM -> outside (NAT)", rules), []).append(throughput(api, sender, OUTSIDE, args.mib))
        print(f"\nnetwork bench, {args.rounds} rounds, {args.mib} MiB per transfer, medians\n")
        print(f"{'measure':<28}{'no rules':>14}{'100 rules':>14}{'ratio':>10}")
        a, b = statistics.median(ready[False]), statistics.median(ready[True])
        print(f"{'create -> agent ready':<28}{a:>12.2f} s{b:>12.2f} s{b / a:>10.3f}")
        for what in ("VM -> VM", "VM -> outside (NAT)"):
            a, b = statistics.median(rates[(what, False)]), statistics.median(rates[(what, True)])
            print(f"{what + ' MiB/s':<28}{a:>14.1f}{b:>14.1f}{b / a:>10.3f}")
    finally:
        api.close()
        if daemon is not None:
            daemon.terminate()
            daemon.wait(120)
        if receiver is not None:
            receiver.kill()
            receiver.wait()
        subprocess.run(["ip", "netns", "delete", outside], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
