"""pyslicer.image: the pure parts, plus one real build (integration, needs root and the Debian mirror)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pyslicer.errors import ImageError
from pyslicer.image import GuestImage, ensure_image, image_dir
from pyslicer.image import manifest as mf
from pyslicer.image.builder import GUEST_DIR, agent_sources
from pyslicer.image.initramfs import CpioEntry, build_initrd, newc_archive
from pyslicer.image.kernel import (
    LZ4_FRAME_MAGIC,
    LZ4_LEGACY_MAGIC,
    extract_vmlinux,
    find_lz4_payload,
    module_load_order,
    module_name,
    parse_kernel_depends,
)
from pyslicer.image.rootfs import apt_mirror, is_static_elf, mounts_under, rootfs_size
from tests.conftest import IMAGE_CACHE

# --- bzImage payload ---------------------------------------------------------------------------


def fake_bzimage(payload: bytes, uncompressed_size: int, setup_sects: int = 3, offset: int = 0x40) -> bytes:
    """A blob shaped like an x86 bzImage: boot header in the setup area, payload in the protected-mode part."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    body = payload + struct.pack("<I", uncompressed_size)
    struct.pack_into("<II", setup, 0x248, offset, len(body))
    return bytes(setup) + b"\xcc" * offset + body + b"\0" * 100


def test_payload_from_boot_header() -> None:
    payload = LZ4_LEGACY_MAGIC + b"compressed-bytes"
    blob = fake_bzimage(payload, 12345)
    found = find_lz4_payload(blob)
    assert found is not None
    assert blob[found.start : found.end] == payload
    assert found.expected_size == 12345


def test_payload_found_by_magic_without_header() -> None:
    blob = b"\x90" * 1000 + LZ4_FRAME_MAGIC + b"rest"
    found = find_lz4_payload(blob)
    assert found is not None
    assert (found.start, found.end, found.expected_size) == (1000, len(blob), None)


def test_payload_header_not_pointing_at_lz4_falls_back_to_scan() -> None:
    blob = bytearray(fake_bzimage(b"\x1f\x8b gzip payload", 10))
    blob += LZ4_LEGACY_MAGIC + b"xx"
    found = find_lz4_payload(bytes(blob))
    assert found is not None and found.start == len(blob) - 6 and found.expected_size is None


def test_no_payload() -> None:
    assert find_lz4_payload(b"\0" * 4096) is None


@pytest.mark.skipif(shutil.which("lz4") is None, reason="needs the lz4 tool")
async def test_extract_vmlinux_round_trip(tmp_path: Path) -> None:
    elf = b"\x7fELF" + os.urandom(50_000) + b"\0" * 200_000
    raw = tmp_path / "vmlinux.bin"
    raw.write_bytes(elf)
    # The kernel build compresses with `lz4 -l` (legacy frames), like this.
    packed = subprocess.run(["lz4", "-l", "-9", "-c", str(raw)], check=True, capture_output=True).stdout
    assert packed.startswith(LZ4_LEGACY_MAGIC)
    bz = tmp_path / "vmlinuz"
    bz.write_bytes(fake_bzimage(packed, len(elf)))
    messages: list[str] = []
    out = tmp_path / "vmlinux"
    assert await extract_vmlinux(bz, out, tmp_path, messages.append)
    assert out.read_bytes() == elf
    assert messages == []


@pytest.mark.skipif(shutil.which("lz4") is None, reason="needs the lz4 tool")
async def test_extract_vmlinux_rejects_non_elf(tmp_path: Path) -> None:
    raw = tmp_path / "data"
    raw.write_bytes(b"not an elf" * 1000)
    packed = subprocess.run(["lz4", "-l", "-c", str(raw)], check=True, capture_output=True).stdout
    bz = tmp_path / "vmlinuz"
    bz.write_bytes(fake_bzimage(packed, 10_000))
    messages: list[str] = []
    assert not await extract_vmlinux(bz, tmp_path / "vmlinux", tmp_path, messages.append)
    assert not (tmp_path / "vmlinux").exists()
    assert "bzImage instead" in messages[0]


# --- modules -----------------------------------------------------------------------------------

