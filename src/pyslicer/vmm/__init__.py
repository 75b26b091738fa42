"""Hypervisors: how a VM process is started and controlled."""

from pyslicer.vmm.accel import choose_accel, hardware_kvm_available
from pyslicer.vmm.base import Accel, BlockStats, GuestMemory, Hypervisor, MemoryTuning, Nic, VMProcess, VMSpec
from pyslicer.vmm.process import ProcessIdentity
from pyslicer.vmm.qemu import QemuHypervisor, QemuVM, qemu_hypervisor

__all__ = [
    "Accel",
    "BlockStats",
    "GuestMemory",
    "Hypervisor",
    "MemoryTuning",
    "Nic",
    "ProcessIdentity",
    "QemuHypervisor",
    "QemuVM",
    "VMProcess",
    "VMSpec",
    "choose_accel",
    "hardware_kvm_available",
    "qemu_hypervisor",
]
