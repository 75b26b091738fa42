"""Port forwarding against a real guest: a server started in the guest (its python3), reached through the SDK's
streams, the CLI's listeners (TCP and unix sockets, many connections at once) and Slicer-style clients."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from pyslicer.client import SlicerAPIError, SlicerClient, SlicerUpstreamError
from tests.integration.conftest import RunningDaemon, free_port
from tests.integration.helpers import sh

GUEST_PORT = 7000
GUEST_SOCKET = "/run/fwd-test.sock"
# One line says what to do: ECHO (echo until EOF), SINK (read until EOF, answer the sha256), SOURCE n (send the
# sha256 of n random bytes, a newline, then the bytes). Threads, so many connections are served at once.
SERVER = r"""
import hashlib, os, socketserver, sys

class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        command = self.rfile.readline().split()
        if command[0] == b"ECHO":
            while data := self.rfile.read1(65536):
                self.wfile.write(data)
        elif command[0] == b"SINK":
            digest = hashlib.sha256()
            while data := self.rfile.read1(65536):
                digest.update(data)
            self.wfile.write(digest.hexdigest().encode() + b"\n")
        elif command[0] == b"SOURCE":
            data = os.urandom(int(command[1]))
            self.wfile.write(hashlib.sha256(data).hexdigest().encode() + b"\n" + data)

