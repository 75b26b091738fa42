"""Bridge and isolated networks, policy, egress by NAT and DNS, against real guests.

The daemon's uplink leads into a namespace this test makes, which plays the outside world: a TCP server and
a DNS responder at 203.0.113.10 (a documentation address) live there. No packet goes anywhere else.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pyslicer.net import NetworkNamespace
from tests.integration.conftest import RunningDaemon, start_daemon, stop_daemon
from tests.integration.helpers import exec_buffered

OUTSIDE_ADDRESS = "203.0.113.10"
NAME = "outside.test"

CONFIG = """
config:
  host_groups:
  - name: br
    count: 0
    vcpu: 1
    ram_mb: 256
    storage_size: 2G
    persistent: false
    fast_create: false  # these tests count addresses, and a template being built holds one of its group's
    network:
      bridge: brnet0
      tap_prefix: tbr
      gateway: 10.77.0.1/24
      addresses: [10.77.0.20, 10.77.0.21, 10.77.0.22]
      dns_servers: [203.0.113.10]
  - name: iso
    count: 0
    vcpu: 1
    ram_mb: 256
    storage_size: 2G
    persistent: false
    fast_create: false
    network:
      mode: isolated
      tap_prefix: tiso
      range: 169.254.100.0/29
  network:
    uplink: {outside}
    uplink_address: {uplink}
  hypervisor: qemu
  api:
    bind_address: {address}
    port: {port}
"""

# Inside the outside namespace: a TCP server that answers with the address it sees the client at, and a DNS
# responder that answers every A query for NAME with OUTSIDE_ADDRESS.
OUTSIDE_SERVERS = f"""
import socket, struct, threading
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(({OUTSIDE_ADDRESS!r}, 8080)); s.listen(16)
    while True:
        c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()
def dns():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(({OUTSIDE_ADDRESS!r}, 53))
    while True:
        q, peer = u.recvfrom(512)
        end = q.index(b"\\0", 12) + 5
        name = []
        i = 12
        while q[i]:
            name.append(q[i + 1:i + 1 + q[i]].decode()); i += q[i] + 1
        qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
        found = ".".join(name) == {NAME!r} and qtype == 1
        flags = 0x8180 if found else 0x8183
        head = q[:2] + struct.pack("!HHHHH", flags, 1, 1 if found else 0, 0, 0)
        answer = b"\\xc0\\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton({OUTSIDE_ADDRESS!r})
        u.sendto(head + q[12:end] + (answer if found else b""), peer)
