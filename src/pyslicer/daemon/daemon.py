"""The daemon: every operation the API (or any other caller) can ask of this host, typed in and out.

It composes the data dir, the host groups and the fleet; it holds no HTTP. Each public method says
what it raises; ``pyslicer.api.errors`` maps those errors to statuses.
"""

from __future__ import annotations

import asyncio
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyslicer import __version__
from pyslicer.config import SlicerConfig
from pyslicer.daemon.background import BackgroundExecs
from pyslicer.daemon.console import MAX_CONSOLE_LOG_BYTES, tail_lines, trim_log
from pyslicer.daemon.copy import CopyDownload, CopyInRequest, CopyOutRequest, CopyUpload
from pyslicer.daemon.data_dir import DataDir
from pyslicer.daemon.exec import ExecProcess, ExecRequest
from pyslicer.daemon.fleet import Fleet, LaunchOutcome
from pyslicer.daemon.fs import GuestFilesystem
from pyslicer.daemon.host_groups import HostGroup, NodeRequest, host_groups
from pyslicer.daemon.node import AgentHealth, Node
from pyslicer.daemon.registry import Registry
from pyslicer.daemon.secrets import NewSecret, SecretChange, SecretInfo, Secrets
from pyslicer.errors import InvalidArgument, NotFound, PermissionDenied
from pyslicer.image import ensure_image
from pyslicer.net import NetworkNamespace
from pyslicer.vmm import Hypervisor

CONSOLE_CHECK_SECONDS = 5.0


def machine_arch() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


@dataclass(frozen=True, slots=True)
class DaemonInfo:
    version: str
    git_commit: str
    platform: str
    arch: str  # Go's names: amd64, arm64
    hypervisor: str
    accel: str
    accel_reason: str


