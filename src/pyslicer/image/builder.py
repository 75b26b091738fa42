"""ensure_image: build (or find up to date) the guest kernel, initramfs and root filesystem.

See docs/guest-contract.md for what the files must contain.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyslicer
from pyslicer.errors import ImageError
from pyslicer.image import _proc, kernel, manifest, rootfs
from pyslicer.image.initramfs import build_initrd
from pyslicer.image.manifest import INITRD, KERNEL_FILES, ROOTFS

GUEST_DIR = Path(__file__).parent / "guest"
BUSYBOX = Path("/bin/busybox")

_STATIC_FILES: dict[str, tuple[str, int]] = {
    "etc/fstab": ("/dev/vda / ext4 rw,relatime 0 1\n", 0o644),
    "etc/hostname": ("slicer\n", 0o644),
    "etc/hosts": (
        "127.0.0.1\tlocalhost\n127.0.1.1\tslicer\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        0o644,
    ),
    # debootstrap copies the host's resolv.conf; host resolvers mean nothing inside a guest.
    "etc/resolv.conf": ("", 0o644),
    f"etc/sudoers.d/{rootfs.DEFAULT_USER}": (f"{rootfs.DEFAULT_USER} ALL=(ALL) NOPASSWD:ALL\n", 0o440),
}
# (file under guest/, path in the rootfs, mode)
_GUEST_FILES: tuple[tuple[str, str, int], ...] = (
    ("inittab", "etc/inittab", 0o644),
    ("rc.sysinit", f"{rootfs.AGENT_DIR}/rc.sysinit", 0o755),
    ("rc.shutdown", f"{rootfs.AGENT_DIR}/rc.shutdown", 0o755),
    ("rc.sshd", f"{rootfs.AGENT_DIR}/rc.sshd", 0o755),
    ("slicer-agent", "usr/local/bin/slicer-agent", 0o755),
)


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    rootfs: Path
    manifest: dict[str, Any]


def image_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "images" / "default"


@dataclass(frozen=True)
class _Plan:
    kernel_package: str
    kernel_version: str
    mirror: str
    init_script: bytes
    busybox: bytes
    files: dict[str, rootfs.RootfsFile]
    inputs: dict[str, Any]


def agent_sources(package_dir: Path | None = None) -> dict[str, Path]:
    """The agent's files as {path under the agent dir: source}; whatever of them exists."""
    pkg = package_dir or Path(pyslicer.__file__).parent
    found: dict[str, Path] = {}
    if (pkg / "__init__.py").is_file():
        found["pyslicer/__init__.py"] = pkg / "__init__.py"
    for sub in ("protocol", "agent"):
        for src in sorted((pkg / sub).glob("*.py")):
            found[f"pyslicer/{sub}/{src.name}"] = src
    return found


def _read_local_inputs() -> tuple[bytes, bytes, dict[str, rootfs.RootfsFile]]:
    if not BUSYBOX.is_file():
        raise ImageError(f"image: {BUSYBOX} is missing; install the Debian package 'busybox-static'")
    if not rootfs.is_static_elf(BUSYBOX):
        raise ImageError(f"image: {BUSYBOX} is not statically linked; install the Debian package 'busybox-static'")
    busybox = BUSYBOX.read_bytes()
    init_script = (GUEST_DIR / "init").read_bytes()
    files: dict[str, rootfs.RootfsFile] = {}

    def add(path: str, data: bytes, mode: int) -> None:
        files[path] = rootfs.RootfsFile(path, data, mode)

    add("usr/local/sbin/busybox", busybox, 0o755)
    for name, dest, mode in _GUEST_FILES:
        add(dest, (GUEST_DIR / name).read_bytes(), mode)
    for path, (text, mode) in _STATIC_FILES.items():
        add(path, text.encode(), mode)
    for rel, src in agent_sources().items():
        add(f"{rootfs.AGENT_DIR}/{rel}", src.read_bytes(), 0o644)
    return init_script, busybox, files


