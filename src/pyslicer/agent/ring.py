"""A background exec's output ring: records with ids from 1, the oldest evicted once the output outgrows the cap.

Only output bytes count against the cap (``started`` and ``exit`` records cost nothing, but age out with the
rest), and the number of records is capped too (one per ``BYTES_PER_RECORD`` bytes of the cap); the newest
record always stays. A reader keeps a cursor (the id it wants next); when records it has not
had were evicted, ``gap`` says how many and how many bytes, and the reader goes on from the oldest kept.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Offsets of evicted records kept to measure a gap exactly for a cursor that far back (8 bytes each).
REMEMBERED_EVICTIONS = 4096
# A record costs ~200 bytes besides its output (the object, its timestamp): a child writing a byte at a time must
# not make a ring hold a million of them, so a ring keeps at most one record per this many bytes of its cap.
BYTES_PER_RECORD = 128
MIN_RECORDS = 4


class Record:
    __slots__ = ("data", "id", "kind", "meta", "offset", "timestamp")

    def __init__(
        self, record_id: int, kind: str, data: bytes, meta: dict[str, Any] | None, offset: int, timestamp: str
    ) -> None:
        self.id = record_id
        self.kind = kind  # started, stdout, stderr, exit
        self.data = data
        self.meta = meta
        self.offset = offset  # output bytes written before this record
        self.timestamp = timestamp


class Ring:
    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("a ring needs a positive capacity")
        self.capacity = capacity
        self.max_records = max(MIN_RECORDS, capacity // BYTES_PER_RECORD)
        self._records: list[Record] = []
        self._head = 0  # index of the oldest record kept in _records
        self.size = 0  # output bytes held
        self.next_id = 1
        self.bytes_written = 0
        self.bytes_dropped = 0
        self.frames_dropped = 0
        self._evicted_offsets: list[int] = []  # offsets of the last evicted records, oldest first

    @property
    def first_id(self) -> int:
        """The id of the oldest record kept (``next_id`` when the ring is empty)."""
        return self._records[self._head].id if self._head < len(self._records) else self.next_id

    def __len__(self) -> int:
        return len(self._records) - self._head

    def append(self, kind: str, data: bytes = b"", meta: dict[str, Any] | None = None, timestamp: str = "") -> Record:
        if len(data) > self.capacity:  # only the end of it fits: the start counts as dropped output
            self.bytes_dropped += len(data) - self.capacity
            self.bytes_written += len(data) - self.capacity
            data = data[-self.capacity :]
        record = Record(self.next_id, kind, data, meta, self.bytes_written, timestamp)
        self.next_id += 1
        self.bytes_written += len(data)
        while len(self) and (self.size + len(data) > self.capacity or len(self) >= self.max_records):
            self._evict()
        self._records.append(record)
        self.size += len(data)
        return record

    def _evict(self) -> None:
        record = self._records[self._head]
        self._head += 1
        self.size -= len(record.data)
        self.bytes_dropped += len(record.data)
        self.frames_dropped += 1
        self._evicted_offsets.append(record.offset)
        if len(self._evicted_offsets) > 2 * REMEMBERED_EVICTIONS:
            del self._evicted_offsets[:REMEMBERED_EVICTIONS]
        if self._head > 64 and self._head * 2 > len(self._records):
            del self._records[: self._head]
            self._head = 0

    def gap(self, cursor: int) -> tuple[int, int] | None:
        """``(dropped_frames, dropped_bytes)`` between ``cursor`` and the oldest record kept, or None when
        nothing a reader at ``cursor`` wants was evicted. The bytes are exact for a cursor among the last
        REMEMBERED_EVICTIONS evicted records (or at 1), else the bytes of those remembered: a lower bound."""
        first = self.first_id
        cursor = max(1, cursor)
        if cursor >= first:
            return None
        end = self._records[self._head].offset if len(self) else self.bytes_written
        remembered = len(self._evicted_offsets)
        oldest_remembered = first - remembered
        if cursor == 1:
            start = 0
        elif cursor >= oldest_remembered:
            start = self._evicted_offsets[cursor - oldest_remembered]
        else:
            start = self._evicted_offsets[0] if remembered else end
        return first - cursor, end - start

    def read(self, cursor: int, limit: int | None = None) -> list[Record]:
        """The records from ``cursor`` on (from the oldest kept when it was evicted), at most ``limit``."""
        start = self._head + max(0, cursor - self.first_id)
        stop = len(self._records) if limit is None else min(len(self._records), start + limit)
        return self._records[start:stop]
