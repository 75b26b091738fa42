"""Per-VM endpoints that are not exec: agent health and the serial console log."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pyslicer.api.nodes import daemon
from pyslicer.api.params import query_int
from pyslicer.errors import SlicerError

DEFAULT_LOG_LINES = 20


async def health(request: Request) -> Response:
    node = daemon(request).node(request.path_params["hostname"])
    if request.method == "HEAD":
        try:
            node.agent()
        except SlicerError as exc:
            return Response(status_code=exc.status)
        return Response(status_code=200)
    body = await node.health()
    body.setdefault("ip", node.record.ip)
    return JSONResponse(body)


def tail_lines(path: Path, lines: int, block: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a file (all of it for 0), reading backwards in blocks."""
    try:
        with path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            if lines == 0:
                log.seek(0)
                return log.read().decode(errors="replace")
            data = b""
            position = size
            while position > 0 and data.count(b"\n") <= lines:
                step = min(block, position)
                position -= step
                log.seek(position)
                data = log.read(step) + data
    except FileNotFoundError:
        return ""
    kept = data.splitlines(keepends=True)[-lines:]
    return b"".join(kept).decode(errors="replace")


async def logs(request: Request) -> JSONResponse:
    node = daemon(request).node(request.path_params["hostname"])
    lines = query_int(request, "lines", maximum=10_000_000)
    count = DEFAULT_LOG_LINES if lines is None else lines
    content = await asyncio.to_thread(tail_lines, node.spec.console_log, count)
    return JSONResponse({"hostname": node.hostname, "lines": count, "content": content})