class Daemon:
    def __init__(
        self,
        config: SlicerConfig,
        data_dir: Path,
        hypervisor: Hypervisor,
        *,
        progress: Callable[[str], None] = print,
    ) -> None:
        """Raises ConfigError for a config this daemon cannot run."""
        self.config = config
        self.progress = progress
        self.data_dir = DataDir(data_dir)
        self.hypervisor = hypervisor
        self.netns = NetworkNamespace(self.data_dir.path)
        self.groups = host_groups(config, self.netns)
        self.token: str | None = None
        self._fleet: Fleet | None = None
        self._registry: Registry | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self.secrets = Secrets(self.data_dir.secrets_dir, lambda: list(self.nodes.values()))

    # -- start and stop ------------------------------------------------------------------------
    async def start(self) -> None:
        """Hold the data dir, build the guest image if needed, set up the networks, bring back the
        persistent sandboxes and launch the config's services. Raises ConfigError when another daemon
        holds the data dir, ImageError, NetworkError or HypervisorError when a part cannot be set up."""
        self.data_dir.hold()
        self.token = await asyncio.to_thread(self.data_dir.load_token)
        await self.secrets.open()
        self.progress(f"accel {self.hypervisor.accel_reason}")
        image = await ensure_image(self.data_dir.path, progress=self.progress)
        await self.netns.create()
        for group in self.groups.values():
            await group.network.create()
        self._registry = await Registry.open(self.data_dir.path / "state.db")
        self._fleet = Fleet(
            self.groups,
            self.data_dir,
            self.hypervisor,
            image,
            self._registry,
            kernel=self.config.kernel_file,
            on_agent_ready=self.secrets.sync_at_ready,
        )
        await self._fleet.recover()
        await self._fleet.launch_services()
        self._housekeeping = asyncio.get_running_loop().create_task(self._keep_logs_bounded())

    async def stop(self) -> None:
        """Stop every VM (persistent ones cleanly), remove the sandboxes and the networks, release the
        data dir. Does nothing for a daemon that never started."""
        if not self.data_dir.held:
            return  # everything on the data dir belongs to someone else, or to nobody yet
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self._fleet is not None:
            await self._fleet.stop_all()
        await self.secrets.close()
        if self._registry is not None:
            await self._registry.close()
            self._registry = None
        await self.netns.delete()
        self.data_dir.release()

    async def _keep_logs_bounded(self) -> None:
        while True:
            await asyncio.sleep(CONSOLE_CHECK_SECONDS)
            for node in list(self.nodes.values()):
                await asyncio.to_thread(trim_log, node.spec.console_log, MAX_CONSOLE_LOG_BYTES)

    @property
    def fleet(self) -> Fleet:
        if self._fleet is None:
            raise RuntimeError("the daemon has not started")
        return self._fleet

    # -- what is here --------------------------------------------------------------------------
    @property
    def nodes(self) -> dict[str, Node]:
        return self._fleet.nodes if self._fleet is not None else {}

    @property
    def launch_counts(self) -> dict[tuple[str, LaunchOutcome], int]:
        return self._fleet.launch_counts if self._fleet is not None else {}

    def info(self) -> DaemonInfo:
        arch = machine_arch()
        return DaemonInfo(
            version=__version__,
            git_commit=os.environ.get("PYSLICER_GIT_COMMIT", ""),
            platform="linux",
            arch={"x86_64": "amd64", "aarch64": "arm64"}.get(arch, arch),
            hypervisor=self.hypervisor.name,
            accel=self.hypervisor.accel,
            accel_reason=self.hypervisor.accel_reason,
        )

    def group(self, name: str) -> HostGroup:
        """Raises NotFound for an unknown host group."""
        try:
            return self.groups[name]
        except KeyError:
            raise NotFound(f"host group {name!r} not found", code="hostgroup_not_found") from None

    def node(self, hostname: str) -> Node:
        """Raises NotFound for an unknown (or deleted) VM."""
        return self.fleet.node(hostname)

    def list_nodes(self, group: str | None = None, tag: str | None = None, tag_prefix: str | None = None) -> list[Node]:
        """Nodes of one group (NotFound when it does not exist) or of all, filtered by an exact tag or a
        tag prefix (InvalidArgument for both at once)."""
        if group is not None:
            self.group(group)
        if tag is not None and tag_prefix is not None:
            raise InvalidArgument("only one of tag and tag_prefix may be set", code="invalid_filter")
        nodes = [n for n in self.nodes.values() if group is None or n.record.host_group == group]
        if tag is not None:
            nodes = [n for n in nodes if tag in n.record.tags]
        if tag_prefix is not None:
            nodes = [n for n in nodes if any(t.startswith(tag_prefix) for t in n.record.tags)]
        return sorted(nodes, key=lambda n: (n.record.host_group, n.record.created_at, n.hostname))

    # -- nodes ---------------------------------------------------------------------------------
    async def create_node(
        self, group_name: str, request: NodeRequest, *, wait: str | None = None, timeout: float = 300.0
    ) -> Node:
        """Launch a node into a host group; with ``wait`` ("agent" or "userdata"), return once it is
        ready. Raises NotFound for an unknown group, InvalidArgument for a request beyond its ceilings
        or a hostname in use, Timeout or AgentError when the wait fails (the node is removed),
        HypervisorError or NetworkError when it cannot be launched."""
        return await self.fleet.create(self.group(group_name), request, wait=wait, timeout=timeout)

    async def delete_node(self, group_name: str, hostname: str) -> None:
        """Stop a node and remove its disk. Raises NotFound when it is not in that group,
        PermissionDenied for a service from the config."""
        node = self.node(hostname)
        if node.record.host_group != group_name:
            raise NotFound(f"VM {hostname!r} not found in host group {group_name!r}", code="vm_not_found")
        if node.record.protected:
            raise PermissionDenied(
                f"{hostname} was launched from the config file and is protected from API deletion",
                code="protected",
            )
        await self.fleet.destroy(node)

    # -- inside a node -------------------------------------------------------------------------
    async def agent_health(self, hostname: str) -> AgentHealth:
        """Raises NotFound, Conflict when the VM is not running, AgentError when its agent does not answer."""
        return await self.node(hostname).health()

    def check_agent(self, hostname: str) -> None:
        """Return when the node's agent is connected. Raises NotFound, Conflict or AgentError."""
        self.node(hostname).agent()

    async def console_log(self, hostname: str, lines: int) -> str:
        """The last ``lines`` lines of the serial console (all of it, capped, for 0). Raises NotFound."""
        node = self.node(hostname)
        return await asyncio.to_thread(tail_lines, node.spec.console_log, lines)

    def exec(self, hostname: str, request: ExecRequest) -> ExecProcess:
        """Start a command in a node. Raises NotFound, Conflict when the VM is not running, AgentError
        when its agent is not reachable, InvalidArgument when the request does not fit one frame."""
        return self.node(hostname).exec(request)

    # -- secrets -------------------------------------------------------------------------------
    async def list_secrets(self) -> list[SecretInfo]:
        """Every stored secret's metadata (never a value). Raises nothing."""
        return await self.secrets.infos()

    async def create_secret(self, spec: NewSecret) -> SecretInfo:
        """Store a secret and sync it into the running guests granted it (a guest that fails catches up at
        its next READY). Raises Conflict when it exists, Unavailable when the store is full."""
        return await self.secrets.create(spec)

    async def update_secret(self, name: str, change: SecretChange) -> SecretInfo:
        """Change a secret's value and/or owner and mode, and sync it. Raises InvalidArgument for a bad
        name, NotFound, Unavailable when the store is full."""
        return await self.secrets.update(name, change)

    async def delete_secret(self, name: str) -> None:
        """Remove a secret from the store and from the guests. Raises InvalidArgument for a bad name, NotFound."""
        await self.secrets.delete(name)

    def copy_in(self, hostname: str, request: CopyInRequest) -> CopyUpload:
        """Start an upload into a node (feed it, then ``finish``). Raises NotFound, Conflict when the VM is not
        running, AgentError when its agent is not reachable."""
        return CopyUpload(self.node(hostname).agent().open(request.to_wire()))

    async def copy_out(self, hostname: str, request: CopyOutRequest) -> CopyDownload:
        """Start a download from a node, once the guest has said what it sends. Raises NotFound (the VM, or
        the path: code ``path_not_found``), InvalidArgument for a path the mode cannot send, Conflict when
        the VM is not running, AgentError when its agent is not reachable."""
        return await CopyDownload.open(self.node(hostname).agent().open(request.to_wire()))

    def filesystem(self, hostname: str) -> GuestFilesystem:
        """The filesystem of a running node, through its agent. Raises NotFound, Conflict when the VM is not
        running, AgentError when its agent is not reachable."""
        return GuestFilesystem(self.node(hostname).agent(), hostname)

    def background(self, hostname: str) -> BackgroundExecs:
        """The background execs of a running node, kept by its agent. Raises NotFound, Conflict when the VM is
        not running, AgentError when its agent is not reachable."""
        return BackgroundExecs(self.node(hostname).agent(), hostname)
