"""Per-VM disks: copy-on-write qcow2 overlays of the read-only base rootfs, or of a commit (a qcow2)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from pyslicer.errors import HypervisorError


async def create_overlay(base: Path, overlay: Path, size_bytes: int | None, *, base_format: str = "raw") -> None:
    """A qcow2 overlay of ``base`` (the raw rootfs, or a qcow2 layer such as a template's disk). Raises
    HypervisorError (nothing left) when qemu-img cannot make it."""
    overlay.parent.mkdir(parents=True, exist_ok=True)
    command = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", base_format, str(overlay)]
    if size_bytes:
        command.append(str(max(size_bytes, base.stat().st_size)))
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        with contextlib.suppress(FileNotFoundError):
            overlay.unlink()
        raise HypervisorError(f"qemu-img could not create {overlay.name}: {stderr.decode().strip()}")


def remove_disk(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
