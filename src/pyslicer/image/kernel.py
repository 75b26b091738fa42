"""The guest kernel: Debian's cloud kernel package, its uncompressed vmlinux and its virtio modules."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import lzma
import os
import re
import stat
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pyslicer.errors import ImageError
from pyslicer.image import _proc

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
# What QEMU microvm needs to reach the disk, the agent port and the network, and the balloon through which
# the guest reports the pages it frees (page reporting itself is built in: CONFIG_PAGE_REPORTING=y).
GUEST_MODULES: tuple[str, ...] = ("virtio_mmio", "virtio_blk", "virtio_console", "virtio_net", "virtio_balloon")

LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"
ELF_MAGIC = b"\x7fELF"

_apt_answer: dict[str, tuple[str, str]] = {}


@dataclass(frozen=True)
class KernelPackage:
    root: Path  # the unpacked .deb
    release: str  # e.g. 6.1.0-57-cloud-amd64
    bzimage: Path
    modules_dir: Path


@dataclass(frozen=True)
class Lz4Payload:
    start: int
    end: int
    expected_size: int | None  # from the le32 the kernel build appends, when the header locates it


def find_lz4_payload(blob: bytes) -> Lz4Payload | None:
    """Locate the LZ4-compressed vmlinux inside a bzImage.

    Prefer the x86 boot protocol header (payload_offset/payload_length, exact); fall back to
    scanning for an LZ4 magic when the header is absent or does not point at LZ4 data.
    """
    if len(blob) >= 0x250 and blob[0x202:0x206] == b"HdrS":
        setup_sects = blob[0x1F1] or 4
        offset, length = struct.unpack_from("<II", blob, 0x248)
        start = (setup_sects + 1) * 512 + offset
        end = start + length
        if length > 8 and end <= len(blob) and blob[start : start + 4] in (LZ4_LEGACY_MAGIC, LZ4_FRAME_MAGIC):
            (size,) = struct.unpack_from("<I", blob, end - 4)
            return Lz4Payload(start, end - 4, size)
    hits = [i for i in (blob.find(LZ4_LEGACY_MAGIC), blob.find(LZ4_FRAME_MAGIC)) if i >= 0]
    if not hits:
        return None
    return Lz4Payload(min(hits), len(blob), None)


def module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def module_load_order(modules_dep: str, wanted: Iterable[str], builtin: Iterable[str] = ()) -> list[str]:
    """Paths (relative to the modules dir) of `wanted` and their dependencies, dependencies first.

    Modules built into the kernel (names from modules.builtin) are skipped.
    """
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        path = path.strip()
        deps[module_name(path)] = (path, [module_name(p) for p in rest.split()])
    builtin_names = {module_name(b) for b in builtin}

    order: list[str] = []
    done: set[str] = set()
    active: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in active:
            raise ImageError(f"image: kernel module dependency cycle: {' -> '.join([*active, name])}")
        entry = deps.get(name)
        if entry is None:
            if name in builtin_names:
                done.add(name)
                return
            raise ImageError(f"image: kernel module {name} is neither in modules.dep nor built in")
        active.append(name)
        for dep in entry[1]:
            visit(dep)
        active.pop()
        done.add(name)
        order.append(entry[0])

    for want in wanted:
        visit(module_name(want))
    return order


def apt_state_signature() -> str:
    """Changes whenever apt's answer could: package lists, sources or pinning."""
    h = hashlib.sha256()
    paths: list[Path] = [Path("/etc/apt/sources.list"), Path("/etc/apt/preferences")]
    for folder in ("/var/lib/apt/lists", "/etc/apt/sources.list.d", "/etc/apt/preferences.d"):
        with contextlib.suppress(OSError):
            paths += sorted(Path(folder).iterdir())
    for path in paths:
        with contextlib.suppress(OSError):
            st = path.stat()
            if stat.S_ISREG(st.st_mode):
                h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


async def resolve_kernel_package(progress: Callable[[str], None], cache_file: Path | None = None) -> tuple[str, str]:
    """(package, version) of the current Debian cloud kernel, e.g. linux-image-6.1.0-57-cloud-amd64.

    apt-cache takes over a second per call on hosts without pkgcache.bin, so answers are cached in
    memory and in `cache_file`, keyed on the state of apt's lists.
    """
    signature = await asyncio.to_thread(apt_state_signature)
    if signature in _apt_answer:
        return _apt_answer[signature]
    if cache_file is not None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            saved = json.loads(await asyncio.to_thread(cache_file.read_text))
            if saved["signature"] == signature:
                remembered = (str(saved["package"]), str(saved["version"]))
                _apt_answer[signature] = remembered
                return remembered
    answer = await _query_apt()
    if answer is None:
        progress("image: apt knows no kernel packages yet; running apt-get update")
        await _proc.run([_proc.tool("apt-get"), "-q", "update"], what="apt-get update")
        signature = await asyncio.to_thread(apt_state_signature)
        answer = await _query_apt()
    if answer is None:
        raise ImageError(
            f"image: apt-cache cannot resolve {KERNEL_META_PACKAGE}; is a Debian bookworm main "
            "repository configured in /etc/apt/sources.list*?"
        )
    _apt_answer[signature] = answer
    if cache_file is not None:
        record = {"signature": signature, "package": answer[0], "version": answer[1]}
        with contextlib.suppress(OSError):
            await asyncio.to_thread(_write_atomic, cache_file, json.dumps(record) + "\n")
    return answer


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def parse_kernel_depends(show_output: str) -> tuple[str, str | None] | None:
    """(kernel package, pinned version or None) from `apt-cache show` of the meta package."""
    depends = re.search(r"^Depends:\s*(.*)$", show_output, re.MULTILINE)
    if depends is None:
        return None
    for alternative in re.split(r"[,|]", depends.group(1)):
        match = re.match(r"\s*(linux-image-[^\s(]+)\s*(?:\(\s*=\s*([^\s)]+)\s*\))?", alternative)
        if match is not None:
            return match.group(1), match.group(2)
    return None


