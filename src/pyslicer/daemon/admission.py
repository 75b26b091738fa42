"""Host memory admission: a create that would commit more memory than this host should back is refused.

A VM commits its RAM size plus what its VMM holds beside the guest (QEMU itself and, under TCG, its code cache).
The sum over every VM that runs (or is starting, or paused) may reach ``memory_overcommit_ratio`` times the
host's RAM: guests hand back what they free (free page reporting), so most of a sandbox's RAM is never held
on the host, and a ratio above 1 is what lets a host run more sandboxes than its RAM divided by their size
(docs/sizing.md). A create past that limit, or on a host that has too little memory available right now to boot
one more VM, is refused with Conflict (409) naming the limit; the VMs that run are left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pyslicer.errors import Conflict

MIB = 1024 * 1024
GIB = 1024 * MIB
# QEMU beside the guest's RAM and the code cache: its own heap, device state and the libraries it maps,
# measured at ~40-50 MiB RSS on QEMU 7.2 microvm (docs/sizing.md).
VMM_OVERHEAD_BYTES = 48 * MIB
# What a booting guest touches at once (kernel, initramfs, page tables, the agent): ~70-120 MiB measured.
BOOT_FOOTPRINT_BYTES = 128 * MIB
# Kept for the host itself when it is short of memory: the daemon, page cache for the disks.
HOST_RESERVE_BYTES = 256 * MIB


@dataclass(frozen=True, slots=True)
class HostMemory:
    total_bytes: int
    available_bytes: int


def parse_meminfo(text: str) -> HostMemory:
    """MemTotal and MemAvailable from ``/proc/meminfo`` (0 where absent)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if key in ("MemTotal", "MemAvailable") and fields and fields[0].isdigit():
            values[key] = int(fields[0]) * 1024
    return HostMemory(values.get("MemTotal", 0), values.get("MemAvailable", 0))


def read_host_memory() -> HostMemory:
    """Reads one small /proc file: cheap enough to call on the event loop."""
    with open("/proc/meminfo") as file:
        return parse_meminfo(file.read())


def _size(value: int) -> str:
    return f"{value / GIB:.1f} GiB" if value >= GIB else f"{value // MIB} MiB"


@dataclass(frozen=True, slots=True)
class MemoryCommitment:
    """What the VMs have committed against the limit, and the limit itself."""

    committed_bytes: int
    limit_bytes: int


class MemoryAdmission:
    def __init__(
        self,
        ratio: float,
        *,
        vmm_overhead_bytes: int = VMM_OVERHEAD_BYTES,
        read: Callable[[], HostMemory] = read_host_memory,
    ) -> None:
        self.ratio = ratio
        self.vmm_overhead_bytes = vmm_overhead_bytes
        self._read = read

    def commitment(self, ram_bytes: int) -> int:
        """What one VM of ``ram_bytes`` counts against the limit."""
        return ram_bytes + self.vmm_overhead_bytes

    def commitment_of(self, running: Iterable[int]) -> MemoryCommitment:
        """The VMs of the sizes in ``running`` against the limit (reads /proc/meminfo)."""
        limit = int(self._read().total_bytes * self.ratio)
        return MemoryCommitment(sum(self.commitment(ram) for ram in running), limit)

    def check(self, hostname: str, ram_bytes: int, running: Iterable[int]) -> None:
        """Admit a new VM of ``ram_bytes`` beside VMs of the sizes in ``running``. Raises Conflict (code
        ``memory_overcommit``) past the limit, or (``host_memory_low``) when the host has too little memory
        available to boot it now."""
        host = self._read()
        limit = int(host.total_bytes * self.ratio)
        new = self.commitment(ram_bytes)
        committed = sum(self.commitment(ram) for ram in running)
        if committed + new > limit:
            raise Conflict(
                f"host memory: {hostname} ({_size(ram_bytes)} of RAM + {_size(self.vmm_overhead_bytes)} for its "
                f"VMM) would bring the memory committed to VMs to {_size(committed + new)}, past the limit of "
                f"{_size(limit)} (memory_overcommit_ratio {self.ratio:g} x {_size(host.total_bytes)} of host RAM); "
                "the running VMs are untouched",
                code="memory_overcommit",
            )
        needed = self.vmm_overhead_bytes + min(ram_bytes, BOOT_FOOTPRINT_BYTES) + HOST_RESERVE_BYTES
        if host.available_bytes < needed:
            raise Conflict(
                f"host memory: only {_size(host.available_bytes)} available, and booting {hostname} needs about "
                f"{_size(needed)} (with {_size(HOST_RESERVE_BYTES)} kept for the host); the running VMs are "
                "untouched",
                code="host_memory_low",
            )
