"""What the responses that drive ASGI themselves share (exec, cp, fs): noticing the client leave.

Starlette's StreamingResponse reads request-body messages in its disconnect listener, which would eat an
upload or an exec's stdin; these responses read ``receive`` themselves and run a listener like these.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from starlette.types import Receive


async def until_disconnect(receive: Receive) -> None:
    """Return once the client has gone; whatever request body still arrives is dropped."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def call_on_disconnect(receive: Receive, callback: Callable[[], None]) -> None:
    await until_disconnect(receive)
    callback()


@contextlib.asynccontextmanager
async def alongside(coroutine: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run ``coroutine`` as a task while the block runs; it is cancelled when the block ends."""
    task = asyncio.get_running_loop().create_task(coroutine)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
