"""The fleet: every node of every host group on this host, and the one place nodes are launched (created or
forked from a commit), committed, recovered after a restart, stopped and destroyed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import itertools
import logging
import os
import secrets
import shutil
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pyslicer.daemon.admission import MemoryAdmission
from pyslicer.daemon.commits import (
    COLD,
    CommitRecord,
    CommitRequest,
    CommitStore,
    check_commit_id,
    in_use,
    new_commit_id,
)
from pyslicer.daemon.data_dir import DataDir
from pyslicer.daemon.host_groups import HostGroup, NodeRequest
from pyslicer.daemon.lifecycle import NodeState
from pyslicer.daemon.node import Node
from pyslicer.daemon.registry import NodeRecord, Registry
from pyslicer.daemon.secrets import check_grant
from pyslicer.daemon.storage import create_overlay, remove_disk
from pyslicer.daemon.templates import Template, Templates
from pyslicer.daemon.timestamps import utc_now
from pyslicer.errors import (
    AgentError,
    ConfigError,
    Conflict,
    HypervisorError,
    InsufficientStorage,
    InvalidArgument,
    NotFound,
    SlicerError,
    SnapshotError,
    Timeout,
)
from pyslicer.image import GuestImage
from pyslicer.image.manifest import image_label
from pyslicer.net import Lease, NetworkNamespace, Policy, VMPolicy, parse_cidrs
from pyslicer.protocol import Op
from pyslicer.vmm import GuestMemory, Hypervisor, Nic, ProcessIdentity, VMSpec

log = logging.getLogger(__name__)

GRACEFUL_STOP_SECONDS = 20.0
# Room a saved state needs beyond the guest's RAM (device state, the file system's own use).
STATE_SPACE_MARGIN = 64 * 1024 * 1024
_HOLDING_NO_MEMORY = (NodeState.SUSPENDED, NodeState.STOPPED, NodeState.DELETED)


class LaunchOutcome(enum.StrEnum):
    """How a create ended, for the launch counter."""

    CREATED = "created"
    TIMED_OUT = "timed_out"
    NOT_READY = "not_ready"  # the VM stopped or its agent failed before it was ready
    FAILED = "failed"  # the VM could not be launched at all


@dataclass(frozen=True, slots=True)
class ForkPlan:
    """What makes a new node a fork: the commit its disk stands on and which identity fix-ups its guest gets."""

    commit: CommitRecord
    fixups: tuple[str, ...]


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
        admission: MemoryAdmission | None = None,
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
        self.admission = admission
        self.nodes: dict[str, Node] = {}
        self.leases: dict[str, Lease] = {}
        self.launch_counts: dict[tuple[str, LaunchOutcome], int] = {}
        self.retired: set[str] = set()  # kept disks of VMs whose host group left the config: names still taken
        self.commits: dict[str, CommitRecord] = {}
        self.commit_store = CommitStore(data_dir.commits_dir)
        self._committing: set[str] = set()
        self._settling: set[asyncio.Task[None]] = set()  # no-wait forks being watched until they are ready
        self._lock = asyncio.Lock()  # leases, names, and what stands on which commit
        self._retired_templates: set[str] = set()  # the templates their disks are layered on
        self.templates = Templates(
            data_dir.path / "templates",
            hypervisor,
            image,
            self.kernel,
            data_dir.run_root,
            base=lambda: data_dir.pinned_base(image),
            lease=self._template_lease,
            release=self._template_release,
            disks_in_use=self._templates_in_use,
        )

    def node(self, hostname: str) -> Node:
        """Raises NotFound for a hostname that is not (or no longer) here."""
        node = self.nodes.get(hostname)
        if node is None or node.state is NodeState.DELETED:
            raise NotFound(f"VM {hostname!r} not found", code="vm_not_found")
        return node

    def committed_ram(self) -> list[int]:
        """The RAM size of every VM that holds (or may hold) host memory: not stopped, suspended or deleted."""
        return [node.record.ram_bytes for node in self.nodes.values() if node.state not in _HOLDING_NO_MEMORY]

    async def _admit_back(self, node: Node) -> None:
        """Raises Conflict (``memory_overcommit``, ``host_memory_low``) when the host's memory cannot take a
        stopped or suspended node back."""
        if self.admission is not None:
            async with self._lock:
                self.admission.check(node.hostname, node.record.ram_bytes, self.committed_ram())

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

        Raises InvalidArgument for a request beyond the group's ceilings or a hostname in use, Conflict when
        the host's memory cannot take it (``admission``), Timeout when the wait runs out and AgentError when
        the VM stops first (the node is removed in both cases), HypervisorError or NetworkError when it cannot
        be launched."""
        group.check(request)
        node = await self.launch(group, request, admit=True)
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
        admit: bool = False,
        fork: ForkPlan | None = None,
    ) -> Node:
        """Start a new node's VM (its agent connects in the background); with ``fork``, from an overlay over that
        commit. Raises InvalidArgument for a hostname in use, Conflict when ``admit`` and the host's memory cannot
        take it, NotFound for a commit deleted meanwhile, HypervisorError or NetworkError when the VM cannot be
        started (nothing of it is left)."""
        config = group.config
        async with self._lock:
            if fork is not None and fork.commit.commit_id not in self.commits:
                raise NotFound(f"commit {fork.commit.commit_id!r} not found", code="commit_not_found")
            taken = self.nodes.keys() | self.retired
            if request.hostname is not None and request.hostname in taken:
                raise InvalidArgument(f"hostname: {request.hostname!r} is already in use", code="hostname")
            if admit and self.admission is not None:  # under the lock: two creates cannot both take the last room
                running = self.committed_ram()
                self.admission.check(
                    request.hostname or f"a new {group.name} VM", request.ram_bytes or config.ram_bytes, running
                )
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
                machine_id=uuid.uuid4().hex,
                ip=request.ip or "",
                network_allow=_cidrs(request.allow, "allow"),
                network_drop=_cidrs(request.drop, "drop"),
                ssh_keys=list(request.ssh_keys),
            )
            if fork is not None:
                commit = fork.commit
                record.disk_bytes, record.image = commit.disk_bytes, commit.image
                record.backing_commit_id = record.parent_commit_id = commit.commit_id
                record.fixups = list(fork.fixups)
                record.machine_id = record.machine_id if "machine-id" in fork.fixups else ""
                record.ssh_keys_pending = "ssh-host-keys" in fork.fixups
                record.unfinished = True
            node = self._add(record)
        template = None if service or fork is not None else self._template_for(group, record)
        if template is not None and await self._fast_boot(node, template):
            return node
        await self._boot(node, failed=LaunchOutcome.FAILED)
        return node

    def _template_for(self, group: HostGroup, record: NodeRecord) -> Template | None:
        """The template a new node can be restored from: its group's, when ready and of the node's shape."""
        config = group.config
        if not config.fast_create or (record.cpus, record.ram_bytes) != (config.vcpu, config.ram_bytes):
            return None
        return self.templates.ready(group)

    async def _fast_boot(self, node: Node, template: Template) -> bool:
        """Restore a new node from ``template``; False, with nothing of the attempt left, when the template
        cannot be loaded (the caller boots it instead). Raises what ``_boot`` raises (the node is destroyed)."""
        try:
            await self._boot(node, template=template)
        except SnapshotError as exc:
            log.warning("%s: not restored from its group's template (%s); booting it", node.hostname, exc)
            self.templates.discard(template)
            remove_disk(node.spec.disk)
            node.record.template, node.identity = "", None
            return False
        except BaseException:
            self.count(node.record.host_group, LaunchOutcome.FAILED)
            await self.destroy(node)
            raise
        return True

    async def _template_lease(self, group: HostGroup, name: str) -> Lease:
        async with self._lock:
            lease = await group.network.lease(name, next(group.taps), self._addresses_taken(None))
            self.leases[f"~{name}"] = lease  # (no hostname starts with ~)
            return lease

    async def _template_release(self, group: HostGroup, name: str) -> None:
        lease = self.leases.pop(f"~{name}", None)
        if lease is not None:
            await group.network.release(lease.tap)

    def _templates_in_use(self) -> set[str]:
        return {n.record.template for n in self.nodes.values() if n.record.template} | self._retired_templates

    def _add(self, record: NodeRecord, lease: Lease | None = None) -> Node:
        node = Node(record, self._spec(record, lease))
        node.on_stopped = self._on_node_stopped
        node.on_agent_ready = self.on_agent_ready
        self.nodes[record.hostname] = node
        return node

    def _spec(self, record: NodeRecord, lease: Lease | None, *, incoming: Path | None = None) -> VMSpec:
        hostname = record.hostname
        # Without a fix-up the guest keeps what its disk says (a fork: its source's hostname, machine-id, keys).
        identity = {"slicer.hostname": hostname} if "hostname" in record.fixes else {}
        if record.machine_id:
            identity["slicer.machine_id"] = record.machine_id
        if record.ssh_keys_pending:
            identity["slicer.fixups"] = "ssh-host-keys"
        return VMSpec(
            incoming=incoming,
            name=hostname,
            vcpus=record.cpus,
            ram_bytes=record.ram_bytes,
            kernel=self.kernel,
            initrd=self.image.initrd,
            disk=self.data_dir.disk(hostname),
            run_dir=self.data_dir.run_dir(hostname),
            console_log=self.data_dir.console_log(hostname),
            kernel_args={**identity, **(lease.kernel_args if lease is not None else {})},
            nic=Nic(tap=lease.tap, mac=lease.mac, netns=lease.netns) if lease is not None else None,
        )

    async def _boot(
        self,
        node: Node,
        *,
        failed: LaunchOutcome | None = None,
        incoming: Path | None = None,
        template: Template | None = None,
    ) -> None:
        """Give a node an address and start its VM from its disk (made first for a new node), or restore it from
        the saved state ``incoming`` (it keeps its address then), or restore a new node from ``template`` (a
        disk layered on the template's; the guest takes its identity at its first READY). A new node (``failed``
        set) that cannot be started is destroyed; a stopped (or suspended) one stays so. Raises SnapshotError
        when a saved state cannot be loaded, HypervisorError or NetworkError."""
        record = node.record
        group = self.groups[record.host_group]
        try:
            async with self._lock:
                # (a suspended guest's address stays its own: every node's recorded address is taken)
                taken = self._addresses_taken(node)
                lease = await group.network.lease(record.hostname, next(group.taps), taken, wanted=record.ip)
                self.leases[record.hostname] = lease
            if incoming is not None and str(lease.address.ip) != record.ip:
                raise HypervisorError(f"{record.hostname}: its address {record.ip} is not free")
            record.ip, record.tap = str(lease.address.ip), lease.tap
            await self.policy.add(self.vm_policy(record, lease))
            node.spec = spec = self._spec(record, lease, incoming=incoming)
            if template is not None:
                record.template = str(template.path)
                node.spec = spec = dataclasses.replace(
                    spec, incoming=template.state, memory=GuestMemory(template.memory, shared=False)
                )
                node.identity = {
                    "op": Op.IDENTITY,
                    "hostname": record.hostname,
                    "machine_id": record.machine_id or secrets.token_hex(16),
                    "mac": lease.mac,
                    "ip": str(lease.address),
                    "gateway": str(lease.gateway),
                    "seed": secrets.token_hex(64),
                }
                if not spec.disk.exists():
                    await create_overlay(template.disk, spec.disk, record.disk_bytes or None, base_format="qcow2")
            elif not spec.disk.exists():
                if record.backing_commit_id:  # (sized as its commit)
                    commit_disk = self.commit_store.disk(record.backing_commit_id)
                    await create_overlay(commit_disk, spec.disk, None, base_format="qcow2")
                else:
                    base = await self.data_dir.pinned_base(self.image)
                    await create_overlay(base, spec.disk, record.disk_bytes or None)
            await self.registry.put(record)
            shutil.rmtree(spec.run_dir, ignore_errors=True)
            if incoming is None:  # (a restored guest carries on: its console log too)
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
        """Boot a stopped node again from its disk. Raises Conflict unless it is stopped or when the host's memory
        cannot take it (it stays stopped), HypervisorError or NetworkError when it cannot be started (it stays
        stopped)."""
        async with node.lifecycle:
            if node.state is not NodeState.STOPPED:
                raise Conflict(f"cannot relaunch {node.hostname}: it is {node.state.value}", code="invalid_state")
            await self._admit_back(node)
            await self._boot(node)

    async def suspend(self, node: Node) -> None:
        """Save a running node's whole state in the data dir and end its VM; it is Suspended until restored
        (a persistent one also across daemon restarts). Raises Conflict unless it is running,
        InsufficientStorage when the data dir has no room for the state, SnapshotError when it cannot be saved
        (the VM runs on, or is Stopped when its QEMU died meanwhile): in all these cases nothing is saved."""
        state = self.data_dir.saved_state(node.hostname)
        state.parent.mkdir(parents=True, exist_ok=True)
        room = await asyncio.to_thread(os.statvfs, state.parent)
        free, needed = room.f_bavail * room.f_frsize, node.record.ram_bytes + STATE_SPACE_MARGIN
        if free < needed:
            raise InsufficientStorage(
                f"cannot suspend {node.hostname}: its state needs up to {needed >> 20} MiB and {state.parent} has "
                f"{free >> 20} MiB free; it keeps running",
                code="no_space_for_state",
            )
        await node.suspend(state)
        shutil.rmtree(node.spec.run_dir, ignore_errors=True)
        await self._release_lease(node)
        node.record.end_run()
        node.record.suspended = True
        await self.registry.put(node.record)

    async def restore(self, node: Node) -> None:
        """Bring a suspended node back from its saved state: its processes run on, its address is its own,
        its clock is set once its agent answers. Raises Conflict unless it is suspended, when the host's memory
        cannot take it (it stays suspended), or (code ``state_unusable``) when its state is missing or cannot be
        loaded (it is Stopped then, and can be relaunched from its disk), HypervisorError or NetworkError when it
        cannot be started (it stays suspended)."""
        async with node.lifecycle:
            if node.state is not NodeState.SUSPENDED:
                raise Conflict(
                    f"cannot restore {node.hostname}: it is {node.state.value}, not Suspended", code="invalid_state"
                )
            await self._admit_back(node)
            state = self.data_dir.saved_state(node.hostname)
            try:
                await self._boot(node, incoming=state)
            except SnapshotError as exc:
                self._discard_state(node.hostname)
                node.record.suspended = False
                node.record.stopped = True
                await self.registry.put(node.record)
                node.transition(NodeState.STOPPED)
                raise Conflict(
                    f"cannot restore {node.hostname}: {exc.message}; it is Stopped now (relaunch boots it from its "
                    "disk)",
                    code="state_unusable",
                ) from None
            self._discard_state(node.hostname)  # loaded: the running VM holds it now
            node.record.suspended = False
            await self.registry.put(node.record)

    def snapshot_usage(self) -> dict[str, int]:
        """Bytes on disk of the suspended VMs' states and of the fast-create templates. Raises nothing."""
        states = 0
        for path in (self.data_dir.path / "states").glob("*.vmstate"):
            with contextlib.suppress(OSError):
                states += path.stat().st_blocks * 512
        return {"suspended": states, "template": self.templates.disk_usage()}

    def _discard_state(self, hostname: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.data_dir.saved_state(hostname).unlink()

    # -- commits and forks ----------------------------------------------------------------------
    def commit_of(self, commit_id: str) -> CommitRecord:
        """Raises InvalidArgument for an id that is not one, NotFound for a commit that is not here."""
        commit = self.commits.get(check_commit_id(commit_id))
        if commit is None:
            raise NotFound(f"commit {commit_id!r} not found", code="commit_not_found")
        return commit

    async def commit(self, node: Node, request: CommitRequest) -> CommitRecord:
        """Make the disk of a stopped persistent node a commit; the node goes on from an overlay over it. Raises
        Conflict when it is not stopped (naming its state) or a commit of it is in progress, InsufficientStorage
        when the data dir's disk is (nearly) full, StorageError or HypervisorError when the files cannot be made
        (in each case nothing is made and the node's disk is as it was)."""
        hostname = node.hostname
        if hostname in self._committing:
            raise Conflict(f"a commit of {hostname} is in progress", code="commit_in_progress")
        self._committing.add(hostname)
        try:
            async with node.lifecycle:
                if node.state is not NodeState.STOPPED:
                    raise Conflict(
                        f"cannot commit {hostname}: it is {node.state.api_status}; shut it down first "
                        "(only a stopped VM's disk can be committed)",
                        code="invalid_state",
                    )
                record = node.record
                if not record.persistent:
                    raise Conflict(f"cannot commit {hostname}: it is not persistent", code="not_persistent")
                self.commit_store.check_space(f"commit of {hostname}")
                commit = CommitRecord(
                    commit_id=new_commit_id(),
                    mode=COLD,
                    source_hostname=hostname,
                    source_host_group=record.host_group,
                    created_at=utc_now(),
                    tags=list(request.tags),
                    labels=dict(request.labels),
                    cache_key=request.cache_key,
                    parent_commit_id=record.backing_commit_id,
                    cpus=record.cpus,
                    ram_bytes=record.ram_bytes,
                    disk_bytes=record.disk_bytes,
                    userdata=record.userdata,
                    source_tags=list(record.tags),
                    secrets=None if record.secrets is None else list(record.secrets),
                    image=record.image,
                )
                commit = await self.commit_store.take(commit, node.spec.disk)
                async with self._lock:
                    self.commits[commit.commit_id] = commit
                    record.backing_commit_id = record.commit_id = commit.commit_id
                await self.registry.put_commit(commit.commit_id, commit.to_dict())
                await self.registry.put(record)
                log.info("%s: committed as %s (%d bytes)", hostname, commit.commit_id, commit.size_bytes)
                return commit
        finally:
            self._committing.discard(hostname)

    def committing(self, hostname: str) -> bool:
        return hostname in self._committing

    async def fork(self, group: HostGroup, request: NodeRequest, plan: ForkPlan, *, wait: bool, timeout: float) -> Node:
        """Launch a node from an overlay over a commit, with the plan's identity fix-ups applied at its first boot.
        With ``wait`` it returns once its agent is ready and the fix-ups are seen to have applied; without, once
        the VM is launched, and a child that then fails to get ready is removed. Raises what ``create`` raises,
        InsufficientStorage when the data dir's disk is (nearly) full, NotFound when the commit went meanwhile."""
        group.check(request)
        self.commit_store.check_space(f"fork of {plan.commit.commit_id}")
        if not self.commit_store.disk(plan.commit.commit_id).is_file():
            raise Conflict(
                f"commit {plan.commit.commit_id} cannot be forked: its disk is missing", code="commit_damaged"
            )
        node = await self.launch(group, request, admit=True, fork=plan)
        if not wait:
            settle = self._settle_fork(node, timeout)
            task = asyncio.get_running_loop().create_task(settle, name=f"{node.hostname}-fork")
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)
            return node
        try:
            await self._finish_fork(node, timeout)
        except SlicerError as exc:
            await self.destroy(node)
            self.count(group.name, LaunchOutcome.TIMED_OUT if isinstance(exc, Timeout) else LaunchOutcome.NOT_READY)
            raise
        self.count(group.name, LaunchOutcome.CREATED)
        return node

    async def _finish_fork(self, node: Node, timeout: float) -> None:
        """Wait for the child's agent, check the guest took its new name, and mark it finished. Raises Timeout,
        AgentError."""
        await node.wait_ready(timeout, userdata=False)
        record = node.record
        if "hostname" in record.fixes:
            seen = (await node.health()).hostname
            if seen != node.hostname:
                raise AgentError(
                    f"{node.hostname}: the guest did not take its new hostname (it says {seen!r})", code="fixup_failed"
                )
        record.unfinished = record.ssh_keys_pending = False
        if node.state is not NodeState.DELETED:
            await self.registry.put(record)

    async def _settle_fork(self, node: Node, timeout: float) -> None:
        group = node.record.host_group
        try:
            await self._finish_fork(node, timeout)
        except SlicerError as exc:
            if node.state is NodeState.DELETED:
                return
            log.warning("%s: a no-wait fork that did not get ready is removed: %s", node.hostname, exc)
            self.count(group, LaunchOutcome.TIMED_OUT if isinstance(exc, Timeout) else LaunchOutcome.NOT_READY)
            await self.destroy(node)
        else:
            self.count(group, LaunchOutcome.CREATED)

    async def delete_commit(self, commit_id: str) -> CommitRecord:
        """Remove a commit and its files. Raises InvalidArgument, NotFound, Conflict (code ``commit_in_use``)
        while a VM's disk (its source's too) or another commit stands on it."""
        async with self._lock:
            commit = self.commit_of(commit_id)
            users = {n.hostname for n in self.nodes.values() if n.record.backing_commit_id == commit.commit_id}
            users |= {r.hostname for r in await self.registry.all() if r.backing_commit_id == commit.commit_id}
            users |= {f"commit {c.commit_id}" for c in self.commits.values() if c.parent_commit_id == commit.commit_id}
            if users:
                raise in_use(commit.commit_id, users)
            del self.commits[commit.commit_id]
        await self.registry.remove_commit(commit.commit_id)
        await asyncio.to_thread(self.commit_store.remove, commit.commit_id)
        log.info("commit %s deleted", commit.commit_id)
        return commit

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
        await self._recover_commits()
        records = await self.registry.all()
        for record in records:
            if record.unfinished:
                await self._drop_unfinished_fork(record)
                continue
            group = self.groups.get(record.host_group)
            if group is None or (record.protected and not self._is_configured_service(group, record.hostname)):
                await self._retire(record)
                if record.template:
                    self._retired_templates.add(record.template)
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
            if record.suspended:
                node.transition(NodeState.SUSPENDED)
                continue
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

    async def _recover_commits(self) -> None:
        """The recorded commits, plus any whose record a crash lost after its source was switched onto it; what
        an unfinished commit left is removed."""
        for commit_id, data in (await self.registry.commits()).items():
            try:
                self.commits[commit_id] = CommitRecord.from_dict(data)
            except ValueError as exc:
                raise ConfigError(
                    f"state database: the record of commit {commit_id!r} cannot be read ({exc})"
                ) from None
            disk = self.commit_store.disk(commit_id)
            if not disk.is_file():
                log.error("commit %s: its disk %s is missing; it cannot be forked", commit_id, disk)
        for commit in await asyncio.to_thread(self.commit_store.sweep, self.commits):
            self.commits[commit.commit_id] = commit
            await self.registry.put_commit(commit.commit_id, commit.to_dict())
            source = next((r for r in await self.registry.all() if r.hostname == commit.source_hostname), None)
            if source is not None and source.backing_commit_id == commit.parent_commit_id:
                source.backing_commit_id = source.commit_id = commit.commit_id
                await self.registry.put(source)

    async def _drop_unfinished_fork(self, record: NodeRecord) -> None:
        """A fork the daemon died making (or waiting for): it goes, with whatever of it still runs."""
        log.warning("%s: removing a fork that was not finished when the daemon stopped", record.hostname)
        await self.hypervisor.reclaim(self.data_dir.run_dir(record.hostname))
        self._remove_files(record.hostname)
        await self.registry.remove(record.hostname)

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
        self.templates.collect(self.groups.values())
        suspended = {node.hostname for node in self.nodes.values() if node.state is NodeState.SUSPENDED}
        for hostname in self.data_dir.saved_state_owners() - suspended:
            log.warning("%s: removing a saved state that no suspended VM owns", hostname)
            self._discard_state(hostname)
        for partial in (self.data_dir.path / "states").glob(".*.partial"):  # a suspend the daemon died in
            partial.unlink(missing_ok=True)

    def _remove_files(self, hostname: str) -> None:
        remove_disk(self.data_dir.disk(hostname))
        self._discard_state(hostname)
        with contextlib.suppress(FileNotFoundError):
            self.data_dir.console_log(hostname).unlink()
        shutil.rmtree(self.data_dir.run_dir(hostname), ignore_errors=True)

    # -- stopping ------------------------------------------------------------------------------
    async def stop_all(self) -> None:
        """Stop every node: persistent ones shut down cleanly and keep their disks (and come back at the next
        start unless they were stopped), the rest are removed."""
        await self.templates.close()
        self._stop_settling()
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
        await self.templates.close()
        self._stop_settling()
        await asyncio.gather(*(node.detach() for node in list(self.nodes.values())), return_exceptions=True)

    def _stop_settling(self) -> None:
        for task in self._settling:  # (an unfinished fork is removed by the next daemon)
            task.cancel()

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
        if node.record.template:
            self.templates.collect(self.groups.values())
