"""The guest root filesystem: a cached debootstrap tree, the agent on top, packed with mkfs.ext4 -d."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pyslicer.errors import ImageError
from pyslicer.image import _proc

SUITE = "bookworm"
VARIANT = "minbase"
INCLUDE: tuple[str, ...] = ("python3", "e2fsprogs", "iproute2", "procps", "openssh-server", "sudo")
ARCH = "amd64"
FALLBACK_MIRROR = "http://deb.debian.org/debian"

MIB = 1 << 20
HEADROOM = 300 * MIB
MIN_ROOTFS = 1024 * MIB
ROOTFS_ALIGN = 64 * MIB

AGENT_DIR = "usr/local/lib/slicer-agent"
# The default user, as in Slicer's images: uid 1000, passwordless sudo, SSH keys from ssh_keys[].
DEFAULT_USER = "ubuntu"
DEFAULT_UID = 1000


@dataclass(frozen=True)
class RootfsFile:
    path: str  # inside the rootfs, no leading slash
    data: bytes
    mode: int


def _deb822_stanzas(text: str) -> Iterable[dict[str, str]]:
    stanza: dict[str, str] = {}
    key = ""
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if stanza:
                yield stanza
            stanza, key = {}, ""
        elif raw[0] in " \t" and key:
            stanza[key] += " " + raw.strip()
        elif ":" in raw:
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            stanza[key] = value.strip()


def apt_mirror(sources: Iterable[tuple[str, str]], suite: str = SUITE) -> str | None:
    """The first `deb` URI serving `suite`, from (file name, text) pairs of apt source files."""
    for name, text in sources:
        if name.endswith(".sources"):
            for stanza in _deb822_stanzas(text):
                if stanza.get("enabled", "yes").lower() == "no":
                    continue
                if "deb" not in stanza.get("types", "").split() or suite not in stanza.get("suites", "").split():
                    continue
                for uri in stanza.get("uris", "").split():
                    if re.match(r"^(https?|ftp|file):", uri):
                        return uri.rstrip("/")
        else:
            for raw in text.splitlines():
                line = re.sub(r"\[[^\]]*\]", " ", raw.split("#", 1)[0]).split()
                if (
                    len(line) >= 3
                    and line[0] == "deb"
                    and line[2] == suite
                    and re.match(r"^(https?|ftp|file):", line[1])
                ):
                    return line[1].rstrip("/")
    return None


def host_mirror() -> str:
    files: list[Path] = [Path("/etc/apt/sources.list")]
    parts = Path("/etc/apt/sources.list.d")
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    sources: list[tuple[str, str]] = []
    for f in files:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            sources.append((f.name, f.read_text()))
    return apt_mirror(sources) or FALLBACK_MIRROR


def rootfs_size(used_bytes: int) -> int:
    size = -(-(used_bytes + HEADROOM) // ROOTFS_ALIGN) * ROOTFS_ALIGN
    return max(size, MIN_ROOTFS)


def is_static_elf(path: Path) -> bool:
    """True for a 64-bit little-endian ELF without a PT_INTERP program header."""
    with path.open("rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return False
        (phoff,) = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    pt_interp = 3
    return all(
        struct.unpack_from("<I", table, i * phentsize)[0] != pt_interp
        for i in range(min(phnum, len(table) // max(phentsize, 1)))
    )


def mounts_under(path: Path, mountinfo: str | None = None) -> list[str]:
    """Mount points at or below `path`, deepest first."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return []
    prefix = str(path.resolve()).rstrip("/")
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = fields[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


async def remove_tree(path: Path) -> None:
    """rmtree that first detaches mounts a killed debootstrap may have left (proc, sys) inside."""
    if not path.exists():
        return
    for point in mounts_under(path):
        await _proc.run([_proc.tool("umount"), "-l", point], what=f"umount {point}", check=False)
    if mounts_under(path):
        raise ImageError(f"image: {path} still has mounts inside; not deleting it")
    await asyncio.to_thread(shutil.rmtree, path, True)


def debootstrap_key(mirror: str) -> dict[str, object]:
    return {"suite": SUITE, "variant": VARIANT, "include": list(INCLUDE), "arch": ARCH, "mirror": mirror}


async def debootstrap_tree(cache: Path, mirror: str, progress: Callable[[str], None], *, force: bool = False) -> Path:
    """A debootstrap'd tree for the current inputs, built once and reused until they change."""
    key = debootstrap_key(mirror)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    entry = cache / f"debootstrap-{digest}"
    if not force and (entry / "done.json").exists() and (entry / "root" / "usr" / "bin" / "python3").exists():
        progress(f"image: reusing cached debootstrap {SUITE} tree")
        return entry / "root"
    cache.mkdir(parents=True, exist_ok=True)
    for stale in cache.glob(".debootstrap-*"):
        await remove_tree(stale)
    tmp = Path(tempfile.mkdtemp(prefix=".debootstrap-", dir=cache))
    started = time.monotonic()
    try:
        debs = cache / "debs"
        debs.mkdir(exist_ok=True)
        progress(f"image: debootstrap {SUITE} from {mirror} (first run, ~1 min)")
        await _proc.run(
            [
                _proc.tool("debootstrap"),
                f"--variant={VARIANT}",
                f"--include={','.join(INCLUDE)}",
                f"--arch={ARCH}",
                f"--cache-dir={debs.resolve()}",
                SUITE,
                tmp / "root",
                mirror,
            ],
            what="debootstrap",
            on_line=_DebootstrapProgress(progress),
        )
        leftover = mounts_under(tmp)
        if leftover:
            raise ImageError(f"image: debootstrap left mounts behind: {', '.join(leftover)}")
        await asyncio.to_thread(
            (tmp / "done.json").write_text,
            json.dumps({**key, "seconds": round(time.monotonic() - started, 1)}),
        )
        for old in cache.glob("debootstrap-*"):
            await remove_tree(old)
        tmp.rename(entry)
    finally:
        await remove_tree(tmp)
    progress(f"image: debootstrap done in {time.monotonic() - started:.0f}s")
    return entry / "root"


class _DebootstrapProgress:
    """Forward debootstrap's I:/W:/E: lines, at most one per-package line a second."""

    _PER_PACKAGE = re.compile(r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) ")

    def __init__(self, progress: Callable[[str], None]) -> None:
        self._progress = progress
        self._last = 0.0

    def __call__(self, line: str) -> None:
        if not line.startswith(("I: ", "W: ", "E: ")):
            return
        if self._PER_PACKAGE.match(line):
            now = time.monotonic()
            if now - self._last < 1.0:
                return
            self._last = now
        self._progress(f"image: debootstrap: {line}")


def _write_file(root: Path, item: RootfsFile) -> None:
    dest = root / item.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The staging tree is hard-linked to the cache: replace files, never write into them.
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, item.mode)
    with os.fdopen(fd, "wb") as f:
        f.write(item.data)
    os.chmod(dest, item.mode)


