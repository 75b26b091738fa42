"""The daemon: host groups, their nodes, and the start and stop of the whole thing."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import hashlib
import itertools
import logging
import os
import platform
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pyslicer import __version__
from pyslicer.config import MIN_RAM_BYTES, HostGroupConfig, SlicerConfig
from pyslicer.daemon.lifecycle import NodeState
from pyslicer.daemon.node import Node
from pyslicer.daemon.registry import NodeRecord, Registry
from pyslicer.daemon.storage import create_overlay, remove_disk
from pyslicer.errors import ConfigError, InvalidArgument, NotFound, PermissionDenied, SlicerError, Timeout
from pyslicer.image import GuestImage, ensure_image
from pyslicer.net import GroupNetwork, Lease, NetworkNamespace
from pyslicer.vmm import Hypervisor, Nic, QemuHypervisor, VMSpec, choose_accel

log = logging.getLogger(__name__)

HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_SOCKET_PATH = 100
GRACEFUL_STOP_SECONDS = 20.0
MAX_USERDATA_BYTES = 48 * 1024  # handed to the agent in one frame
MAX_CONSOLE_LOG_BYTES = 16 * 1024 * 1024
CONSOLE_CHECK_SECONDS = 5.0


def trim_log(path: Path, limit: int) -> None:
    """Keep the newest half of a log over ``limit`` bytes: a guest decides how much its console writes,
    and must not fill the host's disk. QEMU appends (O_APPEND), so it goes on at the new end."""
    try:
        with path.open("r+b") as log:
            size = log.seek(0, os.SEEK_END)
            if size <= limit:
                return
            log.seek(size - limit // 2)
            keep = log.read(limit // 2)
            log.seek(0)
            log.truncate(0)
            log.write(b"[... earlier console output trimmed by pyslicer ...]\n" + keep)
    except FileNotFoundError:
        pass


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def machine_arch() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


@dataclass(frozen=True)
class NodeRequest:
    """What a caller may choose about a new node; unset fields take the host group's values."""

    hostname: str | None = None
    cpus: int | None = None
    ram_bytes: int | None = None
    userdata: str | None = None
    tags: tuple[str, ...] = ()
    persistent: bool | None = None


class HostGroup:
    def __init__(self, config: HostGroupConfig, network: GroupNetwork) -> None:
        self.config = config
        self.name = config.name
        self.network = network
        self.next_index = 1
        self.taps = itertools.count(1)

    def new_hostname(self, taken: set[str]) -> str:
        while f"{self.name}-{self.next_index}" in taken:
            self.next_index += 1
        hostname = f"{self.name}-{self.next_index}"
        self.next_index += 1
        return hostname


class Daemon:
    def __init__(
        self,
        config: SlicerConfig,
        data_dir: Path,
        *,
        progress: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        self.progress = progress
        self.data_dir = data_dir.absolute()  # qcow2 overlays record their base by absolute path
        self.netns = NetworkNamespace(self.data_dir)
        self.groups = {
            group.name: HostGroup(group, GroupNetwork(group, index, self.netns))
            for index, group in enumerate(config.host_groups)
        }
        for index, group in enumerate(config.host_groups):
            if len(group.userdata.encode()) > MAX_USERDATA_BYTES:
                raise ConfigError(f"config.host_groups[{index}].userdata: larger than {MAX_USERDATA_BYTES // 1024} KiB")
        self.nodes: dict[str, Node] = {}
        self.leases: dict[str, Lease] = {}
        self.accel, self.accel_reason = choose_accel(config.accel)
        self.hypervisor: Hypervisor = QemuHypervisor(self.accel)
        self.image: GuestImage | None = None
        self.registry: Registry | None = None
        self.launch_counts: dict[tuple[str, str], int] = {}
        self.token: str | None = None
        self._run_root = self._choose_run_root()
        self._lock = asyncio.Lock()
        self._housekeeping: asyncio.Task[None] | None = None
        self._data_dir_lock: IO[str] | None = None

    # -- paths ---------------------------------------------------------------------------------
    def _choose_run_root(self) -> Path:
        root = self.data_dir / "run"
        # Unix socket paths are limited to 108 bytes. The fallback is named after the data dir, so a
        # daemon that died is cleaned up by the next one on the same data dir.
        if len(str(root / ("x" * 40) / "agent.sock")) > MAX_SOCKET_PATH:
            return Path("/run/pyslicer") / hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return root

    def disk_path(self, hostname: str) -> Path:
        return self.data_dir / "disks" / f"{hostname}.qcow2"

    def console_path(self, hostname: str) -> Path:
        return self.data_dir / "logs" / f"{hostname}.log"

    # -- start and stop ------------------------------------------------------------------------
    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._hold_data_dir()
        for sub in ("disks", "logs", "auth"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._run_root, ignore_errors=True)  # sockets of VMs of an earlier run
        self._run_root.mkdir(parents=True, exist_ok=True)
        self.token = await asyncio.to_thread(self._load_token)
        self.progress(f"accel {self.accel_reason}")
        self.image = await ensure_image(self.data_dir, progress=self.progress)
        await self.netns.create()
        for group in self.groups.values():
            await group.network.create()
        self.registry = await Registry.open(self.data_dir / "state.db")
        await self._recover()
        for group in self.groups.values():
            for index in range(1, group.config.count + 1):
                hostname = f"{group.name}-{index}"
                if hostname not in self.nodes:
                    await self._launch(group, NodeRequest(hostname=hostname), service=True)
            group.next_index = max(group.next_index, group.config.count + 1)
        self._housekeeping = asyncio.get_running_loop().create_task(self._keep_logs_bounded())

    async def _keep_logs_bounded(self) -> None:
        while True:
            await asyncio.sleep(CONSOLE_CHECK_SECONDS)
            for node in list(self.nodes.values()):
                await asyncio.to_thread(trim_log, node.spec.console_log, MAX_CONSOLE_LOG_BYTES)

    async def stop(self) -> None:
        if self._data_dir_lock is None:
            return  # never started: everything on the data dir belongs to someone else, or to nobody yet
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        nodes = list(self.nodes.values())
        await asyncio.gather(*(self._shutdown_node(node) for node in nodes), return_exceptions=True)
        if self.registry is not None:
            await self.registry.close()
            self.registry = None
        await self.netns.delete()
        if self._run_root != self.data_dir / "run":
            shutil.rmtree(self._run_root, ignore_errors=True)
        if self._data_dir_lock is not None:
            self._data_dir_lock.close()  # releases the flock
            self._data_dir_lock = None

    async def _shutdown_node(self, node: Node) -> None:
        await node.stop(graceful_timeout=GRACEFUL_STOP_SECONDS if node.record.persistent else 0)
        await self._release_lease(node)
        shutil.rmtree(node.spec.run_dir, ignore_errors=True)
        if not node.record.persistent:
            await self._forget(node)

    async def _recover(self) -> None:
        """Disks of ephemeral nodes left by a daemon that did not stop cleanly are removed;
        persistent sandboxes come back."""
        assert self.registry is not None
        for record in await self.registry.all():
            group = self.groups.get(record.host_group)
            if record.persistent and group is not None and not record.protected:
                await self._launch(group, NodeRequest(hostname=record.hostname), record=record)
            elif not record.persistent or group is None:
                remove_disk(self.disk_path(record.hostname))
                await self.registry.remove(record.hostname)

    def _hold_data_dir(self) -> None:
        """One daemon per data dir: a second one would clean up the first one's sockets and disks."""
        lock = (self.data_dir / "daemon.lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ConfigError(f"data dir {self.data_dir} is in use by another slicer daemon") from None
        self._data_dir_lock = lock

    def _load_token(self) -> str:
        path = self.data_dir / "auth" / "token"
        with contextlib.suppress(FileNotFoundError):
            token = path.read_text().strip()
            if token:
                return token
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.chmod(path, 0o600)
        return token

    # -- queries -------------------------------------------------------------------------------
    def group(self, name: str) -> HostGroup:
        try:
            return self.groups[name]
        except KeyError:
            raise NotFound(f"host group {name!r} not found", code="hostgroup_not_found") from None

    def node(self, hostname: str) -> Node:
        node = self.nodes.get(hostname)
        if node is None:
            raise NotFound(f"VM {hostname!r} not found", code="vm_not_found")
        return node

    def list_nodes(self, group: str | None = None, tag: str | None = None, tag_prefix: str | None = None) -> list[Node]:
        if tag is not None and tag_prefix is not None:
            raise InvalidArgument("only one of tag and tag_prefix may be set", code="invalid_filter")
        nodes = [n for n in self.nodes.values() if group is None or n.record.host_group == group]
        if tag is not None:
            nodes = [n for n in nodes if tag in n.record.tags]
        if tag_prefix is not None:
            nodes = [n for n in nodes if any(t.startswith(tag_prefix) for t in n.record.tags)]
        return sorted(nodes, key=lambda n: (n.record.host_group, n.record.created_at, n.hostname))

    # -- changes -------------------------------------------------------------------------------
    async def create_node(
        self, group_name: str, request: NodeRequest, *, wait: str | None = None, timeout: float = 300.0
    ) -> Node:
        group = self.group(group_name)
        self._check_ceilings(group, request)
        node = await self._launch(group, request)
        if wait is not None:
            try:
                await node.wait_ready(timeout, userdata=wait == "userdata")
            except SlicerError as exc:
                await self._destroy(node)
                self._count_launch(group.name, "408" if isinstance(exc, Timeout) else "503")
                raise
        self._count_launch(group.name, "200")
        return node

    def _check_ceilings(self, group: HostGroup, request: NodeRequest) -> None:
        ceiling = group.config
        if request.cpus is not None and not 1 <= request.cpus <= ceiling.vcpu:
            raise InvalidArgument(
                f"cpus: {request.cpus} is outside 1..{ceiling.vcpu} for host group {group.name}", code="cpus"
            )
        if request.ram_bytes is not None and not MIN_RAM_BYTES <= request.ram_bytes <= ceiling.ram_bytes:
            raise InvalidArgument(
                f"ram_bytes: {request.ram_bytes} is outside {MIN_RAM_BYTES}..{ceiling.ram_bytes} "
                f"for host group {group.name}",
                code="ram_bytes",
            )
        if request.userdata is not None and len(request.userdata.encode()) > MAX_USERDATA_BYTES:
            raise InvalidArgument(f"userdata: larger than {MAX_USERDATA_BYTES // 1024} KiB", code="userdata")
        if request.hostname is not None and not HOSTNAME_RE.fullmatch(request.hostname):
            raise InvalidArgument(f"hostname: {request.hostname!r} is not a valid hostname", code="hostname")

    def _count_launch(self, group: str, code: str) -> None:
        self.launch_counts[(group, code)] = self.launch_counts.get((group, code), 0) + 1

    async def _launch(
        self,
        group: HostGroup,
        request: NodeRequest,
        *,
        service: bool = False,
        record: NodeRecord | None = None,
    ) -> Node:
        assert self.image is not None and self.registry is not None
        config = group.config
        async with self._lock:
            if request.hostname is not None and request.hostname in self.nodes:
                raise InvalidArgument(f"hostname: {request.hostname!r} is already in use", code="hostname")
            hostname = request.hostname or group.new_hostname(set(self.nodes))
            if record is None:
                record = NodeRecord(
                    hostname=hostname,
                    host_group=group.name,
                    cpus=request.cpus or config.vcpu,
                    ram_bytes=request.ram_bytes or config.ram_bytes,
                    disk_bytes=config.storage_size or 0,
                    created_at=utc_now(),
                    protected=service,
                    persistent=config.persistent if service or request.persistent is None else request.persistent,
                    userdata=request.userdata if request.userdata is not None else config.userdata,
                    tags=list(request.tags),
                )
            run_dir = self._run_root / hostname
            taken = {lease.address.ip.compressed for lease in self.leases.values()}
            lease = await group.network.lease(hostname, next(group.taps), taken, wanted=record.ip)
            self.leases[hostname] = lease
            record.ip = str(lease.address.ip)
            spec = VMSpec(
                name=hostname,
                vcpus=record.cpus,
                ram_bytes=record.ram_bytes,
                kernel=self.config.kernel_file or self.image.kernel,
                initrd=self.image.initrd,
                disk=self.disk_path(hostname),
                run_dir=run_dir,
                console_log=self.console_path(hostname),
                kernel_args={"slicer.hostname": hostname, **lease.kernel_args},
                nic=Nic(tap=lease.tap, mac=lease.mac, netns=lease.netns),
            )
            node = Node(record, spec)
            node.on_stopped = self._on_node_stopped
            self.nodes[hostname] = node
        try:
            if not spec.disk.exists():
                await create_overlay(await self._pinned_base(), spec.disk, record.disk_bytes or None)
            await self.registry.put(record)
            shutil.rmtree(run_dir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                spec.console_log.unlink()
            node.attach(await self.hypervisor.launch(spec))
        except BaseException:
            self._count_launch(group.name, "500")
            await self._destroy(node)
            raise
        return node

    async def _pinned_base(self) -> Path:
        """The base rootfs under a name that is its content, so rebuilding the image never changes the
        base beneath an existing overlay (which would corrupt that disk)."""
        assert self.image is not None
        digest = str(self.image.manifest["outputs"]["rootfs.ext4"]["sha256"])[:16]
        pinned = self.image.rootfs.parent.parent / "bases" / f"rootfs-{digest}.ext4"
        if not pinned.exists():
            pinned.parent.mkdir(exist_ok=True)
            staging = pinned.with_name(f".{pinned.name}.{os.getpid()}")
            await asyncio.to_thread(os.link, self.image.rootfs, staging)
            os.replace(staging, pinned)
        return pinned

    async def _on_node_stopped(self, node: Node) -> None:
        shutil.rmtree(node.spec.run_dir, ignore_errors=True)
        await self._release_lease(node)

    async def _release_lease(self, node: Node) -> None:
        lease = self.leases.pop(node.hostname, None)
        if lease is not None:
            await self.groups[node.record.host_group].network.release(lease.tap)

    async def delete_node(self, group_name: str, hostname: str) -> bool:
        node = self.node(hostname)
        if node.record.host_group != group_name or node.state is NodeState.DELETED:
            raise NotFound(f"VM {hostname!r} not found in host group {group_name!r}", code="vm_not_found")
        if node.record.protected:
            raise PermissionDenied(
                f"{hostname} was launched from the config file and is protected from API deletion",
                code="protected",
            )
        await self._destroy(node)
        return True

    async def _destroy(self, node: Node) -> None:
        if node.state is not NodeState.DELETED:
            node.transition(NodeState.DELETED)
        await node.stop()
        shutil.rmtree(node.spec.run_dir, ignore_errors=True)
        await self._release_lease(node)
        await self._forget(node)

    async def _forget(self, node: Node) -> None:
        if self.nodes.get(node.hostname) is node:
            del self.nodes[node.hostname]
        remove_disk(node.spec.disk)
        with contextlib.suppress(FileNotFoundError):
            node.spec.console_log.unlink()
        if self.registry is not None:
            await self.registry.remove(node.hostname)

    # -- info ----------------------------------------------------------------------------------
    def info(self) -> dict[str, str]:
        return {
            "version": __version__,
            "git_commit": os.environ.get("PYSLICER_GIT_COMMIT", ""),
            "platform": "linux",
            "arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(machine_arch(), machine_arch()),
            "hypervisor": self.hypervisor.name,
            "accel": self.accel,
            "accel_reason": self.accel_reason,
        }
