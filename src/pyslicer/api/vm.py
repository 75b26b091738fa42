"""Per-VM endpoints that are not exec: agent health and the serial console log."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pyslicer.api.errors import status_of
from pyslicer.api.nodes import daemon
from pyslicer.api.params import query_int
from pyslicer.errors import SlicerError

DEFAULT_LOG_LINES = 20
MAX_LOG_BYTES = 16 * 1024 * 1024


async def health(request: Request) -> Response:
    node = daemon(request).node(request.path_params["hostname"])
    if request.method == "HEAD":
        try:
            node.agent()
        except SlicerError as exc:
            return Response(status_code=status_of(exc))
        return Response(status_code=200)
    body = await node.health()
    body.setdefault("ip", node.record.ip)
    return JSONResponse(body)


def tail_lines(path: Path, lines: int, *, block: int = 64 * 1024, limit: int = MAX_LOG_BYTES) -> str:
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


async def logs(request: Request) -> JSONResponse:
    node = daemon(request).node(request.path_params["hostname"])
    lines = query_int(request, "lines", maximum=10_000_000)
    count = DEFAULT_LOG_LINES if lines is None else lines
    content = await asyncio.to_thread(tail_lines, node.spec.console_log, count)
    return JSONResponse({"hostname": node.hostname, "lines": count, "content": content})