threading.Thread(target=dns, daemon=True).start()
print("ready", flush=True)
tcp()
"""

LISTENER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 7000)); s.listen(8)\n"
    "while True:\n"
    "    c, _ = s.accept(); c.sendall(b'hello'); c.close()\n"
)


def config_for(outside: str, uplink: str) -> str:
    return CONFIG.replace("{outside}", outside).replace("{uplink}", uplink)


def connect(api: httpx.Client, hostname: str, address: str, port: int) -> str | None:
    """What the guest reads from address:port, or None when it cannot connect."""
    script = (
        "import socket, sys\n"
        "try:\n"
        f"    c = socket.create_connection(({address!r}, {port}), timeout=4)\n"
        "    sys.stdout.write(c.recv(100).decode())\n"
        "except OSError as e:\n"
        "    sys.stderr.write(repr(e)); sys.exit(3)\n"
    )
    result = exec_buffered(api, hostname, "/usr/bin/python3", "-c", script)
    return str(result["stdout"]) if result["exit_code"] == 0 else None


def listen(api: httpx.Client, hostname: str) -> None:
    response = api.post(
        f"/vm/{hostname}/exec", params={"cmd": "/usr/bin/python3", "args": ["-c", LISTENER], "background": "true"}
    )
    assert response.status_code == 201, response.text
    for _ in range(100):  # until it listens (python starts slowly under TCG)
        if "1B58" in exec_buffered(api, hostname, "/bin/cat", "/proc/net/tcp")["stdout"]:
            return
        time.sleep(0.2)
    raise AssertionError(f"the listener in {hostname} never listened")


def create(api: httpx.Client, group: str, **body: Any) -> dict[str, Any]:
    response = api.post(f"/hostgroup/{group}/nodes?wait=agent&timeout=4m", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


@pytest.fixture(scope="module")
def outside() -> Iterator[str]:
    name = f"pst-out-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    server = None
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", name, "addr", "add", f"{OUTSIDE_ADDRESS}/32", "dev", "lo"], check=True)
        server = subprocess.Popen(
            ["ip", "netns", "exec", name, sys.executable, "-c", OUTSIDE_SERVERS], stdout=subprocess.PIPE
        )
        assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
        yield name
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture(scope="module")
def net_daemon(guest_image: Path, tmp_path_factory: pytest.TempPathFactory, outside: str) -> Iterator[RunningDaemon]:
    running = start_daemon(
        tmp_path_factory.mktemp("net"), guest_image, config_template=config_for(outside, "10.254.254.1/30")
    )
    try:
        yield running
    finally:
        stop_daemon(running)


@pytest.fixture(scope="module")
def napi(net_daemon: RunningDaemon) -> Iterator[httpx.Client]:
    with net_daemon.client() as client:
        yield client


def test_bad_network_requests_are_refused_before_anything_boots(napi: httpx.Client) -> None:
    cases = [
        ({"ip": "10.78.0.5"}, "ip: 10.78.0.5 is not in the pool of host group br"),
        ({"ip": "10.77.0.99"}, "is not in the pool"),
        ({"ip": "not-an-ip"}, "ip: 'not-an-ip' is not an IPv4 address"),
        ({"network": {"allow": ["10.0.0.0/8", "nope"]}}, "network.allow[1]: 'nope' is not an IPv4 CIDR"),
        ({"network": {"drop": ["10.0.0.0/33"]}}, "network.drop[0]"),
    ]
    for body, message in cases:
        response = napi.post("/hostgroup/br/nodes", json=body)
        assert response.status_code == 400, (body, response.text)
        assert message in response.json()["error"], (body, response.text)
    assert napi.get("/hostgroup/br/nodes").json() == []


def test_bridge_vms_reach_each_other_and_the_outside_by_nat(napi: httpx.Client, net_daemon: RunningDaemon) -> None:
    first = create(napi, "br", ip="10.77.0.22")
    second = create(napi, "br", network={"drop": [f"{OUTSIDE_ADDRESS}/32"]})
    try:
        assert first["ip"] == "10.77.0.22" and second["ip"] == "10.77.0.20"
        listed = {n["hostname"]: n["ip"] for n in napi.get("/nodes").json()}
        assert listed[first["hostname"]] == "10.77.0.22"
        assert napi.get(f"/vm/{second['hostname']}").json()["ip"] == "10.77.0.20"
        in_use = napi.post("/hostgroup/br/nodes", json={"ip": "10.77.0.22"})
        assert in_use.status_code == 400 and "already in use" in in_use.json()["error"]

        listen(napi, first["hostname"])
        assert connect(napi, second["hostname"], first["ip"], 7000) == "hello"

        # The outside sees the daemon's uplink address, not the guest's: NAT.
        assert connect(napi, first["hostname"], OUTSIDE_ADDRESS, 8080) == "10.254.254.1"
        # The second VM's own drop list closes the outside to it, and says so.
        assert connect(napi, second["hostname"], OUTSIDE_ADDRESS, 8080) is None
        described = napi.get(f"/vm/{second['hostname']}").json()["network"]
        assert described["policy_source"] == "override" and described["mode"] == "bridge"
        assert described["effective"] == {"allow": [], "drop": [f"{OUTSIDE_ADDRESS}/32"]}
        assert described["override"] == {"allow": None, "drop": [f"{OUTSIDE_ADDRESS}/32"]}
        assert napi.get(f"/vm/{first['hostname']}").json()["network"]["policy_source"] == "host_group"

        resolved = exec_buffered(
            napi, first["hostname"], "/usr/bin/python3", "-c", f"import socket; print(socket.gethostbyname({NAME!r}))"
        )
        assert resolved["stdout"].strip() == OUTSIDE_ADDRESS, resolved
        assert (
            "nameserver 203.0.113.10"
            in exec_buffered(napi, first["hostname"], "/bin/cat", "/etc/resolv.conf")["stdout"]
        )
    finally:
        napi.delete(f"/hostgroup/br/nodes/{first['hostname']}")
        napi.delete(f"/hostgroup/br/nodes/{second['hostname']}")
    namespace = NetworkNamespace(net_daemon.data_dir.absolute()).name
    chains = subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "list", "table", "inet", "pyslicer"], capture_output=True, text=True
    ).stdout
    assert "vm_br-" not in chains, "a deleted VM's rules go with it"


def test_isolated_vms_reach_only_what_their_policy_allows(napi: httpx.Client) -> None:
    first = create(napi, "iso")
    second = create(napi, "iso", network={"allow": [f"{first['ip']}/32"]})
    try:
        assert (first["ip"], second["ip"]) == ("169.254.100.2", "169.254.100.6")
        exhausted = napi.post("/hostgroup/iso/nodes", json={})
        assert exhausted.status_code == 409, exhausted.text
        assert "network.range 169.254.100.0/29 has no free address" in exhausted.json()["error"]

        listen(napi, first["hostname"])
        listen(napi, second["hostname"])
        assert connect(napi, first["hostname"], second["ip"], 7000) is None, "isolated: not another VM"
        assert connect(napi, second["hostname"], first["ip"], 7000) == "hello", "its allow opens exactly that"
        assert connect(napi, first["hostname"], OUTSIDE_ADDRESS, 8080) == "10.254.254.1"
    finally:
        napi.delete(f"/hostgroup/iso/nodes/{second['hostname']}")
    # Its address is free again and taken by the next VM; a drop of the same CIDR closes what allow opened.
    third = create(napi, "iso", network={"allow": [f"{first['ip']}/32"], "drop": [f"{first['ip']}/32"]})
    try:
        assert third["ip"] == second["ip"]
        assert connect(napi, third["hostname"], first["ip"], 7000) is None
    finally:
        napi.delete(f"/hostgroup/iso/nodes/{third['hostname']}")
        napi.delete(f"/hostgroup/iso/nodes/{first['hostname']}")


def test_nothing_is_left_after_the_daemon_stops(guest_image: Path, tmp_path: Path, outside: str) -> None:
    running = start_daemon(tmp_path, guest_image, config_template=config_for(outside, "10.254.253.1/30"))
    namespace = NetworkNamespace(running.data_dir.absolute())
    try:
        with running.client() as api:
            created = create(api, "br")
            assert connect(api, created["hostname"], OUTSIDE_ADDRESS, 8080) is not None
        peer = f"pu-{namespace.tag}"
        assert peer in subprocess.run(["ip", "-n", outside, "-br", "link"], capture_output=True, text=True).stdout
        qemus = running.qemus()
        assert qemus
    finally:
        stop_daemon(running)
    assert not namespace.exists
    assert peer not in subprocess.run(["ip", "-n", outside, "-br", "link"], capture_output=True, text=True).stdout
    assert not any(identity.is_alive() for identity in qemus)


def test_a_killed_daemon_is_followed_by_one_that_keeps_the_vms_connected(
    guest_image: Path, tmp_path: Path, outside: str
) -> None:
    template = config_for(outside, "10.254.252.1/30")
    first = start_daemon(tmp_path, guest_image, config_template=template)
    daemons = [first]
    namespace = NetworkNamespace(first.data_dir.absolute()).name
    try:
        with first.client() as api:
            created = create(api, "br", network={"drop": ["198.51.100.0/24"]})
            hostname = created["hostname"]
        first.process.kill()
        first.process.wait()
        # What no VM owns must go at the next start: a stray tap and a stray VM chain.
        subprocess.run(["ip", "-n", namespace, "tuntap", "add", "dev", "tbr99", "mode", "tap"], check=True)
        stray = "add chain inet pyslicer vm_ghost-1"
        subprocess.run(["ip", "netns", "exec", namespace, "nft", stray], check=True)

        second = start_daemon(tmp_path, guest_image, config_template=template)
        daemons.append(second)
        with second.client() as api:
            assert api.get(f"/vm/{hostname}").json()["ip"] == created["ip"]
            assert connect(api, hostname, OUTSIDE_ADDRESS, 8080) == "10.254.252.1", "still out through NAT"
            assert api.get(f"/vm/{hostname}").json()["network"]["effective"]["drop"] == ["198.51.100.0/24"]
        links = subprocess.run(["ip", "-n", namespace, "-br", "link"], capture_output=True, text=True).stdout
        assert "tbr99" not in links
        table = subprocess.run(
            ["ip", "netns", "exec", namespace, "nft", "list", "table", "inet", "pyslicer"],
            capture_output=True,
            text=True,
        ).stdout
        assert f"vm_{hostname}" in table and "vm_ghost-1" not in table and "198.51.100.0/24 drop" in table
    finally:
        for running in reversed(daemons):
            stop_daemon(running)
    assert not NetworkNamespace(first.data_dir.absolute()).exists


def test_ssh_login_as_the_default_user_with_an_injected_key(
    napi: httpx.Client, net_daemon: RunningDaemon, tmp_path: Path
) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    public = key.with_name("id_ed25519.pub").read_text().strip()
    refused = napi.post("/hostgroup/br/nodes", json={"github_user": "alexellis"})
    assert refused.status_code == 400 and "needs the internet" in refused.json()["error"], refused.text
    bad_key = napi.post("/hostgroup/br/nodes", json={"ssh_keys": [public, "not a key"]})
    assert bad_key.status_code == 400 and bad_key.json()["error"].startswith("ssh_keys[1]: "), bad_key.text

    created = create(napi, "br", ssh_keys=[public])
    hostname, address = created["hostname"], created["ip"]
    namespace = NetworkNamespace(net_daemon.data_dir.absolute()).name
    options = ["-i", str(key), "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    try:
        login = ["ip", "netns", "exec", namespace, "ssh", "-o", "StrictHostKeyChecking=no", *options]
        for _ in range(60):  # sshd starts (niced) after the agent
            done = subprocess.run(
                [*login, f"ubuntu@{address}", "id -u; sudo -n id -u"], capture_output=True, text=True, timeout=60
            )
            if done.returncode == 0:
                break
            time.sleep(1)
        assert (done.returncode, done.stdout) == (0, "1000\n0\n"), done.stderr

        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SLICER_URL": net_daemon.url, "SLICER_TOKEN": net_daemon.token}
        cli = [sys.executable, "-m", "pyslicer.cli.main", "vm", "ssh", hostname, *options, "id", "-un"]
        through_cli = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=60)
        assert (through_cli.returncode, through_cli.stdout) == (0, "ubuntu\n"), through_cli.stderr

        as_default = exec_buffered(napi, hostname, "/usr/bin/id", "-un", uid=4294967295, gid=4294967295)
        assert as_default["stdout"] == "ubuntu\n", as_default
        assert exec_buffered(napi, hostname, "/usr/bin/id", "-un")["stdout"] == "root\n"
    finally:
        napi.delete(f"/hostgroup/br/nodes/{hostname}")


HOST_CONFIG = """
config:
  host_groups:
  - name: hb
    count: 0
    vcpu: 1
    ram_mb: 256
    storage_size: 2G
    persistent: false
    network:
      bridge: brhost0
      tap_prefix: thb
      gateway: 10.79.0.1/24
  network:
    host_namespace: true
  hypervisor: qemu
  api:
    bind_address: {address}
    port: {port}