MODULES_DEP = """\
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko \
kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/char/hw_random/virtio-rng.ko.xz: kernel/drivers/virtio/virtio.ko
"""


def test_module_load_order_puts_dependencies_first() -> None:
    order = module_load_order(MODULES_DEP, ["virtio_mmio", "virtio_blk", "virtio_console", "virtio_net"])
    names = [module_name(p) for p in order]
    assert sorted(names) == sorted(set(names)), "no module twice"
    assert set(names) == {
        "virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console",
        "failover", "net_failover", "virtio_net",
    }  # fmt: skip
    pos = {n: i for i, n in enumerate(names)}
    for line in MODULES_DEP.splitlines():
        mod, _, deps = line.partition(":")
        if module_name(mod) in pos:
            for dep in deps.split():
                assert pos[module_name(dep)] < pos[module_name(mod)], (dep, mod)
    assert order[names.index("virtio_net")] == "kernel/drivers/net/virtio_net.ko"


def test_module_names_normalise_dashes_and_compression() -> None:
    assert module_name("kernel/drivers/char/hw_random/virtio-rng.ko.xz") == "virtio_rng"
    assert module_load_order(MODULES_DEP, ["virtio-rng"])[-1].endswith("virtio-rng.ko.xz")


def test_builtin_modules_are_skipped_and_missing_ones_fail() -> None:
    dep = "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko\n"
    assert module_load_order(dep, ["virtio_blk"], ["kernel/drivers/virtio/virtio.ko"]) == [
        "kernel/drivers/block/virtio_blk.ko"
    ]
    with pytest.raises(ImageError, match="virtio"):
        module_load_order(dep, ["virtio_blk"])


def test_module_cycle_is_an_error() -> None:
    with pytest.raises(ImageError, match="cycle"):
        module_load_order("a.ko: b.ko\nb.ko: a.ko\n", ["a"])


# --- manifest ----------------------------------------------------------------------------------


def inputs(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "format": mf.FORMAT_VERSION,
        "kernel": {"package": "linux-image-6.1.0-57-cloud-amd64", "version": "6.1.192-3"},
        "initrd": {"modules": ("virtio_mmio", "virtio_blk"), "init_sha256": "aa"},
        "rootfs": {"suite": "bookworm", "include": ["python3"], "files": {"a.py": {"sha256": "11"}}},
    }
    base.update(overrides)
    return base


def manifest_for(current: dict[str, object]) -> dict[str, object]:
    outputs = {name: {"size": 1, "sha256": "00"} for name in ("vmlinux", "initrd.gz", "rootfs.ext4")}
    return {"inputs": mf.normalize(current), "outputs": outputs}


def test_inputs_match_after_a_json_round_trip() -> None:
    saved = json.loads(json.dumps(manifest_for(inputs())))
    assert mf.inputs_match(saved, inputs())
    assert not mf.inputs_match(saved, inputs(format=mf.FORMAT_VERSION + 1))


def test_agent_change_reuses_kernel_and_initrd() -> None:
    old = manifest_for(inputs())
    new = inputs(rootfs={"suite": "bookworm", "include": ["python3"], "files": {"a.py": {"sha256": "22"}}})
    assert not mf.inputs_match(old, new)
    assert mf.reusable_outputs(old, new) == {"vmlinux", "initrd.gz"}


def test_kernel_change_reuses_only_rootfs() -> None:
    old = manifest_for(inputs())
    new = inputs(kernel={"package": "linux-image-6.1.0-58-cloud-amd64", "version": "6.1.200-1"})
    assert mf.reusable_outputs(old, new) == {"rootfs.ext4"}


def test_init_change_rebuilds_initrd_only() -> None:
    old = manifest_for(inputs())
    new = inputs(initrd={"modules": ["virtio_mmio", "virtio_blk"], "init_sha256": "bb"})
    assert mf.reusable_outputs(old, new) == {"vmlinux", "rootfs.ext4"}


def test_format_change_reuses_nothing() -> None:
    assert mf.reusable_outputs(manifest_for(inputs()), inputs(format=99)) == set()
    assert mf.reusable_outputs(None, inputs()) == set()


