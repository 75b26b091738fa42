"""Fixtures that start the real daemon (`slicer up`) on a temporary data dir and boot real guests.

The guest image is built once per machine into a cache dir (rebuilt only when its inputs change) and
shared by every daemon through a symlink, so the suite boots VMs, not images.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pyslicer.daemon.data_dir import DataDir
from pyslicer.image import ensure_image
from pyslicer.net import NetworkNamespace
from pyslicer.vmm import ProcessIdentity
from tests.conftest import IMAGE_CACHE
from tests.integration.helpers import created_sandbox

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def guest_image() -> Path:
    if os.geteuid() != 0:
        pytest.fail("integration tests boot VMs and must run as root")
    IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
    asyncio.run(ensure_image(IMAGE_CACHE, progress=lambda line: print(line, flush=True)))
    return IMAGE_CACHE / "images"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class RunningDaemon:
    process: subprocess.Popen[bytes]
    data_dir: Path
    url: str
    token: str
    log_path: Path

    def client(self) -> httpx.Client:
        if self.url.startswith("/"):
            return httpx.Client(base_url="http://slicer", transport=httpx.HTTPTransport(uds=self.url), timeout=120)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def qemu_pids(self) -> set[int]:
        """The QEMUs running this daemon's VMs (QEMU daemonizes: they are not its children)."""
        return {identity.pid for identity in self.qemus()}

    def qemus(self) -> set[ProcessIdentity]:
        """The same, told apart from later processes with their PIDs, from the pidfiles in their run dirs."""
        found = set()
        for pidfile in DataDir(self.data_dir).run_root.glob("*/qemu.pid"):
            try:
                identity = ProcessIdentity.of(int(pidfile.read_text()))
            except (OSError, ValueError):
                continue
            if identity is not None and any(str(pidfile.parent / "qmp.sock") in a for a in identity.command_line()):
                found.add(identity)
        return found

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


CONFIG = """
config:
  host_groups:
  - name: svc
    count: 1
    vcpu: 1
    ram_mb: 384
    storage_size: 2G
    userdata: |
      echo service-userdata > /var/tmp/from-userdata
  - name: sbox
    count: 0
    vcpu: 2
    ram_mb: 512
    storage_size: 3G
    persistent: false
  hypervisor: qemu
  accel: auto
  api:
    bind_address: {address}
    port: {port}
    auth:
      enabled: true
"""


def start_daemon(
    tmp: Path,
    images: Path,
    *,
    unix_socket: bool = False,
    config_template: str = CONFIG,
    prefix: Sequence[str] = (),
) -> RunningDaemon:
    """A daemon on tmp/data; a data dir left by an earlier daemon there is taken over as it is.
    With unix_socket the API listens on tmp/api.sock (no auth) instead of loopback TCP. The config
    template has ``{address}`` and ``{port}`` for the API. ``prefix`` runs it through a command (e.g.
    ``ip netns exec NS``)."""
    data_dir = tmp / "data"
    if not data_dir.exists():
        data_dir.mkdir(parents=True)
        (data_dir / "images").symlink_to(images)
    port = free_port()
    config = tmp / "slicer.yaml"
    address = str(tmp / "api.sock") if unix_socket else "127.0.0.1"
    config.write_text(config_template.format(port=port, address=address))
    log_path = tmp / "daemon.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "pyslicer.cli.main", "up", str(config), "--data-dir", str(data_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = address if unix_socket else f"http://127.0.0.1:{port}"
    probe = RunningDaemon(process, data_dir, url, "", log_path).client()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daemon exited early:\n{log_path.read_text()}")
        try:
            if probe.get("/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError(f"daemon did not answer:\n{log_path.read_text()}")
    probe.close()
    token = (data_dir / "auth" / "token").read_text().strip()
    return RunningDaemon(process, data_dir, url, token, log_path)


def stop_daemon(daemon: RunningDaemon) -> None:
    """Stop it with SIGTERM; whatever it leaves (it may have been killed) is removed: its QEMUs, by PID and start
    time, and its namespace."""
    qemus = daemon.qemus()
    if daemon.process.poll() is None:
        daemon.process.send_signal(signal.SIGTERM)
        try:
            daemon.process.wait(90)
        except subprocess.TimeoutExpired:
            daemon.process.kill()
            daemon.process.wait()
    for identity in qemus:  # only ours, and only if the daemon failed to stop them
        if identity.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(identity.pid, signal.SIGKILL)
    netns = NetworkNamespace(daemon.data_dir.absolute())
    if netns.exists:
        subprocess.run(["ip", "netns", "delete", netns.name], check=False)


@pytest.fixture(scope="session")
def daemon(guest_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    running = start_daemon(tmp_path_factory.mktemp("daemon"), guest_image)
    try:
        yield running
    finally:
        stop_daemon(running)


@pytest.fixture(scope="session")
def api(daemon: RunningDaemon) -> Iterator[httpx.Client]:
    with daemon.client() as client:
        yield client


@pytest.fixture(scope="session")
def sandbox(api: httpx.Client) -> Iterator[str]:
    """One sandbox shared by the checks that only read or run commands."""
    userdata = "echo hello-userdata > /var/tmp/userdata-out\n"
    with created_sandbox(api, "userdata", userdata=userdata, tags=["shared", "team-a"]) as hostname:
        yield hostname
