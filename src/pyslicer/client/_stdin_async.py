"""What the asyncio client sends as an exec's stdin: also async iterables, and blocking sources read on a thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from typing import IO, cast

from ._stdin import read_chunks

AsyncStdin = bytes | Iterable[bytes] | AsyncIterable[bytes]
"""bytes, an iterable or async iterable of chunks, or a binary file."""


def async_stdin_body(stdin: AsyncStdin) -> bytes | AsyncIterable[bytes]:
    """The request body for ``stdin``; nothing is read (and no thread started) before the request is sent."""
    if isinstance(stdin, (bytes, bytearray, memoryview)):
        return bytes(stdin)
    if isinstance(stdin, AsyncIterable):
        return stdin
    if isinstance(stdin, (list, tuple)):
        return _from_sequence(stdin)
    if hasattr(stdin, "read"):
        return _from_thread(read_chunks(cast(IO[bytes], stdin)))
    return _from_thread(iter(stdin))


async def _from_sequence(chunks: Sequence[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _from_thread(source: Iterator[bytes]) -> AsyncIterator[bytes]:
    # A blocking source (a pipe, a file) must not stall the event loop. A daemon thread reads it, so a read
    # that never returns can't hold up interpreter exit; the bounded queue keeps memory flat.
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=4)
    stopped = threading.Event()

    def put(item: bytes | BaseException | None) -> bool:
        try:
            future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        except RuntimeError:  # the loop is gone
            return False
        while True:
            try:
                future.result(timeout=0.5)
                return True
            except TimeoutError:
                if stopped.is_set():
                    future.cancel()
                    return False

    def produce() -> None:
        try:
            for chunk in source:
                if not put(chunk):
                    return
        except BaseException as exc:
            put(exc)
        else:
            put(None)

    threading.Thread(target=produce, name="slicer-exec-stdin", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stopped.set()
