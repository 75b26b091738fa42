"""What the responses that drive ASGI themselves share (exec, cp, fs): noticing the client leave.

Starlette's StreamingResponse reads request-body messages in its disconnect listener, which would eat an
upload or an exec's stdin; these responses read ``receive`` themselves and run a listener like these.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, ClassVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send


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


Emit = Callable[[bytes], Awaitable[None]]


class StreamedResponse(Response):
    """A response that drives ASGI itself: ``produce`` writes the body while a listener waits for the
    client to leave; whichever ends first ends the other, then ``stop`` releases the guest's side."""

    headers_to_send: ClassVar[dict[str, str]] = {"cache-control": "no-store"}

    def __init__(self) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(self.headers_to_send)

    async def produce(self, emit: Emit) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lock = asyncio.Lock()

        async def emit(data: bytes) -> None:
            async with lock:
                await send({"type": "http.response.body", "body": data, "more_body": True})

        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        loop = asyncio.get_running_loop()
        producing = loop.create_task(self.produce(emit))
        listening = loop.create_task(until_disconnect(receive))
        client_left = False
        try:
            done, _ = await asyncio.wait((producing, listening), return_when=asyncio.FIRST_COMPLETED)
            client_left = listening in done
        finally:
            for task in (producing, listening):
                task.cancel()
            for task in (producing, listening):
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task  # OSError: the client went away while we wrote
            self.stop()
        if not client_left:
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