class TCP(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128

class Unix(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

import threading
tcp = TCP(("127.0.0.1", int(sys.argv[1])), Handler)
if os.path.exists(sys.argv[2]):
    os.unlink(sys.argv[2])
unix = Unix(sys.argv[2], Handler)
threading.Thread(target=unix.serve_forever, daemon=True).start()
print("serving", flush=True)
tcp.serve_forever()
"""


@pytest.fixture(scope="module")
def guest_server(api: httpx.Client, sandbox: str) -> Iterator[str]:
    """The test server, running in the shared sandbox in a session of its own (so the exec that started it can
    end), stopped at the end."""
    sh(api, sandbox, f"cat > /run/fwd-server.py <<'EOF'\n{SERVER}\nEOF")
    sh(
        api,
        sandbox,
        f"setsid python3 /run/fwd-server.py {GUEST_PORT} {GUEST_SOCKET} > /run/fwd-server.log 2>&1 < /dev/null & "
        f"echo $! > /run/fwd-server.pid; for i in $(seq 200); do grep -q serving /run/fwd-server.log && exit 0; "
        "sleep 0.1; done; cat /run/fwd-server.log; exit 1",
    )
    try:
        yield sandbox
    finally:
        sh(api, sandbox, "kill $(cat /run/fwd-server.pid) || true; rm -f /run/fwd-server.* " + GUEST_SOCKET)


@pytest.fixture(scope="module")
def client(daemon: RunningDaemon) -> Iterator[SlicerClient]:
    with SlicerClient(daemon.url, token=daemon.token) as sdk:
        yield sdk


def read_all(stream: object) -> bytes:
    data = b""
    while chunk := stream.read(timeout=120):  # type: ignore[attr-defined]
        data += chunk
    return data


def test_a_large_transfer_both_ways_checked_by_sha256(client: SlicerClient, guest_server: str) -> None:
    payload = os.urandom(48 * 1024 * 1024)
    stream = client.forward_connection(guest_server, f"127.0.0.1:{GUEST_PORT}")
    try:
        stream.write(b"SINK\n" + payload)
        stream.close_write()  # a half-close: the server reads EOF and still answers
        assert read_all(stream) == hashlib.sha256(payload).hexdigest().encode() + b"\n"
    finally:
        stream.close()
    stream = client.forward_connection(guest_server, f"127.0.0.1:{GUEST_PORT}")
    try:
        stream.write(b"SOURCE %d\n" % (48 * 1024 * 1024))
        digest, _, data = read_all(stream).partition(b"\n")
        assert len(data) == 48 * 1024 * 1024 and hashlib.sha256(data).hexdigest().encode() == digest
    finally:
        stream.close()


def test_a_unix_socket_in_the_guest(client: SlicerClient, guest_server: str) -> None:
    stream = client.forward_connection(guest_server, f"unix:{GUEST_SOCKET}")
    try:
        stream.write(b"ECHO\nover a unix socket")
        stream.close_write()
        assert read_all(stream) == b"over a unix socket"
    finally:
        stream.close()


def _ws_url(daemon: RunningDaemon, hostname: str) -> str:
    return daemon.url.replace("http://", "ws://") + f"/vm/{hostname}/forward"


def test_slicer_style_clients_see_the_upstream_close(daemon: RunningDaemon, guest_server: str) -> None:
    """The Go and TS SDKs send no half-close header: the upstream's EOF closes the WebSocket normally."""
    headers = {
        "Authorization": f"Bearer {daemon.token}",
        "X-Inlets-Upstream": f"127.0.0.1:{GUEST_PORT}",
        "X-Inlets-Mode": "local",
        "X-Inlets-Client-ID": "test",
    }
    with connect(_ws_url(daemon, guest_server), additional_headers=headers, compression=None) as ws:
        ws.send(b"SOURCE 100000\n")
        received = b""
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                received += ws.recv(timeout=60)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    digest, _, data = received.partition(b"\n")
    assert hashlib.sha256(data).hexdigest().encode() == digest and len(data) == 100000


def test_a_port_nothing_listens_on_closes_with_a_reason(
    client: SlicerClient, daemon: RunningDaemon, guest_server: str
) -> None:
    headers = {"Authorization": f"Bearer {daemon.token}", "X-Inlets-Upstream": "127.0.0.1:1"}
    with (
        connect(_ws_url(daemon, guest_server), additional_headers=headers) as ws,
        pytest.raises(ConnectionClosed) as closed,
    ):
        ws.recv(timeout=60)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1014
    assert closed.value.rcvd.reason == "127.0.0.1:1: Connection refused"
    stream = client.forward_connection(guest_server, "unix:/run/no-such.sock")
    with pytest.raises(SlicerUpstreamError) as caught:
        stream.read(timeout=60)
    assert "No such file or directory" in caught.value.message


@pytest.mark.parametrize(
    ("upstream", "status", "code"),
    [
        (None, 400, "missing_upstream"),
        ("no-port", 400, "invalid_upstream"),
        ("host:99999", 400, "invalid_upstream"),
        ("unix:relative.sock", 400, "invalid_upstream"),
        ("::1:80", 400, "invalid_upstream"),
    ],
)
def test_bad_upstreams_are_refused_before_the_upgrade(
    daemon: RunningDaemon, sandbox: str, upstream: str | None, status: int, code: str
) -> None:
    headers = {"Authorization": f"Bearer {daemon.token}"}
    if upstream is not None:
        headers["X-Inlets-Upstream"] = upstream
    with pytest.raises(InvalidStatus) as refused:
        connect(_ws_url(daemon, sandbox), additional_headers=headers)
    assert refused.value.response.status_code == status
    assert f'"code":"{code}"' in refused.value.response.body.decode()


def test_an_unknown_vm_is_404(client: SlicerClient) -> None:
    with pytest.raises(SlicerAPIError) as caught:
        client.forward_connection("no-such-vm", "127.0.0.1:80")
    assert caught.value.status == 404


def _echo_through(address: tuple[str, int] | str, size: int) -> str:
    """Send ``size`` random bytes to the guest's echo server through ``address``; "" when they came back whole,
    else what went wrong."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    payload = os.urandom(size)
    received = b""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(120)
            sock.connect(address)
            sock.sendall(b"ECHO\n" + payload)
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                received += chunk
    except OSError as exc:
        return f"{address}: {exc!r} after {len(received)} of {size} bytes"
    if received == payload:
        return ""
    differ = next((i for i, (a, b) in enumerate(zip(received, payload, strict=False)) if a != b), None)
    return f"{address}: {len(received)} of {size} bytes came back, first difference at {differ}"


def test_the_cli_serves_fifty_connections_at_once_over_tcp_and_unix_sockets(
    daemon: RunningDaemon, guest_server: str, tmp_path: Path
) -> None:
    port, closed_port = free_port(), free_port()
    local_socket = tmp_path / "local.sock"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyslicer.cli.main",
            "vm",
            "forward",
            guest_server,
            "-L",
            f"127.0.0.1:{port}:127.0.0.1:{GUEST_PORT}",
            "-L",
            f"{local_socket}:{GUEST_SOCKET}",
            "-L",
            f"{closed_port}:127.0.0.1:1",
            "--url",
            daemon.url,
            "--token",
            daemon.token,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        lines = [process.stderr.readline() for _ in range(3)]
        assert all(line.startswith("Forwarding ") for line in lines), lines
        with concurrent.futures.ThreadPoolExecutor(60) as pool:
            tcp = [pool.submit(_echo_through, ("127.0.0.1", port), 256 * 1024) for _ in range(50)]
            unix = [pool.submit(_echo_through, str(local_socket), 64 * 1024) for _ in range(10)]
            failures = [problem for f in tcp + unix if (problem := f.result())]
        if failures:
            process.send_signal(2)
            _, errors = process.communicate(timeout=30)
            pytest.fail("\n".join([*failures, "the CLI said:", errors]))
        with socket.create_connection(("127.0.0.1", closed_port), timeout=60) as sock:
            assert sock.recv(1) == b""  # closed once the guest refused
        line = process.stderr.readline()
        assert "cannot connect" in line and "127.0.0.1:1: Connection refused" in line, line
        process.send_signal(2)
        assert process.wait(30) == 0
        assert not local_socket.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