def test_outputs_present_checks_files_and_sizes(tmp_path: Path) -> None:
    data = manifest_for(inputs())
    assert not mf.outputs_present(tmp_path, data)
    for name in ("vmlinux", "initrd.gz", "rootfs.ext4"):
        (tmp_path / name).write_bytes(b"x")
    assert mf.outputs_present(tmp_path, data)
    assert mf.is_current(tmp_path, data, inputs())
    (tmp_path / "rootfs.ext4").write_bytes(b"xx")
    assert not mf.outputs_present(tmp_path, data)
    assert mf.kernel_file(data) == "vmlinux"


def test_manifest_write_and_load(tmp_path: Path) -> None:
    mf.write(tmp_path, {"a": 1})
    assert mf.load(tmp_path) == {"a": 1}
    assert mf.load(tmp_path / "missing") is None


# --- host configuration ------------------------------------------------------------------------

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""


def test_apt_mirror_deb822_and_one_line() -> None:
    assert apt_mirror([("debian.sources", DEB822)]) == "http://deb.debian.org/debian"
    security_only = DEB822.split("\n\n")[1]
    assert apt_mirror([("debian.sources", security_only)]) is None
    disabled = "Enabled: no\nTypes: deb\nURIs: http://a/debian\nSuites: bookworm\n"
    assert apt_mirror([("x.sources", disabled)]) is None
    one_line = (
        "# deb http://old/debian bookworm main\n"
        "deb-src http://src/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main contrib\n"
    )
    assert apt_mirror([("sources.list", one_line)]) == "http://mirror.example/debian"
    assert apt_mirror([("sources.list", ""), ("debian.sources", DEB822)]) == "http://deb.debian.org/debian"


def test_parse_kernel_depends() -> None:
    show = (
        "Package: linux-image-cloud-amd64\nVersion: 6.1.192-3\n"
        "Depends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)\n"
    )
    assert parse_kernel_depends(show) == ("linux-image-6.1.0-57-cloud-amd64", "6.1.192-3")
    assert parse_kernel_depends("Depends: linux-image-6.1.0-9-cloud-amd64\n") == (
        "linux-image-6.1.0-9-cloud-amd64",
        None,
    )
    assert parse_kernel_depends("Package: x\n") is None


def test_rootfs_size() -> None:
    mib = 1 << 20
    assert rootfs_size(260 * mib) == 1024 * mib
    assert rootfs_size(900 * mib) == 1216 * mib
    assert rootfs_size(900 * mib) % (64 * mib) == 0


def test_mounts_under_parses_mountinfo(tmp_path: Path) -> None:
    info = (
        f"36 25 0:32 / {tmp_path}/root/proc rw - proc proc rw\n"
        f"37 25 0:33 / {tmp_path}/root/sys rw - sysfs sysfs rw\n"
        f"38 25 0:34 / {tmp_path}x/other rw - tmpfs tmpfs rw\n"
        "39 25 0:35 / / rw - ext4 /dev/vda rw\n"
    )
    assert sorted(mounts_under(tmp_path, info)) == [f"{tmp_path}/root/proc", f"{tmp_path}/root/sys"]


def test_static_elf_detection() -> None:
    assert not is_static_elf(Path(sys.executable).resolve())
    if Path("/bin/busybox").is_file():
        # Debian's busybox-static (what the README installs) must pass; a dynamic busybox must not.
        dynamic = b"/lib64/ld-linux-x86-64.so.2" in Path("/bin/busybox").read_bytes()
        assert is_static_elf(Path("/bin/busybox")) is not dynamic


# --- initramfs and guest scripts ---------------------------------------------------------------


