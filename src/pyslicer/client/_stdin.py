"""What a blocking client sends as an exec's stdin: bytes, an iterable of chunks, or a binary file."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import IO, cast

Stdin = bytes | Iterable[bytes]
"""bytes, an iterable of chunks, or a binary file (read as it becomes readable)."""


def stdin_body(stdin: Stdin) -> bytes | Iterable[bytes]:
    """The request body for ``stdin``; nothing is read before the request is sent."""
    if isinstance(stdin, (bytes, bytearray, memoryview)):
        return bytes(stdin)
    if hasattr(stdin, "read"):
        return read_chunks(cast(IO[bytes], stdin))
    return iter(stdin)


def read_chunks(file: IO[bytes]) -> Iterator[bytes]:
    # read1 hands over whatever is available, so interactive input isn't held back to fill a buffer.
    read = getattr(file, "read1", file.read)
    while chunk := read(65536):
        yield chunk
