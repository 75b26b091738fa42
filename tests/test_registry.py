"""The state database: records round-trip, and damage is refused without changing anything."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from pyslicer.daemon.registry import NodeRecord, Registry
from pyslicer.errors import ConfigError


def record(hostname: str = "sbox-1") -> NodeRecord:
    return NodeRecord(hostname, "sbox", 1, 256 << 20, 0, "2026-12-02T00:00:00Z", False, True, vmm_pid=42)


def test_records_round_trip(tmp_path: Path) -> None:
    async def run() -> list[NodeRecord]:
        registry = await Registry.open(tmp_path / "state.db")
        await registry.put(record())
        await registry.close()
        reopened = await Registry.open(tmp_path / "state.db")
        try:
            return await reopened.all()
        finally:
            await reopened.close()

    assert asyncio.run(run()) == [record()]


def test_a_record_of_an_older_daemon_takes_defaults() -> None:
    old = NodeRecord.from_json('{"hostname": "a", "host_group": "g", "cpus": 1, "ram_bytes": 1, "disk_bytes": 0, '
                               '"created_at": "", "protected": false, "persistent": true, "future": 1}')  # fmt: skip
    assert old.vmm_pid == 0 and old.stopped is False and old.tap == ""


@pytest.mark.parametrize("content", [b"not a database at all" * 100, b"SQLite format 3\x00" + b"\xff" * 4000])
def test_a_damaged_database_is_refused_and_left_alone(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="damaged"):
        asyncio.run(Registry.open(path))
    assert path.read_bytes() == content


@pytest.mark.parametrize("text", ["[]", "{}", "nope", '{"hostname": 1, "host_group": "g"}', '{"hostname": "a"}'])
def test_an_unreadable_record_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "state.db"
    asyncio.run(_made(path))
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO nodes VALUES ('a', 'g', ?)", (text,))
    with pytest.raises(ConfigError, match="record of 'a' cannot be read"):
        asyncio.run(Registry.open(path))


async def _made(path: Path) -> None:
    await (await Registry.open(path)).close()