async def _plan(progress: Callable[[str], None], cache: Path) -> _Plan:
    package, version = await kernel.resolve_kernel_package(progress, cache / "kernel-package.json")
    mirror = await asyncio.to_thread(rootfs.host_mirror)
    init_script, busybox, files = await asyncio.to_thread(_read_local_inputs)
    inputs: dict[str, Any] = {
        "format": manifest.FORMAT_VERSION,
        "kernel": {"meta_package": kernel.KERNEL_META_PACKAGE, "package": package, "version": version},
        "initrd": {
            "modules": list(kernel.GUEST_MODULES),
            "init_sha256": manifest.sha256_bytes(init_script),
            "busybox_sha256": manifest.sha256_bytes(busybox),
        },
        "rootfs": {
            **rootfs.debootstrap_key(mirror),
            "default_user": {"name": rootfs.DEFAULT_USER, "uid": rootfs.DEFAULT_UID},
            "files": {
                path: {"sha256": manifest.sha256_bytes(f.data), "mode": f"{f.mode:04o}"}
                for path, f in sorted(files.items())
            },
        },
    }
    return _Plan(package, version, mirror, init_script, busybox, files, manifest.normalize(inputs))


def _image(directory: Path, data: dict[str, Any]) -> GuestImage:
    name = manifest.kernel_file(data)
    if name is None:
        raise ImageError(f"image: {directory / manifest.MANIFEST} names no kernel file")
    return GuestImage(directory / name, directory / INITRD, directory / ROOTFS, data)


def _changed_groups(old: Mapping[str, Any], inputs: Mapping[str, Any]) -> list[str]:
    previous = old.get("inputs")
    if not isinstance(previous, dict):
        return ["all"]
    return [group for group, value in inputs.items() if previous.get(group) != value]