def parse_newc(archive: bytes) -> dict[str, tuple[int, bytes]]:
    entries: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while True:
        assert archive[pos : pos + 6] == b"070701"
        fields = [int(archive[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = archive[name_start : name_start + namesize - 1].decode()
        data_start = name_start + namesize + (-(110 + namesize) % 4)
        data = archive[data_start : data_start + size]
        pos = data_start + size + (-size % 4)
        if name == "TRAILER!!!":
            assert pos == len(archive)
            return entries
        entries[name] = (mode, data)


def test_initrd_layout() -> None:
    modules = [("virtio_ring", b"ring"), ("virtio", b"virtio!"), ("virtio_blk", b"blk")]
    initrd = build_initrd(b"#!/bin/sh\necho hi\n", b"BUSYBOX", modules)
    entries = parse_newc(gzip.decompress(initrd))
    assert entries["init"] == (stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n")
    assert entries["bin/busybox"][1] == b"BUSYBOX"
    assert entries["bin/sh"] == (stat.S_IFLNK | 0o777, b"busybox")
    assert stat.S_ISCHR(entries["dev/console"][0])
    assert entries["etc/modules"][1] == b"virtio_ring\nvirtio\nvirtio_blk\n"
    assert entries["lib/modules/virtio.ko"][1] == b"virtio!"
    for d in ("proc", "sys", "dev", "newroot"):
        assert stat.S_ISDIR(entries[d][0])
    assert build_initrd(b"x", b"y", modules) == build_initrd(b"x", b"y", modules), "reproducible"


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs GNU cpio")
def test_newc_archive_readable_by_cpio() -> None:
    archive = newc_archive([CpioEntry("a", stat.S_IFDIR | 0o755), CpioEntry("a/b", stat.S_IFREG | 0o644, b"xyz")])
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=archive, capture_output=True, check=True)
    assert listing.stdout.decode().split() == ["a", "a/b"]


@pytest.mark.skipif(not Path("/bin/busybox").is_file(), reason="needs busybox")
@pytest.mark.parametrize("script", ["init", "rc.sysinit", "rc.shutdown", "slicer-agent"])
def test_guest_scripts_parse(script: str) -> None:
    subprocess.run(["/bin/busybox", "sh", "-n", str(GUEST_DIR / script)], check=True)


def test_agent_sources_tolerates_a_partial_package(tmp_path: Path) -> None:
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "server.py").write_text("")
    (tmp_path / "agent" / "notes.txt").write_text("")
    assert set(agent_sources(tmp_path)) == {"pyslicer/__init__.py", "pyslicer/agent/server.py"}


def test_image_dir(tmp_path: Path) -> None:
    assert image_dir(tmp_path) == tmp_path / "images" / "default"


# --- a real build --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def image_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The machine's shared test image cache (with its debootstrap cache), as the integration tests use."""
    IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
    return IMAGE_CACHE


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="building the rootfs needs root")
async def test_ensure_image_builds_then_reuses(image_data_dir: Path) -> None:
    messages: list[str] = []
    image = await ensure_image(image_data_dir, progress=messages.append)
    assert isinstance(image, GuestImage)
    assert image.kernel.parent == image.initrd.parent == image.rootfs.parent == image_dir(image_data_dir)
    with image.kernel.open("rb") as f:
        head = f.read(4)
    assert head == b"\x7fELF" if image.kernel.name == "vmlinux" else image.kernel.name == "vmlinuz"
    assert image.initrd.read_bytes()[:2] == b"\x1f\x8b"
    for name, info in image.manifest["outputs"].items():
        assert (image.kernel.parent / name).stat().st_size == info["size"]
    assert image.manifest["inputs"]["kernel"]["package"].startswith("linux-image-")
    agent_files = image.manifest["inputs"]["rootfs"]["files"]
    assert "usr/local/lib/slicer-agent/pyslicer/__init__.py" in agent_files

    e2fsck = shutil.which("e2fsck", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    assert e2fsck is not None
    subprocess.run([e2fsck, "-fn", str(image.rootfs)], check=True, capture_output=True)
    debugfs = shutil.which("debugfs", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if debugfs is not None:
        inittab = subprocess.run(
            [debugfs, "-R", "cat /etc/inittab", str(image.rootfs)], capture_output=True, check=True
        ).stdout
        assert b"::respawn:/usr/local/bin/slicer-agent" in inittab

    again: list[str] = []
    second = await ensure_image(image_data_dir, progress=again.append)
    assert second.manifest == image.manifest
    assert not any("building" in m or "debootstrap" in m for m in again), again
    assert not list(image_dir(image_data_dir).parent.glob(".build-*"))
    assert not list(image_dir(image_data_dir).parent.glob(".work-*"))
