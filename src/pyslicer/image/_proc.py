"""Subprocesses for the image builder: tool lookup and non-blocking runs with streamed output."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from pyslicer.errors import ImageError

# A daemon started from a unit file or a user shell may lack the sbin directories.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

TOOL_PACKAGES: dict[str, str] = {
    "apt-cache": "apt",
    "apt-get": "apt",
    "dpkg-deb": "dpkg",
    "depmod": "kmod",
    "lz4": "lz4",
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "chroot": "coreutils",
    "cp": "coreutils",
    "umount": "mount",
    "zstd": "zstd",
}


def search_path() -> str:
    current = os.environ.get("PATH", "")
    return f"{current}:{SYSTEM_PATH}" if current else SYSTEM_PATH


def tool(name: str) -> str:
    found = shutil.which(name, path=search_path())
    if found is None:
        package = TOOL_PACKAGES.get(name, name)
        raise ImageError(
            f"image: the tool {name!r} is missing; install the Debian package {package!r} (apt-get install {package})"
        )
    return found


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PATH=search_path(), LC_ALL="C", LANG="C", DEBIAN_FRONTEND="noninteractive")
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    return env


async def run(
    args: Sequence[str | Path],
    *,
    what: str,
    cwd: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    check: bool = True,
) -> tuple[int, str]:
    """Run a command with stdout+stderr merged; return (exit code, output).

    The child gets its own session so that cancelling the build (daemon shutdown) can kill
    the whole tree it started (debootstrap runs dpkg, wget, chroot...).
    """
    argv = [str(a) for a in args]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            env=tool_env(),
            start_new_session=True,
            limit=1 << 20,
        )
    except OSError as exc:
        raise ImageError(f"image: {what}: cannot run {argv[0]}: {exc}") from exc
    lines: list[str] = []
    tail: deque[str] = deque(maxlen=15)
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            lines.append(line)
            if line.strip():
                tail.append(line.strip())
            if on_line is not None:
                on_line(line)
        code = await proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            await asyncio.shield(proc.wait())
        raise
    if check and code != 0:
        detail = "\n  ".join(tail) or "(no output)"
        raise ImageError(f"image: {what} failed (exit {code}):\n  {detail}")
    return code, "\n".join(lines)