@contextlib.asynccontextmanager
async def _build_lock(path: Path, progress: Callable[[str], None]) -> AsyncIterator[None]:
    """An exclusive flock on `path`, polled so that waiting stays cancellable and off the event loop."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    progress("image: another process is building the image; waiting for it")
                    waiting = True
                await asyncio.sleep(0.25)
        yield
    finally:
        os.close(fd)


async def ensure_image(data_dir: Path, *, progress: Callable[[str], None] = print, force: bool = False) -> GuestImage:
    """Return the guest image under `image_dir(data_dir)`, building it first if missing or stale."""
    started = time.monotonic()
    target = image_dir(data_dir)
    images = target.parent
    images.mkdir(parents=True, exist_ok=True)

    existing = await asyncio.to_thread(manifest.load, target)
    usable = existing is not None and await asyncio.to_thread(manifest.outputs_present, target, existing)
    try:
        plan = await _plan(progress, images / "cache")
    except ImageError as exc:
        if existing is not None and usable and not force:
            progress(f"image: cannot check whether the image is current ({exc}); using the existing one")
            return _image(target, existing)
        raise
    if existing is not None and usable and not force:
        if manifest.inputs_match(existing, plan.inputs):
            return _image(target, existing)
        progress(f"image: inputs changed ({', '.join(_changed_groups(existing, plan.inputs))}); rebuilding")

    async with _build_lock(images / ".lock", progress):
        existing = await asyncio.to_thread(manifest.load, target)
        if not force and manifest.is_current(target, existing, plan.inputs):
            assert existing is not None
            return _image(target, existing)
        for stale in [*images.glob(".build-*"), *images.glob(".work-*"), *images.glob(".old-*")]:
            await rootfs.remove_tree(stale)
        image = await _build(images, target, plan, None if force else existing, force, progress)
    progress(f"image: ready in {time.monotonic() - started:.1f}s")
    return image


async def _build(
    images: Path,
    target: Path,
    plan: _Plan,
    existing: dict[str, Any] | None,
    force: bool,
    progress: Callable[[str], None],
) -> GuestImage:
    started = time.monotonic()
    reuse = manifest.reusable_outputs(existing, plan.inputs) if existing is not None else set()
    if existing is not None:
        reuse = {n for n in reuse if manifest.outputs_present(target, existing) and (target / n).is_file()}
    kernel_name = next((n for n in KERNEL_FILES if n in reuse), None)
    need_kernel_pkg = kernel_name is None or INITRD not in reuse
    need_rootfs = ROOTFS not in reuse

    if need_kernel_pkg:
        for t in ("apt-get", "dpkg-deb", "lz4", "depmod"):
            _proc.tool(t)
    if need_rootfs:
        for t in ("debootstrap", "mkfs.ext4", "e2fsck", "chroot", "cp", "umount"):
            _proc.tool(t)
        if os.geteuid() != 0:
            raise ImageError("image: building the guest rootfs needs root (debootstrap, chroot); run as root")

    build = Path(tempfile.mkdtemp(prefix=".build-", dir=images))
    build.chmod(0o755)
    work = Path(tempfile.mkdtemp(prefix=".work-", dir=images))
    try:
        outputs: dict[str, Any] = {}
        release = str(existing.get("kernel_release", "")) if existing else ""
        for name in sorted(reuse):
            assert existing is not None
            await asyncio.to_thread(_link_or_copy, target / name, build / name)
            outputs[name] = existing["outputs"][name]
        if reuse:
            progress(f"image: reusing {', '.join(sorted(reuse))} from the previous build")

        if need_kernel_pkg:
            kpkg = await kernel.fetch_kernel(work, plan.kernel_package, plan.kernel_version, progress)
            release = kpkg.release
            if kernel_name is None:
                if await kernel.extract_vmlinux(kpkg.bzimage, build / "vmlinux", work, progress):
                    kernel_name = "vmlinux"
                else:
                    kernel_name = "vmlinuz"
                    await asyncio.to_thread(shutil.copyfile, kpkg.bzimage, build / "vmlinuz")
            if INITRD not in reuse:
                progress(f"image: building {INITRD} ({', '.join(kernel.GUEST_MODULES)})")
                modules = await kernel.prepare_modules(kpkg, kernel.GUEST_MODULES)
                initrd = await asyncio.to_thread(build_initrd, plan.init_script, plan.busybox, modules)
                await asyncio.to_thread((build / INITRD).write_bytes, initrd)
            await rootfs.remove_tree(kpkg.root)

        if need_rootfs:
            base = await rootfs.debootstrap_tree(images / "cache", plan.mirror, progress, force=force)
            await rootfs.build_rootfs(base, work / "rootfs", plan.files, build / ROOTFS, progress)
            await rootfs.remove_tree(work / "rootfs")

        assert kernel_name is not None
        for name in [kernel_name, INITRD, ROOTFS]:
            if name not in outputs:
                path = build / name
                progress(f"image: hashing {name}")
                digest = await asyncio.to_thread(manifest.sha256_file, path)
                outputs[name] = {"size": path.stat().st_size, "sha256": digest}

        data: dict[str, Any] = {
            "format": manifest.FORMAT_VERSION,
            "inputs": plan.inputs,
            "outputs": outputs,
            "kernel_release": release,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "build_seconds": round(time.monotonic() - started, 1),
        }
        await asyncio.to_thread(manifest.write, build, data)
        await asyncio.to_thread(_swap_into_place, build, target)
        sizes = ", ".join(f"{n} {outputs[n]['size'] / rootfs.MIB:.1f} MiB" for n in sorted(outputs))
        progress(f"image: built {target} ({sizes})")
        return _image(target, data)
    finally:
        await rootfs.remove_tree(work)
        await rootfs.remove_tree(build)


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _swap_into_place(build: Path, target: Path) -> None:
    """Replace `target` with `build` so that readers see the old image or the new one, never a mix."""
    old: Path | None = None
    if target.exists():
        old = target.with_name(f".old-{os.getpid()}-{time.time_ns()}")
        os.rename(target, old)
    try:
        os.rename(build, target)
    except OSError:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
