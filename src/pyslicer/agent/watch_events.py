"""The pure half of a watch: inotify masks to event types, the request's filters, and the bounded queue
that coalesces events while they wait (for the debounce window, or for the host's credit).

Types are fsnotify's, as Slicer's Go agent reports them: a create or a move into a directory is ``create``,
a write ``write``, an unlink ``remove``, a move away ``rename``, a change of mode, owner or times ``chmod``.
"""

from __future__ import annotations

from pyslicer.protocol import WATCH_KINDS
from pyslicer.protocol.globs import match

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from pyslicer.protocol import FsWatchEvent

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000

KINDS = WATCH_KINDS
_KIND_BITS = (
    (IN_CREATE | IN_MOVED_TO, "create"),
    (IN_MODIFY, "write"),
    (IN_DELETE | IN_DELETE_SELF, "remove"),
    (IN_MOVED_FROM | IN_MOVE_SELF, "rename"),
    (IN_ATTRIB, "chmod"),
)
# What is always asked of the kernel: creations (to follow new subdirectories) and what ends a watch.
_BASE_MASK = IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_MOVE_SELF | IN_DELETE | IN_DELETE_SELF | IN_EXCL_UNLINK


def kind_of(mask: int) -> str | None:
    for bits, kind in _KIND_BITS:
        if mask & bits:
            return kind
    return None


def mask_for(kinds: Iterable[str]) -> int:
    """The inotify mask for the wanted kinds: writes and attribute changes only when asked for."""
    wanted = set(kinds)
    mask = _BASE_MASK
    if "write" in wanted:
        mask |= IN_MODIFY
    if "chmod" in wanted:
        mask |= IN_ATTRIB
    return mask


class EventFilter:
    """Which events a watch delivers: its kinds (none or ``all``: every kind) and its patterns (none: every
    path; else a path matches when a pattern matches the full path or its base name)."""

    def __init__(self, kinds: Iterable[str] = (), patterns: Iterable[str] = ()) -> None:
        chosen = {kind for kind in kinds if kind}
        self.kinds = frozenset(KINDS) if not chosen or "all" in chosen else frozenset(chosen) & frozenset(KINDS)
        self.patterns = tuple(pattern for pattern in patterns if pattern)

    def wants(self, kind: str) -> bool:
        return kind in self.kinds

    def matches(self, path: str) -> bool:
        if not self.patterns:
            return True
        name = path.rstrip("/").rsplit("/", 1)[-1]
        for pattern in self.patterns:
            try:
                if match(pattern, path) or match(pattern, name):
                    return True
            except ValueError:  # the host checks patterns; a bad one simply matches nothing
                continue
        return False


class Pending:
    """Events waiting to go out, at most ``limit`` of them, in the order they happened.

    An event whose path's newest waiting event has the same type updates that one (its size, time) in place, so
    a burst of writes to one file is one event; any other event queues anew, so create, remove, create of one
    path stays three events in that order. Past ``limit`` new events are dropped and counted; ``take_note``
    turns the count into one ``overflow`` event. Each event leaves once ``debounce`` seconds have passed since
    it was first queued.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0
        self._events: dict[int, tuple[float, FsWatchEvent]] = {}  # by sequence number: insertion order
        self._newest: dict[str, int] = {}  # path -> the sequence number of its newest waiting event
        self._sequence = 0

    def __len__(self) -> int:
        return len(self._events)

    def add(self, event: FsWatchEvent, now: float) -> None:
        path = event["path"]
        newest = self._newest.get(path)
        waiting = self._events.get(newest) if newest is not None else None
        if newest is not None and waiting is not None and waiting[1]["type"] == event["type"]:
            self._events[newest] = (waiting[0], event)
        elif len(self._events) >= self.limit:
            self.dropped += 1
        else:
            self._sequence += 1
            self._events[self._sequence] = (now, event)
            self._newest[path] = self._sequence

    def next_due(self, debounce: float) -> float | None:
        """When the oldest event may leave (None: nothing waits)."""
        for first_seen, _ in self._events.values():
            return first_seen + debounce
        return None

    def pop_ready(self, now: float, debounce: float) -> FsWatchEvent | None:
        for sequence, (first_seen, event) in self._events.items():
            if first_seen + debounce > now:
                return None
            del self._events[sequence]
            if self._newest.get(event["path"]) == sequence:
                del self._newest[event["path"]]
            return event
        return None

    def take_note(self, timestamp: str) -> FsWatchEvent | None:
        """An ``overflow`` event saying how many events were dropped since the last note, or None."""
        if not self.dropped:
            return None
        note: FsWatchEvent = {
            "type": "overflow",
            "path": "",
            "timestamp": timestamp,
            "size": 0,
            "isDir": False,
            "message": f"{self.dropped} events dropped: the client did not keep up",
        }
        self.dropped = 0
        return note
