"""The memory parts of QEMU's command line: the code cache only under TCG, the balloon when reporting is on."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyslicer.vmm import MemoryTuning, VMSpec
from pyslicer.vmm.base import Accel
from pyslicer.vmm.qemu import build_command

SPEC = VMSpec(
    name="sbox-1",
    vcpus=1,
    ram_bytes=512 * 1024 * 1024,
    kernel=Path("/images/vmlinux"),
    initrd=Path("/images/initrd.gz"),
    disk=Path("/disks/sbox-1.qcow2"),
    run_dir=Path("/run/sbox-1"),
    console_log=Path("/logs/sbox-1.log"),
)


def option(command: list[str], name: str) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command[:-1]) if arg == name]


def kernel_args(command: list[str]) -> list[str]:
    return option(command, "-append")[0].split()


def test_tcg_gets_the_configured_code_cache() -> None:
    command = build_command("qemu", SPEC, "tcg", MemoryTuning(tcg_tb_size_mib=48))
    assert option(command, "-accel") == ["tcg,tb-size=48"]


def test_kvm_has_no_code_cache() -> None:
    command = build_command("qemu", SPEC, "kvm", MemoryTuning(tcg_tb_size_mib=48))
    assert option(command, "-accel") == ["kvm"]


@pytest.mark.parametrize("accel", ["tcg", "kvm"])
def test_the_balloon_reports_free_pages_and_deflates_on_oom(accel: Accel) -> None:
    devices = option(build_command("qemu", SPEC, accel), "-device")
    assert "virtio-balloon-device,free-page-reporting=on,deflate-on-oom=on" in devices
    assert "init_on_alloc=0" in kernel_args(build_command("qemu", SPEC, accel))


def test_no_balloon_without_free_page_reporting() -> None:
    devices = option(build_command("qemu", SPEC, "tcg", MemoryTuning(free_page_reporting=False)), "-device")
    assert not [device for device in devices if "balloon" in device]
