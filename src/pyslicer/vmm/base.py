"""The hypervisor interface: small enough for a Firecracker or Cloud Hypervisor backend later."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from pyslicer.vmm.process import ProcessIdentity

Accel = Literal["kvm", "tcg"]


@dataclass(frozen=True)
class Nic:
    """A tap device, prepared by the caller inside ``netns`` ("": the VMM's own), for the VM's one network card."""

    tap: str
    mac: str
    netns: str


@dataclass(frozen=True)
class GuestMemory:
    """Guest RAM in a file. ``shared``: the guest's writes go to the file (a snapshot template's RAM, left out of
    its saved state); else the file is mapped copy-on-write, so VMs started from it share its pages until they
    write them."""

    path: Path
    shared: bool


@dataclass(frozen=True)
class VMSpec:
    name: str
    vcpus: int
    ram_bytes: int
    kernel: Path
    initrd: Path
    disk: Path
    run_dir: Path
    """Holds the sockets and QEMU's own log while the VM runs."""
    console_log: Path
    kernel_args: dict[str, str] = field(default_factory=dict)
    nic: Nic | None = None
    memory: GuestMemory | None = None
    """None: anonymous RAM."""
    incoming: Path | None = None
    """A saved state (``VMProcess.save_state``) to start from instead of booting; the devices must be the same."""

    @property
    def agent_socket(self) -> Path:
        return self.run_dir / "agent.sock"


@dataclass(frozen=True, slots=True)
class MemoryTuning:
    """How the VMM treats every VM's memory (the config's memory knobs, docs/sizing.md)."""

    tcg_tb_size_mib: int = 64
    """TCG's translation cache per VM; ignored under KVM."""
    free_page_reporting: bool = True
    """A balloon device through which the guest hands pages it frees back to the host."""


@dataclass(frozen=True, slots=True)
class BlockStats:
    """What the VMM counted on the VM's disks since it started (all disks summed)."""

    read_bytes: int
    write_bytes: int
    read_operations: int
    write_operations: int


class VMProcess(Protocol):
    """A running VM. It is not tied to the daemon's process: it keeps running when the daemon dies, and a later
    daemon takes it over with ``Hypervisor.adopt``."""

    spec: VMSpec
    pid: int
    identity: ProcessIdentity

    async def pause(self) -> None:
        """Stop the vCPUs. Raises HypervisorError when the VMM does not do it."""
        ...

    async def resume(self) -> None:
        """Run the vCPUs again. Raises HypervisorError when the VMM does not do it."""
        ...

    async def block_stats(self) -> BlockStats:
        """The VM's disk I/O as the VMM counts it. Raises HypervisorError when the VMM does not answer."""
        ...

    async def save_state(self, path: Path) -> None:
        """Save the VM's whole state (vCPUs, devices, RAM not in a shared ``GuestMemory``) to ``path``, made
        atomically and synced; the VM is left stopped, for the caller to end. Raises SnapshotError when it
        cannot be saved (nothing is left at ``path``; the VM runs on unless its VMM died)."""
        ...

    async def paused(self) -> bool:
        """Whether its vCPUs are stopped. Raises HypervisorError when the VMM does not answer."""
        ...

    async def wait(self) -> None:
        """Wait until the VM process exits. Raises nothing."""
        ...

    async def kill(self) -> None:
        """Stop the VM now and wait until its process has gone. Safe to call more than once; raises nothing."""
        ...

    async def detach(self) -> None:
        """Stop controlling the VM and leave it running. Raises nothing."""
        ...


class Hypervisor(Protocol):
    name: str
    accel: Accel
    memory: MemoryTuning
    accel_reason: str
    """A sentence saying why this accelerator was chosen."""

    async def launch(self, spec: VMSpec) -> VMProcess:
        """Start a VM for ``spec`` (running, also when it is restored from ``spec.incoming``). Raises
        SnapshotError when ``spec.incoming`` cannot be loaded, HypervisorError when the VM cannot be started."""
        ...

    async def adopt(self, spec: VMSpec, identity: ProcessIdentity) -> VMProcess:
        """Take over the VM an earlier daemon started for ``spec`` as process ``identity``. Raises
        HypervisorError when that process is gone or is not that VM's."""
        ...

    async def reclaim(self, run_dir: Path) -> None:
        """End a VM an earlier daemon started in ``run_dir`` without recording it (no record owns it). Raises
        nothing."""
        ...
