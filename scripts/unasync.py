#!/usr/bin/env python3
"""Write the blocking client from the asyncio one, as httpcore does: ``src/pyslicer/client/_async.py`` ->
``_sync.py``, line by line, with the substitutions below and nothing else.

    python scripts/unasync.py           rewrite _sync.py
    python scripts/unasync.py --check   exit 1 (and show the diff) if _sync.py is not what _async.py makes

Only the client is generated. Where blocking and asyncio code differ by more than ``await`` (the stdin bodies,
the full-duplex transports) the client imports hand-written pairs whose names these rules map
(``_stdin_async.async_stdin_body`` -> ``_stdin.stdin_body``, ``AsyncDuplexTransport`` -> ``DuplexTransport``).
Every rule must fire, so a stale one is noticed.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path

CLIENT = Path(__file__).resolve().parent.parent / "src" / "pyslicer" / "client"
SOURCE = CLIENT / "_async.py"
TARGET = CLIENT / "_sync.py"
HEADER = "# Generated from _async.py by scripts/unasync.py: edit that file, then run the script.\n"

SUBS: list[tuple[str, str]] = [
    (r"\bAsyncGenerator\[(\w+), None\]", r"Generator[\1, None, None]"),
    (r"\bAsync([A-Z]\w*)", r"\1"),  # AsyncSlicerClient, httpx.AsyncClient, AsyncIterable, AsyncStdin, ...
    (r"\basync (def|for|with) ", r"\1 "),
    (r"\bawait ", ""),
    (r"\bimport asyncio\b", "import time"),
    (r"\basyncio\.sleep\(", "time.sleep("),
    (r"\b_(\w+)_async\b", r"_\1"),  # the hand-written pairs' modules: _stdin_async -> _stdin
    (r"\basync_(\w+)", r"\1"),  # and functions: async_stdin_body -> stdin_body
    (r"\b__a(enter|exit)__\b", r"__\1__"),
    (r"\baclose\b", "close"),
    (r"\baread\b", "read"),
    (r"\baiter_lines\b", "iter_lines"),
    (r"\baiter_bytes\b", "iter_bytes"),
]
COMPILED = [(re.compile(pattern), replacement) for pattern, replacement in SUBS]


def unasync(source: str) -> tuple[str, set[int]]:
    """The generated text, and the indexes of the rules that fired."""
    used: set[int] = set()
    lines = []
    for line in source.splitlines(keepends=True):
        for index, (pattern, replacement) in enumerate(COMPILED):
            line, count = pattern.subn(replacement, line)
            if count:
                used.add(index)
        lines.append(line)
    return HEADER + "".join(lines), used


def main(argv: list[str]) -> int:
    check = "--check" in argv
    expected, used = unasync(SOURCE.read_text())
    unused = [SUBS[i][0] for i in range(len(SUBS)) if i not in used]
    if unused:
        print(f"unasync: rules that matched nothing in {SOURCE.name}: {unused}", file=sys.stderr)
        return 1
    actual = TARGET.read_text() if TARGET.exists() else ""
    if not check:
        if actual != expected:
            TARGET.write_text(expected)
            print(f"unasync: wrote {TARGET}")
        return 0
    if actual == expected:
        return 0
    diff = difflib.unified_diff(
        actual.splitlines(keepends=True),
        expected.splitlines(keepends=True),
        fromfile=f"{TARGET.name} (on disk)",
        tofile=f"{TARGET.name} (from {SOURCE.name})",
    )
    sys.stderr.write("".join(diff))
    print(f"unasync: {TARGET} is out of date: run python scripts/unasync.py", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
