"""The busybox-static initramfs, written as a newc cpio archive in Python (no root, reproducible)."""

from __future__ import annotations

import gzip
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Applets /init calls by name (busybox sh also finds them without these links; they keep PATH honest).
INIT_APPLETS = ("sh", "mount", "insmod", "sleep", "cat", "switch_root", "poweroff", "reboot", "sync")


@dataclass(frozen=True)
class CpioEntry:
    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def newc_archive(entries: Iterable[CpioEntry]) -> bytes:
    out = bytearray()

    def add(entry: CpioEntry, ino: int) -> None:
        name = entry.name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        fields = (
            ino, entry.mode, 0, 0, nlink, 0, len(entry.data),
            0, 0, entry.rdev[0], entry.rdev[1], len(name), 0,
        )  # fmt: skip
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out.extend(header + name + _pad4(len(header) + len(name)))
        out.extend(entry.data + _pad4(len(entry.data)))

    for ino, entry in enumerate(entries, start=1):
        add(entry, ino)
    add(CpioEntry("TRAILER!!!", 0), 0)
    return bytes(out)


def initramfs_entries(init_script: bytes, busybox: bytes, modules: Sequence[tuple[str, bytes]]) -> list[CpioEntry]:
    d = stat.S_IFDIR | 0o755
    entries = [CpioEntry(p, d) for p in ("bin", "dev", "etc", "lib", "lib/modules", "newroot", "proc", "sys")]
    # The kernel opens /dev/console for /init's stdio before devtmpfs is mounted.
    entries.append(CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(CpioEntry("bin/busybox", stat.S_IFREG | 0o755, busybox))
    entries.extend(CpioEntry(f"bin/{a}", stat.S_IFLNK | 0o777, b"busybox") for a in INIT_APPLETS)
    entries.append(CpioEntry("init", stat.S_IFREG | 0o755, init_script))
    order = "".join(f"{name}\n" for name, _ in modules).encode()
    entries.append(CpioEntry("etc/modules", stat.S_IFREG | 0o644, order))
    entries.extend(CpioEntry(f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, ko) for name, ko in modules)
    return entries


def build_initrd(init_script: bytes, busybox: bytes, modules: Sequence[tuple[str, bytes]]) -> bytes:
    archive = newc_archive(initramfs_entries(init_script, busybox, modules))
    return gzip.compress(archive, compresslevel=9, mtime=0)
