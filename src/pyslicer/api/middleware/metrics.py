"""Counts and times every request by method and status; the last word on an unexpected error."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pyslicer.api.errors import INTERNAL_ERROR

log = logging.getLogger(__name__)


class RequestMetrics:
    def __init__(self, app: ASGIApp, *, observe: Callable[[str, int, float], None]) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_and_count(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not status:
                await JSONResponse(INTERNAL_ERROR, status_code=500)(scope, receive, send_and_count)
        finally:
            self.observe(scope["method"], status or 500, time.perf_counter() - started)