async def _query_apt() -> tuple[str, str] | None:
    apt_cache = _proc.tool("apt-cache")
    code, out = await _proc.run(
        [apt_cache, "show", "--no-all-versions", KERNEL_META_PACKAGE], what="apt-cache show", check=False
    )
    parsed = parse_kernel_depends(out) if code == 0 else None
    if parsed is None:
        return None
    package, version = parsed
    if version is not None:
        return package, version
    code, out = await _proc.run([apt_cache, "show", "--no-all-versions", package], what="apt-cache show", check=False)
    found = re.search(r"^Version:\s*(\S+)", out, re.MULTILINE)
    if code != 0 or found is None:
        return None
    return package, found.group(1)


async def fetch_kernel(work: Path, package: str, version: str, progress: Callable[[str], None]) -> KernelPackage:
    """apt-get download + dpkg-deb -x into `work`; never installs anything into the host."""
    progress(f"image: downloading kernel {package} ({version})")
    download = work / "deb"
    download.mkdir()
    # The _apt sandbox user usually cannot write into the data dir.
    await _proc.run(
        [_proc.tool("apt-get"), "-q", "-o", "APT::Sandbox::User=root", "download", f"{package}={version}"],
        what=f"apt-get download {package}",
        cwd=download,
    )
    debs = sorted(download.glob("*.deb"))
    if not debs:
        raise ImageError(f"image: apt-get download {package} produced no .deb")
    root = work / "kernel"
    await _proc.run([_proc.tool("dpkg-deb"), "-x", debs[0], root], what="dpkg-deb -x")
    images = sorted((root / "boot").glob("vmlinuz-*"))
    if not images:
        raise ImageError(f"image: {debs[0].name} contains no /boot/vmlinuz-*")
    bzimage = images[0]
    release = bzimage.name.removeprefix("vmlinuz-")
    for candidate in (root / "lib" / "modules" / release, root / "usr" / "lib" / "modules" / release):
        if candidate.is_dir():
            modules_dir = candidate
            break
    else:
        raise ImageError(f"image: {debs[0].name} has no modules directory for {release}")
    return KernelPackage(root=root, release=release, bzimage=bzimage, modules_dir=modules_dir)


async def extract_vmlinux(bzimage: Path, dest: Path, work: Path, progress: Callable[[str], None]) -> bool:
    """Write the uncompressed ELF kernel to `dest`; False (with a progress note) if that fails."""
    blob = await asyncio.to_thread(bzimage.read_bytes)
    payload = await asyncio.to_thread(find_lz4_payload, blob)
    if payload is None:
        progress(f"image: no LZ4 payload in {bzimage.name}; booting the bzImage instead")
        return False
    packed = work / "vmlinux.lz4"
    await asyncio.to_thread(packed.write_bytes, blob[payload.start : payload.end])
    del blob
    # Trailing bytes after the LZ4 stream make lz4 exit 1 after a complete decode, so judge the result.
    await _proc.run([_proc.tool("lz4"), "-d", "-q", "-f", packed, dest], what="lz4 -d", check=False)
    ok = await asyncio.to_thread(_looks_like_vmlinux, dest, payload.expected_size)
    packed.unlink(missing_ok=True)
    if not ok:
        dest.unlink(missing_ok=True)
        progress(f"image: could not extract an ELF vmlinux from {bzimage.name}; booting the bzImage instead")
    return ok


def _looks_like_vmlinux(path: Path, expected_size: int | None) -> bool:
    try:
        with path.open("rb") as f:
            magic = f.read(4)
        size = path.stat().st_size
    except OSError:
        return False
    return magic == ELF_MAGIC and (expected_size is None or size == expected_size)


async def prepare_modules(kernel: KernelPackage, wanted: Iterable[str]) -> list[tuple[str, bytes]]:
    """(module name, uncompressed .ko bytes) in load order."""
    dep_file = kernel.modules_dir / "modules.dep"
    if not dep_file.exists():
        # Debian ships modules.dep generated at install time only, so generate it here.
        if kernel.modules_dir.parent.parent.name == "usr" and not (kernel.root / "lib").exists():
            (kernel.root / "lib").symlink_to("usr/lib")
        await _proc.run([_proc.tool("depmod"), "-b", kernel.root, kernel.release], what="depmod")
    dep_text = await asyncio.to_thread(dep_file.read_text)
    builtin_file = kernel.modules_dir / "modules.builtin"
    builtin = (await asyncio.to_thread(builtin_file.read_text)).split() if builtin_file.exists() else []
    order = module_load_order(dep_text, wanted, builtin)
    if any(p.endswith(".ko.zst") for p in order):
        _proc.tool("zstd")
    result: list[tuple[str, bytes]] = []
    for rel in order:
        result.append((module_name(rel), await _read_module(kernel.modules_dir / rel)))
    return result


async def _read_module(path: Path) -> bytes:
    name = path.name
    if name.endswith(".ko.zst"):
        await _proc.run([_proc.tool("zstd"), "-d", "-q", "-f", path, "-o", path.with_suffix("")], what="zstd -d")
        return await asyncio.to_thread(path.with_suffix("").read_bytes)
    data = await asyncio.to_thread(path.read_bytes)
    if name.endswith(".ko.xz"):
        return await asyncio.to_thread(lzma.decompress, data)
    if name.endswith(".ko.gz"):
        return await asyncio.to_thread(gzip.decompress, data)
    return data
