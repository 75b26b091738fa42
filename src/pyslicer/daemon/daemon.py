"""The daemon: every operation the API (or any other caller) can ask of this host, typed in and out.

It composes the data dir, the host groups and the fleet; it holds no HTTP. Each public method says
what it raises; ``pyslicer.api.errors`` maps those errors to statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pyslicer import __version__
from pyslicer.config import SlicerConfig
from pyslicer.daemon.admission import VMM_OVERHEAD_BYTES, MemoryAdmission, MemoryCommitment
from pyslicer.daemon.background import BackgroundExecs
from pyslicer.daemon.commits import CommitFilter, CommitRecord, CommitRequest, ForkRequest, inherited_tags
from pyslicer.daemon.console import MAX_CONSOLE_LOG_BYTES, tail_lines, trim_log
from pyslicer.daemon.copy import CopyDownload, CopyInRequest, CopyOutRequest, CopyUpload
from pyslicer.daemon.data_dir import DataDir
from pyslicer.daemon.describe import NodeDescription, describe
from pyslicer.daemon.exec import ExecProcess, ExecRequest
from pyslicer.daemon.expiry import ExpiryReaper, deadline_of, ttl_tag
from pyslicer.daemon.fleet import GRACEFUL_STOP_SECONDS, Fleet, ForkPlan, LaunchOutcome
from pyslicer.daemon.forward import ForwardConnection, ForwardTarget
from pyslicer.daemon.fs import GuestFilesystem
from pyslicer.daemon.host_groups import HostGroup, NodeRequest, host_groups
from pyslicer.daemon.lifecycle import NodeState
from pyslicer.daemon.node import AgentHealth, Node
from pyslicer.daemon.registry import FIXUPS, Registry
from pyslicer.daemon.secrets import NewSecret, SecretChange, SecretInfo, Secrets
from pyslicer.daemon.shell import ShellRequest, ShellSession
from pyslicer.daemon.ssh_keys import check_keys, install_keys
from pyslicer.daemon.stats import NodeStats, collect
from pyslicer.daemon.tags import EXPIRES_PREFIX, TagChange, apply_change, initial_tags, name_of
from pyslicer.errors import ConfigError, Conflict, InvalidArgument, NotFound, PermissionDenied
from pyslicer.image import ensure_image
from pyslicer.image.manifest import image_label
from pyslicer.net import NetworkNamespace, Policy, Uplink
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


@dataclass(frozen=True, slots=True)
class CommitResult:
    commit: CommitRecord
    source_status: str  # the source's status after the commit (it stays stopped)


@dataclass(frozen=True, slots=True)
class CommitInfo:
    commit: CommitRecord
    used_by: tuple[str, ...]  # the VMs whose disks stand on it, and the commits made on top of it


@dataclass(frozen=True, slots=True)
class ForkResult:
    node: Node
    commit: CommitRecord
    source_status: str  # "" when the source is gone


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
        self.netns = NetworkNamespace(self.data_dir.path, host=config.network.host_namespace)
        self.uplink = Uplink(config.network, self.netns)
        self.groups = host_groups(config, self.netns, self.uplink)
        if config.github_user:
            raise ConfigError(
                f"config.github_user: importing SSH keys for {config.github_user!r} needs the internet, which this "
                "daemon does not reach; list the public keys in config.ssh_keys instead"
            )
        try:
            self.ssh_keys = check_keys(config.ssh_keys, "config.ssh_keys")
        except InvalidArgument as exc:
            raise ConfigError(exc.message) from None
        self.policy = Policy(self.netns, [group.network for group in self.groups.values()], uplink=self.uplink.enabled)
        self.token: str | None = None
        self._fleet: Fleet | None = None
        self._registry: Registry | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._tags_lock = asyncio.Lock()  # one tag change at a time, so name= stays unique
        self._names_being_created: set[str] = set()
        self._creates_in_flight = 0
        self._expiry = ExpiryReaper(
            lambda: list(self.nodes.values()), self._expire, creating=lambda: self._creates_in_flight > 0
        )
        self.secrets = Secrets(self.data_dir.secrets_dir, lambda: list(self.nodes.values()))

    def _admission(self) -> MemoryAdmission:
        overhead = VMM_OVERHEAD_BYTES
        if self.hypervisor.accel == "tcg":
            overhead += self.hypervisor.memory.tcg_tb_size_mib * 1024 * 1024
        return MemoryAdmission(self.config.memory_overcommit_ratio, vmm_overhead_bytes=overhead)

    # -- start and stop ------------------------------------------------------------------------
    async def start(self) -> None:
        """Hold the data dir, build the guest image if needed, set up the networks, adopt the VMs an earlier
        daemon left running, bring back the persistent ones and launch the config's services. Raises
        ConfigError when another daemon holds the data dir or its state database is damaged (nothing is
        changed then), ImageError, NetworkError or HypervisorError when a part cannot be set up."""
        self.data_dir.hold()
        try:
            self._registry = await Registry.open(self.data_dir.path / "state.db")
        except ConfigError:
            self.data_dir.release(keep_run_dirs=True)
            raise
        self.token = await asyncio.to_thread(self.data_dir.load_token)
        await self.secrets.open()
        self.progress(f"accel {self.hypervisor.accel_reason}")
        image = await ensure_image(self.data_dir.path, progress=self.progress)
        await self.netns.create()
        for group in self.groups.values():
            await group.network.create()
        await self.uplink.create()
        await self.policy.ensure()
        self._fleet = Fleet(
            self.groups,
            self.data_dir,
            self.hypervisor,
            image,
            self._registry,
            self.netns,
            self.policy,
            kernel=self.config.kernel_file,
            on_agent_ready=self._prepare_guest,
            admission=self._admission(),
        )
        await self._fleet.recover()
        await self._fleet.launch_services()
        self._expiry.start()  # VMs that expired while no daemon ran go first
        self._housekeeping = asyncio.get_running_loop().create_task(self._keep_logs_bounded())

    async def stop(self, *, leave_running: bool = False) -> None:
        """Stop every VM (persistent ones cleanly), remove the sandboxes and the networks, release the
        data dir. With ``leave_running`` (an upgrade, a restart) every VM keeps running as it is, with its
        network, for the next daemon on this data dir to adopt. Does nothing for a daemon that never started."""
        if not self.data_dir.held:
            return  # everything on the data dir belongs to someone else, or to nobody yet
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        await self._expiry.stop()
        # A daemon that failed before it took over the VMs an earlier one left must not touch their network.
        leave_running = leave_running or self._fleet is None
        if self._fleet is not None:
            await (self._fleet.detach_all() if leave_running else self._fleet.stop_all())
        await self.secrets.close()
        if self._registry is not None:
            await self._registry.close()
            self._registry = None
        if not leave_running:
            if self.netns.host:  # only what the daemon made there
                await self.policy.delete()
                for group in self.groups.values():
                    await group.network.delete()
            await self.netns.delete()
        self.data_dir.release(keep_run_dirs=leave_running)

    async def _prepare_guest(self, node: Node) -> None:
        """What a guest needs each time its agent says READY (wait=agent waits for it): its secrets, its SSH keys."""
        await self.secrets.sync_at_ready(node)
        await install_keys(node, (*self.ssh_keys, *node.record.ssh_keys))

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

    def snapshot_usage(self) -> dict[str, int]:
        """Bytes on disk of saved VM states by kind (``suspended``, ``template``). Raises nothing."""
        return self._fleet.snapshot_usage() if self._fleet is not None else {}

    def memory_commitment(self) -> MemoryCommitment:
        """The memory the VMs have committed against the admission limit (``memory_overcommit_ratio``)."""
        running = self._fleet.committed_ram() if self._fleet is not None else []
        return self._admission().commitment_of(running)

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
        ready. A ``ttl`` becomes an ``expires_at=`` tag. Raises NotFound for an unknown group,
        InvalidArgument for a request beyond its ceilings, a hostname in use, a bad tag or ttl (codes
        ``invalid_tag``, ``invalid_expires_at``, ``invalid_ttl``), Conflict (code ``name_taken``) for a
        ``name=`` tag another VM holds or (codes ``memory_overcommit``, ``host_memory_low``) when the host's memory
        cannot take the VM, Timeout or AgentError when the wait fails (the node is removed),
        HypervisorError or NetworkError when it cannot be launched."""
        group = self.group(group_name)
        tags = initial_tags(request.tags)
        if request.ttl is not None:
            if any(tag.startswith(EXPIRES_PREFIX) for tag in tags):
                raise InvalidArgument("ttl: give either a ttl or an expires_at= tag, not both", code="invalid_ttl")
            tags = (*tags, ttl_tag(request.ttl))
        request = dataclasses.replace(request, tags=tags, ttl=None)
        with self._creating(name_of(tags)):
            try:
                return await self.fleet.create(group, request, wait=wait, timeout=timeout)
            finally:
                self._expiry.changed()

    @contextlib.contextmanager
    def _creating(self, name: str | None) -> Iterator[None]:
        """Hold the create's ``name=`` (Conflict if a VM or another create has it) and tell the reaper a
        create is in flight."""
        if name is not None:
            self._check_name_free(name, None)
            self._names_being_created.add(name)
        self._creates_in_flight += 1
        try:
            yield
        finally:
            self._creates_in_flight -= 1
            if name is not None:
                self._names_being_created.discard(name)

    def _check_name_free(self, name: str, hostname: str | None) -> None:
        holder = next(
            (
                n.hostname
                for n in self.nodes.values()
                if n.hostname != hostname and n.state is not NodeState.DELETED and name_of(n.record.tags) == name
            ),
            None,
        )
        if holder is None and name in self._names_being_created:
            holder = "a VM being created"
        if holder is not None:
            raise Conflict(f"name={name} is already the name of {holder}", code="name_taken")

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
        if self.fleet.committing(hostname):
            raise Conflict(f"cannot delete {hostname}: a commit of it is in progress", code="commit_in_progress")
        await self.fleet.destroy(node)

    # -- lifecycle -----------------------------------------------------------------------------
    async def pause_node(self, hostname: str) -> Node:
        """Stop a node's vCPUs (its processes and memory stay). Raises NotFound, Conflict unless it is
        running, HypervisorError when QEMU does not do it."""
        node = self.node(hostname)
        await node.pause()
        return node

    async def resume_node(self, hostname: str) -> Node:
        """Run a paused node again. Raises NotFound, Conflict unless it is paused, HypervisorError."""
        node = self.node(hostname)
        await node.resume()
        return node

    async def suspend_node(self, hostname: str) -> Node:
        """Save a running node's whole state (memory, devices; its disk stays) in the data dir and end its VM:
        it is Suspended until restored. Raises NotFound, Conflict unless it is running, InsufficientStorage when
        the data dir has no room for the state, SnapshotError when it cannot be saved (it runs on, or is Stopped
        when its QEMU died meanwhile)."""
        node = self.node(hostname)
        await self.fleet.suspend(node)
        return node

    async def restore_node(self, hostname: str, *, wait: str | None = None, timeout: float = 300.0) -> Node:
        """Bring a suspended node back with its processes and memory; with ``wait`` ("agent" or "userdata"),
        return once its agent answers (its clock set). Raises NotFound, Conflict unless it is suspended or (code
        ``state_unusable``) when its saved state is missing or damaged (it is Stopped then), HypervisorError or
        NetworkError when it cannot be started (it stays suspended), Timeout or AgentError when the wait fails
        (it keeps running)."""
        node = self.node(hostname)
        await self.fleet.restore(node)
        if wait is not None:
            await node.wait_ready(timeout, userdata=wait == "userdata")
        return node

    async def shut_down_node(self, hostname: str, *, timeout: float | None = None) -> Node:
        """Stop a node's guest cleanly (killed when it has not stopped within ``timeout``), answering once it has
        stopped: a persistent VM (or a service) is then Stopped with its disk, an ephemeral sandbox is removed
        with its disk (state Deleted). Raises NotFound, Conflict when it is not running or paused."""
        node = self.node(hostname)
        await self.fleet.shut_down(node, timeout=GRACEFUL_STOP_SECONDS if timeout is None else timeout)
        return node

    async def relaunch_node(self, hostname: str, *, wait: str | None = None, timeout: float = 300.0) -> Node:
        """Boot a stopped node again from its disk; with ``wait`` ("agent" or "userdata"), return once it is
        ready. Raises NotFound, Conflict unless it is stopped, HypervisorError or NetworkError when it cannot be
        started (it stays stopped), Timeout or AgentError when the wait fails (it keeps running)."""
        node = self.node(hostname)
        await self.fleet.relaunch(node)
        if wait is not None:
            await node.wait_ready(timeout, userdata=wait == "userdata")
        return node

    # -- commits and forks ----------------------------------------------------------------------
    async def commit_node(self, hostname: str, request: CommitRequest) -> CommitResult:
        """Commit a stopped persistent VM's disk (mode cold). Raises NotFound, Conflict when it is not stopped
        (naming its state), not persistent, or already being committed, InsufficientStorage when the data dir's
        disk is (nearly) full, StorageError or HypervisorError (nothing is made in each case)."""
        node = self.node(hostname)
        commit = await self.fleet.commit(node, request)
        return CommitResult(commit, node.state.api_status)

    def list_commits(self, where: CommitFilter) -> list[CommitInfo]:
        """The commits that match, oldest first, each with what stands on it. Raises InvalidArgument for an
        unknown mode."""
        if where.mode and where.mode not in ("disk", "hot"):
            raise InvalidArgument(f"mode: {where.mode!r} is not one of disk, hot", code="invalid_mode")
        users: dict[str, list[str]] = {}
        for node in self.nodes.values():
            if node.record.backing_commit_id and node.state is not NodeState.DELETED:
                users.setdefault(node.record.backing_commit_id, []).append(node.hostname)
        known = self._fleet.commits.values() if self._fleet is not None else ()
        commits = sorted(known, key=lambda c: (c.created_at, c.commit_id))
        for commit in commits:
            if commit.parent_commit_id:
                users.setdefault(commit.parent_commit_id, []).append(commit.commit_id)
        return [CommitInfo(c, tuple(sorted(users.get(c.commit_id, ())))) for c in commits if where.matches(c)]

    async def delete_commit(self, commit_id: str) -> CommitRecord:
        """Remove a commit and its files. Raises InvalidArgument for a malformed id, NotFound, Conflict (code
        ``commit_in_use``) while a VM (its source too) or another commit stands on it."""
        return await self.fleet.delete_commit(commit_id)

    async def fork(
        self, commit_id: str, request: ForkRequest, *, wait: bool = True, timeout: float = 300.0
    ) -> ForkResult:
        """A new VM from a commit, in its source's host group, with a fresh hostname, MAC and IP and (unless
        ``fixups`` says otherwise) machine-id and SSH host keys. With ``wait`` it returns once the child's agent
        is ready; without, once it is launched (a child that does not get ready is then removed). Raises
        InvalidArgument (naming the field), NotFound for a missing commit, Conflict for a commit that cannot be
        forked (its host group left the config, its disk is missing) or a ``name=`` tag in use,
        InsufficientStorage, Timeout or AgentError when the wait fails (the child is removed), HypervisorError or
        NetworkError."""
        commit = self.fleet.commit_of(commit_id)
        group = self.groups.get(commit.source_host_group)
        if group is None:
            raise Conflict(
                f"commit {commit.commit_id} cannot be forked: host group {commit.source_host_group!r} is no longer "
                "in the config",
                code="hostgroup_gone",
            )
        given = list(request.tags or ())
        tags = initial_tags(given if request.tag_mode == "replace" else [*inherited_tags(commit.source_tags), *given])
        network = request.network
        secrets = commit.secrets if request.secrets is None else request.secrets
        node_request = NodeRequest(
            cpus=request.vcpu or commit.cpus,
            ram_bytes=request.ram_bytes or commit.ram_bytes,
            userdata=commit.userdata,
            tags=tags,
            persistent=request.persistent,
            secrets=None if secrets is None else tuple(secrets),
            allow=None if network is None or network.allow is None else tuple(network.allow),
            drop=None if network is None or network.drop is None else tuple(network.drop),
        )
        fixups = FIXUPS if request.fixups is None else tuple(request.fixups)
        plan = ForkPlan(commit, fixups)
        with self._creating(name_of(tags)):
            try:
                node = await self.fleet.fork(group, node_request, plan, wait=wait, timeout=timeout)
            finally:
                self._expiry.changed()
        source = self.nodes.get(commit.source_hostname)
        return ForkResult(node, commit, source.state.api_status if source is not None else "")

    # -- describe and tags ----------------------------------------------------------------------
    def describe(self, hostname: str) -> NodeDescription:
        """What the node is, runs on and may reach. Raises NotFound."""
        node = self.node(hostname)
        image = self.fleet.image
        image_bytes = image.manifest.get("outputs", {}).get("rootfs.ext4", {}).get("size", 0)
        return describe(
            node,
            self.groups[node.record.host_group].config,
            image_label(image.manifest),
            image_bytes if isinstance(image_bytes, int) else 0,
            self.netns.name,
        )

    def tags(self, hostname: str) -> list[str]:
        """The node's tags. Raises NotFound."""
        return list(self.node(hostname).record.tags)

    async def change_tags(self, hostname: str, change: TagChange) -> list[str]:
        """Apply one tag change and persist it; the new tags. An ``expires_at=`` tag (re)sets when the node
        is removed. Raises NotFound, InvalidArgument (naming the field) for a bad tag, too many tags, or an
        ``expires_at=`` on a service from the config (code ``protected``), Conflict for a change to the
        ``name=`` tag (code ``name_tag_immutable``) or a name another VM holds (code ``name_taken``)."""
        async with self._tags_lock:
            node = self.node(hostname)
            record = node.record
            tags = apply_change(hostname, record.tags, change)
            name = name_of(tags)
            if name is not None and name != name_of(record.tags):
                self._check_name_free(name, hostname)
            added_expiry = next((t for t in tags if t.startswith(EXPIRES_PREFIX) and t not in record.tags), None)
            if record.protected and added_expiry is not None:
                raise InvalidArgument(
                    f"{change.operation}: {hostname} was launched from the config file and never expires",
                    code="protected",
                )
            # No await between the check above and the write: a delete that starts meanwhile removes the
            # record after this write, never before it.
            await self.fleet.registry.put(dataclasses.replace(record, tags=tags))
            if node.state is NodeState.DELETED:
                await self.fleet.registry.remove(hostname)
                raise NotFound(f"VM {hostname!r} not found", code="vm_not_found")
            record.tags = tags
        self._expiry.changed()
        return list(tags)

    async def _expire(self, node: Node) -> bool:
        """Remove an expired node, unless a re-tag or a delete got there first; whether it was removed."""
        async with self._tags_lock:
            deadline = deadline_of(node)
            if deadline is None or deadline > self._expiry.now():
                return False
            if self.nodes.get(node.hostname) is not node or node.state is NodeState.DELETED:
                return False
            node.transition(NodeState.DELETED)
        await self.fleet.destroy(node)
        return True

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

    async def stats(self, hostname: str | None = None) -> list[NodeStats]:
        """Stats of one node (NotFound when it does not exist) or of every node, all asked at once; a node
        that cannot answer has its ``error`` set. Raises nothing else."""
        nodes = [self.node(hostname)] if hostname is not None else self.list_nodes()
        taps = {name: lease.tap for name, lease in self._fleet.leases.items()} if self._fleet is not None else {}
        return await collect(nodes, taps)

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

    async def shell(self, hostname: str, request: ShellRequest) -> ShellSession:
        """Start a login shell on a PTY in a node, once it runs. Raises NotFound (the VM; or the shell or cwd:
        code ``shell_not_found``), PermissionDenied when the shell cannot be run, InvalidArgument for a
        request the guest refused, Conflict when the VM is not running, AgentError when its agent is not
        reachable."""
        return await ShellSession.open(self.node(hostname).agent().open(request.to_wire()))

    async def forward(self, hostname: str, target: ForwardTarget) -> ForwardConnection:
        """Connect from inside a node to ``target``, once connected. Raises NotFound, Conflict when the VM is
        not running, AgentError when its agent is not reachable, UpstreamUnreachable when the target refuses
        or cannot be reached (the message says why)."""
        return await ForwardConnection.open(self.node(hostname).agent().open(target.to_wire()), target)

    def background(self, hostname: str) -> BackgroundExecs:
        """The background execs of a running node, kept by its agent. Raises NotFound, Conflict when the VM is
        not running, AgentError when its agent is not reachable."""
        return BackgroundExecs(self.node(hostname).agent(), hostname)
