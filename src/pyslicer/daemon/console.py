"""Serial console logs: QEMU appends, the daemon keeps them bounded and reads their tail."""

from __future__ import annotations

import os
from pathlib import Path

MAX_CONSOLE_LOG_BYTES = 16 * 1024 * 1024
MAX_TAIL_BYTES = 16 * 1024 * 1024


def trim_log(path: Path, limit: int) -> None:
    """Keep the newest half of a log over ``limit`` bytes: a guest decides how much its console writes,
    and must not fill the host's disk. QEMU appends (O_APPEND), so it goes on at the new end."""
    try:
        with path.open("r+b") as log:
            size = log.seek(0, os.SEEK_END)
            if size <= limit:
                return
            log.seek(size - limit // 2)
            keep = log.read(limit // 2)
            log.seek(0)
            log.truncate(0)
            log.write(b"[... earlier console output trimmed by pyslicer ...]\n" + keep)
    except FileNotFoundError:
        pass


def tail_lines(path: Path, lines: int, *, block: int = 64 * 1024, limit: int = MAX_TAIL_BYTES) -> str:
    """The last ``lines`` lines of a file (all of it for 0), reading backwards in blocks; never more than
    ``limit`` bytes, since a guest decides how much its console writes."""
    try:
        with path.open("rb") as log:
            position = log.seek(0, os.SEEK_END)
            blocks: list[bytes] = []
            newlines = 0
            taken = 0
            while position > 0 and taken < limit and (lines == 0 or newlines <= lines):
                step = min(block, position, limit - taken)
                position -= step
                log.seek(position)
                data = log.read(step)
                blocks.append(data)
                newlines += data.count(b"\n")
                taken += step
    except FileNotFoundError:
        return ""
    text = b"".join(reversed(blocks))
    if lines:
        text = b"".join(text.splitlines(keepends=True)[-lines:])
    return text.decode(errors="replace")
