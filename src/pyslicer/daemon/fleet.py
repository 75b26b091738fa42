"""The fleet: every node of every host group on this host, and the one place nodes are launched,
recovered after a restart, stopped and destroyed."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
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
from pyslicer.errors import Conflict, HypervisorError, InvalidArgument, NotFound, SlicerError, Timeout
from pyslicer.image import GuestImage
from pyslicer.image.manifest import image_label
from pyslicer.net import Lease, NetworkNamespace, Policy, VMPolicy, parse_cidrs
from pyslicer.vmm import Hypervisor, Nic, ProcessIdentity, VMSpec

log = logging.getLogger(__name__)

GRACEFUL_STOP_SECONDS = 20.0


class LaunchOutcome(enum.StrEnum):
    """How a create ended, for the launch counter."""

    CREATED = "created"
    TIMED_OUT = "timed_out"
    NOT_READY = "not_ready"  # the VM stopped or its agent failed before it was ready
    FAILED = "failed"  # the VM could not be launched at all


def _cidrs(entries: tuple[str, ...] | None, field: str) -> list[str] | None:
    return [str(net) for net in parse_cidrs(entries, f"network.{field}")] if entries is not None else None


class Fleet:
    def __init__(
        self,
        groups: Mapping[str, HostGroup],
        data_dir: DataDir,
        hypervisor: Hypervisor,
        image: GuestImage,
        registry: Registry,
        netns: NetworkNamespace,
        policy: Policy,
        *,
        kernel: Path | None = None,
        on_agent_ready: Callable[[Node], Awaitable[None]] | None = None,
    ) -> None:
        self.groups = groups
        self.data_dir = data_dir
        self.hypervisor = hypervisor
        self.image = image
        self.registry = registry
        self.netns = netns  # every group's network is in it
        self.policy = policy
        self.kernel = kernel or image.kernel
        self.on_agent_ready = on_agent_ready
        self.nodes: dict[str, Node] = {}
        self.leases: dict[str, Lease] = {}
        self.launch_counts: dict[tuple[str, LaunchOutcome], int] = {}
        self.retired: set[str] = set()  # kept disks of VMs whose host group left the config: names still taken
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

    async def launch(self, group: HostGroup, request: NodeRequest, *, service: bool = False) -> Node:
        """Start a new node's VM (its agent connects in the background). Raises InvalidArgument for a
        hostname in use, HypervisorError or NetworkError when the VM cannot be started (nothing of it is left)."""
        config = group.config
        async with self._lock:
            taken = self.nodes.keys() | self.retired
            if request.hostname is not None and request.hostname in taken:
                raise InvalidArgument(f"hostname: {request.hostname!r} is already in use", code="hostname")
            hostname = request.hostname or group.new_hostname(taken)
            if request.ip is not None:
                group.network.check_wanted(request.ip, self._addresses_taken(None))
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
                ip=request.ip or "",
                network_allow=_cidrs(request.allow, "allow"),
                network_drop=_cidrs(request.drop, "drop"),
                ssh_keys=list(request.ssh_keys),
            )
            node = self._add(record)
        await self._boot(node, failed=LaunchOutcome.FAILED)
        return node

    def _add(self, record: NodeRecord, lease: Lease | None = None) -> Node:
        node = Node(record, self._spec(record, lease))
        node.on_stopped = self._on_node_stopped
        node.on_agent_ready = self.on_agent_ready
        self.nodes[record.hostname] = node
        return node

    def _spec(self, record: NodeRecord, lease: Lease | None) -> VMSpec:
        hostname = record.hostname
        return VMSpec(
            name=hostname,
            vcpus=record.cpus,
            ram_bytes=record.ram_bytes,
            kernel=self.kernel,
            initrd=self.image.initrd,
            disk=self.data_dir.disk(hostname),
            run_dir=self.data_dir.run_dir(hostname),
            console_log=self.data_dir.console_log(hostname),
            kernel_args={"slicer.hostname": hostname, **(lease.kernel_args if lease is not None else {})},
            nic=Nic(tap=lease.tap, mac=lease.mac, netns=lease.netns) if lease is not None else None,
        )

    async def _boot(self, node: Node, *, failed: LaunchOutcome | None = None) -> None:
        """Give a node an address and start its VM from its disk (made first for a new node). A new node
        (``failed`` set) that cannot be started is destroyed; a stopped one stays stopped. Raises
        HypervisorError or NetworkError."""
        record = node.record
        group = self.groups[record.host_group]
        try:
            async with self._lock:
                taken = self._addresses_taken(node)
                lease = await group.network.lease(record.hostname, next(group.taps), taken, wanted=record.ip)
                self.leases[record.hostname] = lease
            record.ip, record.tap = str(lease.address.ip), lease.tap
            await self.policy.add(self.vm_policy(record, lease))
            node.spec = spec = self._spec(record, lease)
            if not spec.disk.exists():
                await create_overlay(await self.data_dir.pinned_base(self.image), spec.disk, record.disk_bytes or None)
            await self.registry.put(record)
            shutil.rmtree(spec.run_dir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                spec.console_log.unlink()
            vm = await self.hypervisor.launch(spec)
            try:
                node.attach(vm)  # (Conflict if the node was deleted meanwhile)
            except BaseException:
                await vm.kill()
                raise
            record.vmm_pid, record.vmm_started = vm.identity.pid, vm.identity.start_time
            record.stopped = False
            await self.registry.put(record)
        except BaseException:
            if failed is not None:
                self.count(record.host_group, failed)
                await self.destroy(node)
            else:
                await self._release_lease(node)
                shutil.rmtree(node.spec.run_dir, ignore_errors=True)
            raise

    def _addresses_taken(self, node: Node | None) -> set[str]:
        """Addresses no other VM may take: those of running VMs, and those kept by stopped persistent ones."""
        taken = {
            lease.address.ip.compressed for name, lease in self.leases.items() if node is None or name != node.hostname
        }
        taken |= {other.record.ip for other in self.nodes.values() if other is not node and other.record.ip}
        return taken

    def vm_policy(self, record: NodeRecord, lease: Lease) -> VMPolicy:
        """The VM's effective allow/drop lists: its own where its create gave them, else its group's."""
        network = self.groups[record.host_group].network
        return VMPolicy(
            hostname=record.hostname,
            lease=lease,
            group=network,
            allow=parse_cidrs(record.network_allow, "allow") if record.network_allow is not None else network.allow,
            drop=parse_cidrs(record.network_drop, "drop") if record.network_drop is not None else network.drop,
        )

    # -- lifecycle -----------------------------------------------------------------------------
    async def shut_down(self, node: Node, *, timeout: float = GRACEFUL_STOP_SECONDS) -> None:
        """Stop a node's guest cleanly (killed after ``timeout``). A persistent VM or a service ends Stopped
        with its disk; an ephemeral sandbox is removed with its disk (as on Slicer) and ends Deleted. Raises
        Conflict when it is not running or paused."""
        await node.shut_down(timeout)
        await self._stopped(node, on_purpose=True)

    async def relaunch(self, node: Node) -> None:
        """Boot a stopped node again from its disk. Raises Conflict unless it is stopped, HypervisorError or
        NetworkError when it cannot be started (it stays stopped)."""
        async with node.lifecycle:
            if node.state is not NodeState.STOPPED:
                raise Conflict(f"cannot relaunch {node.hostname}: it is {node.state.value}", code="invalid_state")
            await self._boot(node)

    async def _on_node_stopped(self, node: Node) -> None:
        await self._stopped(node, on_purpose=False)

    async def _stopped(self, node: Node, *, on_purpose: bool) -> None:
        """After a node's VM has ended: what belongs to the run goes; a sandbox that is not persistent goes too."""
        shutil.rmtree(node.spec.run_dir, ignore_errors=True)
        await self._release_lease(node)
        record = node.record
        record.end_run()
        if not record.persistent and not record.protected:
            why = "shut down" if on_purpose else "its VM ended"
            log.info("%s: %s; an ephemeral sandbox goes with its disk", node.hostname, why)
            node.transition(NodeState.DELETED)
            await self._forget(node)
            return
        record.stopped = True
        await self.registry.put(record)

    # -- a restart -----------------------------------------------------------------------------
    async def recover(self) -> None:
        """Take over what an earlier daemon on this data dir left: VMs still running are adopted (the guests
        notice nothing), persistent ones that are not come back (stopped ones stay stopped), the disks of
        ephemeral sandboxes whose VM is gone are removed, VMs whose host group (or service entry) left the
        config are shut down cleanly with their disks kept, and whatever no record owns is removed."""
        records = await self.registry.all()
        for record in records:
            group = self.groups.get(record.host_group)
            if group is None or (record.protected and not self._is_configured_service(group, record.hostname)):
                await self._retire(record)
                continue
            if record.vmm_pid and await self._adopt(group, record):
                continue
            if not record.persistent:  # (a service of a group that is not persistent is launched afresh)
                log.info("%s: its VM is gone; removing its disk, which does not persist", record.hostname)
                self._remove_files(record.hostname)
                await self.registry.remove(record.hostname)
                continue
            record.end_run()
            node = self._add(record)
            if record.stopped and not record.protected:  # services run whenever the config lists them
                node.transition(NodeState.STOPPED)
                continue
            try:
                await self._boot(node)
            except SlicerError as exc:  # reported; it stays stopped and can be relaunched
                log.error("%s: cannot start it again: %s", record.hostname, exc)
                node.transition(NodeState.STOPPED)
        for group in self.groups.values():
            indexes = [group.network.tap_index(lease.tap) for lease in self.leases.values()]
            group.taps = itertools.count(max([index for index in indexes if index is not None], default=0) + 1)
        await self._sweep({record.hostname for record in await self.registry.all()})
        # One transaction replaces what an earlier daemon left: the VMs adopted keep their rules throughout.
        await self.policy.install(
            [
                self.vm_policy(self.nodes[name].record, lease)
                for name, lease in self.leases.items()
                if name in self.nodes
            ]
        )

    @staticmethod
    def _is_configured_service(group: HostGroup, hostname: str) -> bool:
        return hostname in {f"{group.name}-{index}" for index in range(1, group.config.count + 1)}

    async def _adopt(self, group: HostGroup, record: NodeRecord) -> bool:
        identity = ProcessIdentity(record.vmm_pid, record.vmm_started)
        lease = group.network.adopt(record.hostname, record.tap, record.ip)
        spec = self._spec(record, lease)
        try:
            if lease is None:
                raise HypervisorError(f"its tap {record.tap!r} or address {record.ip!r} is not its group's")
            vm = await self.hypervisor.adopt(spec, identity)
        except HypervisorError as exc:
            log.warning("%s: not adopted: %s", record.hostname, exc)
            # Whatever still runs there must go before its disk is booted again.
            await self.hypervisor.reclaim(spec.run_dir)
            return False
        try:
            paused = await vm.paused()
        except HypervisorError as exc:
            log.warning("%s: not adopted, its QEMU does not answer: %s", record.hostname, exc)
            await vm.kill()
            return False
        self.leases[record.hostname] = lease
        node = self._add(record, lease)
        node.attach(vm, paused=paused)
        log.info("%s: adopted its running VM (pid %d%s)", record.hostname, identity.pid, ", paused" if paused else "")
        return True

    async def _retire(self, record: NodeRecord) -> None:
        """A VM whose config entry is gone: shut down cleanly if it still runs; its disk and record are kept."""
        if record.vmm_pid:
            spec = self._spec(record, None)
            try:
                vm = await self.hypervisor.adopt(spec, ProcessIdentity(record.vmm_pid, record.vmm_started))
            except HypervisorError:
                pass
            else:
                node = Node(record, spec)
                node.attach(vm)
                with contextlib.suppress(HypervisorError):
                    if await vm.paused():
                        await vm.resume()
                with contextlib.suppress(SlicerError):
                    await node.wait_ready(GRACEFUL_STOP_SECONDS, userdata=False)
                await node.stop(graceful_timeout=GRACEFUL_STOP_SECONDS)
            shutil.rmtree(spec.run_dir, ignore_errors=True)  # (its tap goes in the sweep)
        record.end_run()
        record.stopped = True
        await self.registry.put(record)
        self.retired.add(record.hostname)
        log.warning(
            "%s: host group %r (or its service entry) is no longer in the config: the VM is shut down and its disk "
            "kept at %s",
            record.hostname,
            record.host_group,
            self.data_dir.disk(record.hostname),
        )

    async def _sweep(self, recorded: set[str]) -> None:
        """Remove what no record owns: VMs an earlier daemon started but never recorded, run dirs, taps,
        disks and logs."""
        running = {hostname for hostname, node in self.nodes.items() if node.vm is not None}
        for run_dir in self.data_dir.run_dirs():
            if run_dir.name not in running:
                await self.hypervisor.reclaim(run_dir)
                shutil.rmtree(run_dir, ignore_errors=True)
        owned = {lease.tap for lease in self.leases.values()}
        ours = {
            tap
            for tap in await self.netns.taps()
            if not self.netns.host or any(g.network.tap_index(tap) is not None for g in self.groups.values())
        }
        for tap in ours - owned:
            log.info("removing tap %s: no VM owns it", tap)
            await self.netns.remove_link(tap)
        for hostname in self.data_dir.disk_owners() - recorded:
            log.warning("%s: removing its disk and log: no record owns them", hostname)
            self._remove_files(hostname)

    def _remove_files(self, hostname: str) -> None:
        remove_disk(self.data_dir.disk(hostname))
        with contextlib.suppress(FileNotFoundError):
            self.data_dir.console_log(hostname).unlink()
        shutil.rmtree(self.data_dir.run_dir(hostname), ignore_errors=True)

    # -- stopping ------------------------------------------------------------------------------
    async def stop_all(self) -> None:
        """Stop every node: persistent ones shut down cleanly and keep their disks (and come back at the next
        start unless they were stopped), the rest are removed."""
        await asyncio.gather(*(self._shut_down(node) for node in list(self.nodes.values())), return_exceptions=True)

    async def _shut_down(self, node: Node) -> None:
        await node.stop(graceful_timeout=GRACEFUL_STOP_SECONDS if node.record.persistent else 0)
        await self._release_lease(node)
        shutil.rmtree(node.spec.run_dir, ignore_errors=True)
        if not node.record.persistent:
            await self._forget(node)
        elif node.record.vmm_pid:
            node.record.end_run()
            await self.registry.put(node.record)

    async def detach_all(self) -> None:
        """Let go of every VM and leave it running, for the next daemon on this data dir to adopt."""
        await asyncio.gather(*(node.detach() for node in list(self.nodes.values())), return_exceptions=True)

    async def destroy(self, node: Node) -> None:
        """Stop the node's VM and remove everything of it: disk, log, address, record."""
        if node.state is not NodeState.DELETED:
            node.transition(NodeState.DELETED)
        await node.stop()
        shutil.rmtree(node.spec.run_dir, ignore_errors=True)
        await self._release_lease(node)
        await self._forget(node)

    async def _release_lease(self, node: Node) -> None:
        lease = self.leases.pop(node.hostname, None)
        if lease is not None:
            network = self.groups[node.record.host_group].network
            await self.policy.remove(node.hostname, lease, network)
            await network.release(lease.tap)

    async def _forget(self, node: Node) -> None:
        if self.nodes.get(node.hostname) is node:
            del self.nodes[node.hostname]
        self._remove_files(node.hostname)
        await self.registry.remove(node.hostname)
