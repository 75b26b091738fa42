"""The fleet: every node of every host group on this host, and the one place nodes are launched,
recovered after a restart, stopped and destroyed."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import shutil
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from pyslicer.daemon.data_dir import DataDir
from pyslicer.daemon.host_groups import HostGroup, NodeRequest
from pyslicer.daemon.lifecycle import NodeState
from pyslicer.daemon.node import Node
from pyslicer.daemon.registry import NodeRecord, Registry
from pyslicer.daemon.secrets import check_grant
from pyslicer.daemon.storage import create_overlay, remove_disk
from pyslicer.daemon.timestamps import utc_now
from pyslicer.errors import InvalidArgument, NotFound, SlicerError, Timeout
from pyslicer.image import GuestImage
from pyslicer.image.manifest import image_label
from pyslicer.net import Lease
from pyslicer.vmm import Hypervisor, Nic, VMSpec

log = logging.getLogger(__name__)

GRACEFUL_STOP_SECONDS = 20.0


class LaunchOutcome(enum.StrEnum):
    """How a create ended, for the launch counter."""

    CREATED = "created"
    TIMED_OUT = "timed_out"
    NOT_READY = "not_ready"  # the VM stopped or its agent failed before it was ready
    FAILED = "failed"  # the VM could not be launched at all


class Fleet:
    def __init__(
        self,
        groups: Mapping[str, HostGroup],
        data_dir: DataDir,
        hypervisor: Hypervisor,
        image: GuestImage,
        registry: Registry,
        *,
        kernel: Path | None = None,
        on_agent_ready: Callable[[Node], Awaitable[None]] | None = None,
    ) -> None:
        self.groups = groups
        self.data_dir = data_dir
        self.hypervisor = hypervisor
        self.image = image
        self.registry = registry
        self.kernel = kernel or image.kernel
        self.on_agent_ready = on_agent_ready
        self.nodes: dict[str, Node] = {}
        self.leases: dict[str, Lease] = {}
        self.launch_counts: dict[tuple[str, LaunchOutcome], int] = {}
        self._lock = asyncio.Lock()

    def node(self, hostname: str) -> Node:
        """Raises NotFound for a hostname that is not (or no longer) here."""
        node = self.nodes.get(hostname)
        if node is None or node.state is NodeState.DELETED:
            raise NotFound(f"VM {hostname!r} not found", code="vm_not_found")
        return node

    def count(self, group: str, outcome: LaunchOutcome) -> None:
        self.launch_counts[(group, outcome)] = self.launch_counts.get((group, outcome), 0) + 1

    # -- launching -----------------------------------------------------------------------------
    async def launch_services(self) -> None:
        """The config's VMs that are not running yet."""
        for group in self.groups.values():
            for index in range(1, group.config.count + 1):
                hostname = f"{group.name}-{index}"
                if hostname not in self.nodes:
                    await self.launch(group, NodeRequest(hostname=hostname), service=True)
            group.next_index = max(group.next_index, group.config.count + 1)

    async def create(self, group: HostGroup, request: NodeRequest, *, wait: str | None, timeout: float) -> Node:
        """Launch a node and, when asked, wait for its agent (``wait="agent"``) or its userdata.

        Raises InvalidArgument for a request beyond the group's ceilings or a hostname in use, Timeout
        when the wait runs out and AgentError when the VM stops first (the node is removed in both
        cases), HypervisorError or NetworkError when it cannot be launched."""
        group.check(request)
        node = await self.launch(group, request)
        if wait is not None:
            try:
                await node.wait_ready(timeout, userdata=wait == "userdata")
            except SlicerError as exc:
                await self.destroy(node)
                self.count(group.name, LaunchOutcome.TIMED_OUT if isinstance(exc, Timeout) else LaunchOutcome.NOT_READY)
                raise
        self.count(group.name, LaunchOutcome.CREATED)
        return node

    async def launch(
        self,
        group: HostGroup,
        request: NodeRequest,
        *,
        service: bool = False,
        record: NodeRecord | None = None,
    ) -> Node:
        """Start a node's VM (its agent connects in the background). Raises InvalidArgument for a
        hostname in use, HypervisorError or NetworkError when the VM cannot be started (nothing of it is left)."""
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
                    secrets=list(check_grant(request.secrets)) if request.secrets is not None else None,
                    image=image_label(self.image.manifest),
                )
            taken = {lease.address.ip.compressed for lease in self.leases.values()}
            lease = await group.network.lease(hostname, next(group.taps), taken, wanted=record.ip)
            self.leases[hostname] = lease
            record.ip = str(lease.address.ip)
            spec = VMSpec(
                name=hostname,
                vcpus=record.cpus,
                ram_bytes=record.ram_bytes,
                kernel=self.kernel,
                initrd=self.image.initrd,
                disk=self.data_dir.disk(hostname),
                run_dir=self.data_dir.run_dir(hostname),
                console_log=self.data_dir.console_log(hostname),
                kernel_args={"slicer.hostname": hostname, **lease.kernel_args},
                nic=Nic(tap=lease.tap, mac=lease.mac, netns=lease.netns),
            )
            node = Node(record, spec)
            node.on_stopped = self._on_node_stopped
            node.on_agent_ready = self.on_agent_ready
            self.nodes[hostname] = node
        try:
            if not spec.disk.exists():
                await create_overlay(await self.data_dir.pinned_base(self.image), spec.disk, record.disk_bytes or None)
            await self.registry.put(record)
            shutil.rmtree(spec.run_dir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                spec.console_log.unlink()
            node.attach(await self.hypervisor.launch(spec))
        except BaseException:
            self.count(group.name, LaunchOutcome.FAILED)
            await self.destroy(node)
            raise
        return node

    async def recover(self) -> None:
        """Disks of ephemeral nodes left by a daemon that did not stop cleanly are removed;
        persistent sandboxes come back."""
        for record in await self.registry.all():
            group = self.groups.get(record.host_group)
            if record.persistent and group is not None and not record.protected:
                await self.launch(group, NodeRequest(hostname=record.hostname), record=record)
            elif not record.persistent or group is None:
                remove_disk(self.data_dir.disk(record.hostname))
                await self.registry.remove(record.hostname)

    # -- stopping ------------------------------------------------------------------------------
    async def stop_all(self) -> None:
        """Stop every node: persistent ones shut down cleanly and keep their disks, the rest are removed."""
        await asyncio.gather(*(self._shut_down(node) for node in list(self.nodes.values())), return_exceptions=True)

    async def _shut_down(self, node: Node) -> None:
        await node.stop(graceful_timeout=GRACEFUL_STOP_SECONDS if node.record.persistent else 0)
        await self._release_lease(node)
        shutil.rmtree(node.spec.run_dir, ignore_errors=True)
        if not node.record.persistent:
            await self._forget(node)

    async def destroy(self, node: Node) -> None:
        """Stop the node's VM and remove everything of it: disk, log, address, record."""
        if node.state is not NodeState.DELETED:
            node.transition(NodeState.DELETED)
        await node.stop()
        shutil.rmtree(node.spec.run_dir, ignore_errors=True)
        await self._release_lease(node)
        await self._forget(node)

    async def _on_node_stopped(self, node: Node) -> None:
        shutil.rmtree(node.spec.run_dir, ignore_errors=True)
        await self._release_lease(node)

    async def _release_lease(self, node: Node) -> None:
        lease = self.leases.pop(node.hostname, None)
        if lease is not None:
            await self.groups[node.record.host_group].network.release(lease.tap)

    async def _forget(self, node: Node) -> None:
        if self.nodes.get(node.hostname) is node:
            del self.nodes[node.hostname]
        remove_disk(node.spec.disk)
        with contextlib.suppress(FileNotFoundError):
            node.spec.console_log.unlink()
        await self.registry.remove(node.hostname)
