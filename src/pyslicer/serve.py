"""The daemon process: wires the config, the hypervisor, the daemon and the API, and serves until a signal.

SIGINT or SIGTERM: a full stop (sandboxes removed, persistent VMs shut down cleanly). SIGUSR1: the daemon exits
and every VM keeps running, for the next `slicer up` on the same data dir to adopt (an upgrade, a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import uvicorn
import uvloop

from pyslicer.api.app import create_app
from pyslicer.config import SlicerConfig
from pyslicer.daemon import Daemon
from pyslicer.errors import ConfigError
from pyslicer.vmm import MemoryTuning, qemu_hypervisor

log = logging.getLogger("pyslicer")

# Short of memory, the kernel's OOM killer must take a VM (QEMU_OOM_SCORE_ADJ), never the daemon that would
# clean up after it.
DAEMON_OOM_SCORE_ADJ = -500


def say(message: str) -> None:
    print(message, flush=True)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The daemon owns SIGINT/SIGTERM: uvicorn would re-raise them after serving, killing the
        # process before the VMs are stopped and the sandboxes' disks removed.
        yield


async def claim_socket_path(path: Path) -> None:
    """Take over a socket path left by a dead daemon, never one a live server answers on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        return
    try:
        _, writer = await asyncio.open_unix_connection(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody listens: stale
        return
    writer.close()
    raise ConfigError(f"config.api.bind_address: {path} is in use by a running server")


def protect_from_oom_killer() -> None:
    try:
        with open("/proc/self/oom_score_adj", "w") as file:
            file.write(str(DAEMON_OOM_SCORE_ADJ))
    except OSError as exc:  # lowering it needs CAP_SYS_RESOURCE
        log.warning("cannot lower the daemon's oom_score_adj (needs CAP_SYS_RESOURCE): %s; its QEMUs are still "
                    "raised above it", exc)  # fmt: skip


def memory_tuning(config: SlicerConfig) -> MemoryTuning:
    return MemoryTuning(
        tcg_tb_size_mib=config.tcg_tb_size // (1024 * 1024), free_page_reporting=config.free_page_reporting
    )


def bind_private_unix_socket(path: Path) -> socket.socket:
    """The API's unix socket, 0600 from its first moment: it has no auth, so only the daemon's own user may
    connect (uvicorn would make it 0666)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"config.api.bind_address: cannot listen on {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(umask)
    sock.listen(2048)
    return sock


async def run(config: SlicerConfig, data_dir: Path) -> None:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    server: _Server | None = None
    leave_running = False

    def on_signal(sig: signal.Signals) -> None:
        nonlocal leave_running
        leave_running = sig is signal.SIGUSR1
        if server is not None:
            server.should_exit = True
        elif main is not None:
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        loop.add_signal_handler(sig, on_signal, sig)
    protect_from_oom_killer()
    daemon = Daemon(config, data_dir, qemu_hypervisor(config.accel, memory_tuning(config)), progress=say)
    claimed_socket: Path | None = None
    try:
        api = config.api
        socket_path = api.unix_socket
        if socket_path is not None:
            await claim_socket_path(socket_path)
            claimed_socket = socket_path
        await daemon.start()
        token = daemon.token if api.uses_auth else None
        sockets: list[socket.socket] | None = None
        if socket_path is not None:
            sockets = [bind_private_unix_socket(socket_path)]
            server_config = uvicorn.Config(create_app(daemon, token=token), lifespan="off", log_level="warning")
            say(f"pyslicer API on unix socket {socket_path} (no auth; mode 0600)")
        else:
            server_config = uvicorn.Config(
                create_app(daemon, token=token),
                host=api.bind_address,
                port=api.port,
                lifespan="off",
                log_level="warning",
            )
            auth = f"token in {data_dir / 'auth' / 'token'}" if token else "no auth"
            say(f"pyslicer API on http://{api.bind_address}:{api.port} ({auth})")
        for node in daemon.nodes.values():
            say(f"vm {node.hostname}: booting, serial log {node.spec.console_log}")
        server = _Server(server_config)
        await server.serve(sockets=sockets)
    except asyncio.CancelledError:
        say("pyslicer: interrupted")
    finally:
        say("pyslicer: leaving the VMs running" if leave_running else "pyslicer: stopping VMs")
        await daemon.stop(leave_running=leave_running)
        if claimed_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                claimed_socket.unlink()


def serve(config: SlicerConfig, data_dir: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # qemu.qmp logs each connection at INFO and each failed attempt at ERROR; we report failures ourselves.
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(run(config, data_dir))
    sys.stdout.flush()
