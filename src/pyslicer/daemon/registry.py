"""Node and commit records in SQLite, so a restarted daemon knows which disks, running VMs and commits are whose."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiosqlite

from pyslicer.errors import ConfigError

FIXUPS = ("hostname", "machine-id", "ssh-host-keys")

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    hostname   TEXT PRIMARY KEY,
    host_group TEXT NOT NULL,
    record     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS commits (
    commit_id  TEXT PRIMARY KEY,
    record     TEXT NOT NULL
);
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
    tap: str = ""  # while it runs
    vmm_pid: int = 0  # its VMM while it runs (0: none), told apart from a later process by its start time
    vmm_started: int = 0
    stopped: bool = False  # stopped on purpose (or its VMM died): stays down across daemon restarts
    suspended: bool = False  # its whole state is saved in the data dir (no VMM runs): restore brings it back
    template: str = ""  # the fast-create template its disk is layered on (its dir), if any

    def end_run(self) -> None:
        """Forget what belonged to the VM's run (its VMM and tap), once it has ended."""
        self.vmm_pid = self.vmm_started = 0
        self.tap = ""

    image: str = ""  # the guest image its disk was made from (empty in records older than this field)
    # A create's own network.allow/drop: None inherits the host group's, [] is an empty override.
    network_allow: list[str] | None = None
    network_drop: list[str] | None = None
    ssh_keys: list[str] = field(default_factory=list)  # a create's own, besides the config's
    machine_id: str = ""  # given to the guest at each boot; empty: the guest keeps its disk's /etc/machine-id
    backing_commit_id: str = ""  # the commit its disk is an overlay over (empty: the guest image's base)
    commit_id: str = ""  # the last commit made of it
    parent_commit_id: str = ""  # the commit it was forked from
    fixups: list[str] | None = None  # a fork's identity fix-ups; None: not a fork (every fix-up applies)
    ssh_keys_pending: bool = False  # its first boot replaces the SSH host keys it inherited
    unfinished: bool = False  # a fork not yet ready: a restarted daemon removes it rather than booting it

    @property
    def fixes(self) -> frozenset[str]:
        """The identity fix-ups that apply to it (all of them for a VM that is not a fork)."""
        return frozenset(FIXUPS if self.fixups is None else self.fixups)

    @classmethod
    def from_json(cls, text: str) -> NodeRecord:
        """Raises ValueError for a record this daemon cannot read."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        record = cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})
        if not isinstance(record.hostname, str) or not isinstance(record.host_group, str):
            raise ValueError("no hostname or host group")
        return record


class Registry:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> Registry:
        """Open (or make) the state database and read it through once. Raises ConfigError, changing nothing,
        when it is damaged: its records say which disks and VMs are whose, so nothing may be guessed."""
        try:
            db = await aiosqlite.connect(path)
        except sqlite3.Error as exc:
            raise ConfigError(f"state database {path}: cannot open it: {exc}") from None
        registry = cls(db)
        try:
            async with db.execute("PRAGMA quick_check") as cursor:
                verdict = [row[0] async for row in cursor]
            if verdict != ["ok"]:
                raise ConfigError(f"state database {path} is damaged ({'; '.join(map(str, verdict))[:200]})")
            await db.execute("PRAGMA journal_mode=WAL")
            await db.executescript(SCHEMA)
            await db.commit()
            await registry.all()
            await registry.commits()
        except sqlite3.Error as exc:
            await db.close()
            raise ConfigError(
                f"state database {path} is damaged ({exc}): nothing was changed; move it aside to start afresh "
                "(the VMs and disks it recorded are then no longer known)"
            ) from None
        except ConfigError as exc:
            await db.close()
            raise ConfigError(f"{exc.message}: nothing was changed; move it aside to start afresh") from None
        return registry

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

    async def put_commit(self, commit_id: str, record: dict[str, object]) -> None:
        await self._db.execute(
            "INSERT OR REPLACE INTO commits (commit_id, record) VALUES (?, ?)", (commit_id, json.dumps(record))
        )
        await self._db.commit()

    async def remove_commit(self, commit_id: str) -> None:
        await self._db.execute("DELETE FROM commits WHERE commit_id = ?", (commit_id,))
        await self._db.commit()

    async def commits(self) -> dict[str, dict[str, object]]:
        """Every commit record, as stored. Raises ConfigError for one that is not a JSON object."""
        found: dict[str, dict[str, object]] = {}
        async with self._db.execute("SELECT commit_id, record FROM commits ORDER BY commit_id") as cursor:
            async for commit_id, text in cursor:
                try:
                    data = json.loads(text)
                except ValueError:
                    data = None
                if not isinstance(data, dict):
                    raise ConfigError(f"state database: the record of commit {commit_id!r} cannot be read")
                found[commit_id] = data
        return found

    async def all(self) -> list[NodeRecord]:
        """Every record. Raises ConfigError for one that cannot be read."""
        records = []
        async with self._db.execute("SELECT hostname, record FROM nodes ORDER BY hostname") as cursor:
            async for hostname, text in cursor:
                try:
                    records.append(NodeRecord.from_json(text))
                except (ValueError, TypeError) as exc:
                    raise ConfigError(f"state database: the record of {hostname!r} cannot be read ({exc})") from None
        return records
