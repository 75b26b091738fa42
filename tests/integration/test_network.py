"""Guest networking, inside the daemon's own network namespace (no traffic leaves it)."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import httpx

from pyslicer.net import NetworkNamespace
from tests.integration.conftest import RunningDaemon
from tests.integration.helpers import exec_buffered, sh


def test_sandbox_has_an_address_on_its_group_network(api: httpx.Client, sandbox: str) -> None:
    node = next(n for n in api.get("/nodes").json() if n["hostname"] == sandbox)
    address = ipaddress.IPv4Address(node["ip"])
    assert address in ipaddress.IPv4Network("192.168.138.0/24")  # sbox is the second group
    assert f"inet {address}/24" in sh(api, sandbox, "ip -4 addr show dev eth0")
    assert "default via 192.168.138.1" in sh(api, sandbox, "ip route")


def test_guest_reaches_its_gateway(api: httpx.Client, sandbox: str) -> None:
    result = exec_buffered(api, sandbox, "/usr/local/sbin/busybox", "ping", "-c", "1", "-W", "5", "192.168.138.1")
    assert result["exit_code"] == 0, result


def test_namespace_reaches_the_guest(daemon: RunningDaemon, api: httpx.Client, sandbox: str) -> None:
    """A TCP connection from inside the namespace to a closed guest port is refused by the guest's
    kernel: proof that packets got there and back."""
    node = next(n for n in api.get("/nodes").json() if n["hostname"] == sandbox)
    namespace = NetworkNamespace(daemon.data_dir.absolute()).name
    probe = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(({node['ip']!r}, 9), timeout=10)\n"
        "except ConnectionRefusedError:\n"
        "    sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    done = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", probe], timeout=30)
    assert done.returncode == 0