def _used_bytes(root: Path) -> int:
    seen: set[int] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
            total += st.st_blocks * 512
    return total


async def build_rootfs(
    base: Path,
    staging: Path,
    files: Mapping[str, RootfsFile],
    dest: Path,
    progress: Callable[[str], None],
) -> int:
    """Hard-link copy `base` to `staging`, add `files`, compile the agent, mkfs.ext4 into `dest`."""
    progress("image: assembling rootfs")
    await _proc.run([_proc.tool("cp"), "-a", "--link", base, staging], what="cp -a --link")

    def overlay() -> None:
        for item in files.values():
            _write_file(staging, item)
        (staging / "var/lib/slicer").mkdir(parents=True, exist_ok=True)
        # debootstrap leaves its .debs and package lists behind (~90 MB); a guest has no use for them.
        for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
            for path in staging.glob(pattern):
                if path.is_file() and path.name != "lock":
                    path.unlink()

    await asyncio.to_thread(overlay)
    # Every VM makes its own SSH host key at boot (rc.sshd): keys baked in here would be shared by all of them.
    for key in (staging / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    await _proc.run(
        [
            _proc.tool("chroot"), staging, "/usr/sbin/useradd", "--create-home", "--uid", str(DEFAULT_UID),
            "--user-group", "--groups", "sudo", "--shell", "/bin/bash", DEFAULT_USER,
        ],
        what=f"useradd {DEFAULT_USER} in the guest rootfs",
    )  # fmt: skip
    # Byte-compile with the guest's own python3 (3.11.2): the host's may be another version.
    await _proc.run(
        [
            _proc.tool("chroot"), staging, "/usr/bin/python3", "-m", "compileall", "-q",
            "--invalidation-mode", "checked-hash", f"/{AGENT_DIR}",
        ],
        what="compileall in the guest rootfs",
    )  # fmt: skip
    size = rootfs_size(await asyncio.to_thread(_used_bytes, staging))
    progress(f"image: writing rootfs.ext4 ({size // MIB} MiB)")
    mkfs = _proc.tool("mkfs.ext4")
    # -m 0: everything in the guest runs as root, so reserved blocks would only be wasted.
    await _proc.run(
        [mkfs, "-q", "-F", "-m", "0", "-L", "slicer-root", "-d", staging, dest, f"{size // MIB}M"],
        what="mkfs.ext4",
    )
    await _proc.run([_proc.tool("e2fsck"), "-f", "-n", dest], what="e2fsck of rootfs.ext4")
    return size