"""


def test_bridges_in_the_host_namespace(guest_image: Path, tmp_path: Path) -> None:
    """The daemon runs inside a namespace this test makes, which is its "host": the bridge, the tap and the policy
    table land there, the host reaches the VM directly, and a stop takes away only what the daemon made."""
    host = f"pst-host-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", host], check=True)
    try:
        subprocess.run(["ip", "-n", host, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", host, "link", "add", "keepme0", "type", "bridge"], check=True)
        running = start_daemon(
            tmp_path, guest_image, unix_socket=True, config_template=HOST_CONFIG, prefix=["ip", "netns", "exec", host]
        )
        try:
            with running.client() as api:
                created = create(api, "hb")
                assert api.get(f"/vm/{created['hostname']}").json()["network"]["namespace"] == ""
                listen(api, created["hostname"])
                probe = f"import socket; print(socket.create_connection(({created['ip']!r}, 7000), timeout=10).recv(9))"
                reached = subprocess.run(
                    ["ip", "netns", "exec", host, sys.executable, "-c", probe], capture_output=True, text=True
                )
                assert reached.stdout.strip() == "b'hello'", reached.stderr
                tag = NetworkNamespace(running.data_dir.absolute()).tag
                tables = subprocess.run(["ip", "netns", "exec", host, "nft", "list", "tables"], capture_output=True)
                assert f"inet pyslicer_{tag}" in tables.stdout.decode()
        finally:
            stop_daemon(running)
        links = subprocess.run(["ip", "-n", host, "-br", "link"], capture_output=True, text=True).stdout
        assert "brhost0" not in links and "thb" not in links and "keepme0" in links
        tables = subprocess.run(["ip", "netns", "exec", host, "nft", "list", "tables"], capture_output=True)
        assert b"pyslicer" not in tables.stdout
    finally:
        subprocess.run(["ip", "netns", "delete", host], check=False)
