"""``fs/watch`` for the client: the event type and the server-sent-events decoder (stdlib only).

The decoder reads the stream as both SDKs do: ``data:`` lines up to a blank line make one event, ``id:``
gives its id when the JSON has none, ``event:`` and comments (heartbeats) are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import SlicerResponseError

WATCH_EVENT_TYPES = ("create", "write", "remove", "rename", "chmod")


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One filesystem change in a VM. ``type`` is create, write, remove, rename or chmod; ``overflow`` is no
    change but a note that the server dropped events (``message`` says how many)."""

    id: int
    type: str
    path: str
    timestamp: str
    size: int = 0
    is_dir: bool = False
    message: str | None = None

    @property
    def is_change(self) -> bool:
        return self.type in WATCH_EVENT_TYPES


class SseDecoder:
    """Feed it the stream's lines (without their line ends); it yields each complete event."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._id = 0

    def feed(self, line: str) -> Iterator[WatchEvent]:
        line = line.removesuffix("\r")
        if not line:
            if self._data:
                payload, self._data = "\n".join(self._data), []
                yield self._event(payload)
        elif line.startswith(":"):
            return
        elif line.startswith("data:"):
            self._data.append(line[5:].removeprefix(" "))
        elif line.startswith("id:"):
            text = line[3:].strip()
            if text.isdigit():
                self._id = int(text)

    def finish(self) -> Iterator[WatchEvent]:
        """An event the stream ended without a blank line after."""
        yield from self.feed("")

    def _event(self, payload: str) -> WatchEvent:
        try:
            body = json.loads(payload)
        except ValueError as exc:
            raise SlicerResponseError(f"fs watch sent an event that is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise SlicerResponseError("fs watch sent an event that is not a JSON object")
        event_id = body.get("id")
        message = body.get("message")
        size = body.get("size")
        return WatchEvent(
            id=event_id if isinstance(event_id, int) and event_id else self._id,
            type=str(body.get("type") or ""),
            path=str(body.get("path") or ""),
            timestamp=str(body.get("timestamp") or ""),
            size=size if isinstance(size, int) else 0,
            is_dir=body.get("isDir") is True,
            message=message if isinstance(message, str) else None,
        )
