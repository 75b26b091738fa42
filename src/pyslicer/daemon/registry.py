"""Node records in SQLite, so a restarted daemon knows which disks are whose."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    hostname   TEXT PRIMARY KEY,
    host_group TEXT NOT NULL,
    record     TEXT NOT NULL
)
"""


@dataclass
class NodeRecord:
    hostname: str
    host_group: str
    cpus: int
    ram_bytes: int
    disk_bytes: int
    created_at: str
    protected: bool
    persistent: bool
    userdata: str = ""
    tags: list[str] = field(default_factory=list)
    ip: str = ""
    secrets: list[str] | None = None  # the secrets the node is granted; None: all of them
    image: str = ""  # the guest image its disk was made from (empty in records older than this field)

    @classmethod
    def from_json(cls, text: str) -> NodeRecord:
        data: dict[str, Any] = json.loads(text)
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


class Registry:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> Registry:
        db = await aiosqlite.connect(path)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(SCHEMA)
        await db.commit()
        return cls(db)

    async def close(self) -> None:
        await self._db.close()

    async def put(self, record: NodeRecord) -> None:
        await self._db.execute(
            "INSERT OR REPLACE INTO nodes (hostname, host_group, record) VALUES (?, ?, ?)",
            (record.hostname, record.host_group, json.dumps(asdict(record))),
        )
        await self._db.commit()

    async def remove(self, hostname: str) -> None:
        await self._db.execute("DELETE FROM nodes WHERE hostname = ?", (hostname,))
        await self._db.commit()

    async def all(self) -> list[NodeRecord]:
        async with self._db.execute("SELECT record FROM nodes ORDER BY hostname") as cursor:
            return [NodeRecord.from_json(row[0]) async for row in cursor]
