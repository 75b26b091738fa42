"""Commits: a stopped VM's disk kept as an immutable layer that new VMs (forks) boot from.

Storage is a qcow2 chain, not a flattened copy. Committing a stopped VM *moves* its disk into the commit (a hard
link, then the VM's path is switched to a fresh overlay over it), so a commit costs one small file whatever the
disk holds, and writes nothing the VM had not written already. A fork's disk is an overlay over the commit. Each
commit therefore stands on what its source stood on (the guest image's base, or the commit it was forked from),
and a commit cannot be deleted while a VM's disk or another commit stands on it; its source is one of them until
it is deleted (as on Slicer, whose example deletes the source before the commit).

Each commit is a directory ``commits/<id>/`` holding ``disk.qcow2`` and ``commit.json`` (its record, so a
commit whose registry row was lost in a crash can be taken back). A hot commit (memory too, later) adds its
memory-state file beside the disk and says ``mode: "hot"``.

The steps are ordered so that a daemon killed at any point leaves either no commit or a whole one:
``.staging-<id>/`` (record + hard link) -> renamed to ``<id>/`` -> the source switched onto an overlay over it
-> the registry row. A commit directory without a row whose disk still has two links was never switched to and is
removed; one with a single link is the source's base now and is taken back from its ``commit.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator
from pydantic_core import PydanticCustomError

from pyslicer.daemon.registry import FIXUPS
from pyslicer.daemon.storage import create_overlay
from pyslicer.errors import Conflict, InsufficientStorage, InvalidArgument, NotFound, StorageError

log = logging.getLogger(__name__)

COLD = "disk"  # Slicer's name for a cold commit: the disk of a stopped VM (its SDK's fixtures answer it)
MODES = (COLD, "hot")
DISK = "disk.qcow2"
RECORD = "commit.json"
STAGING_PREFIX = ".staging-"
# Free space a commit or fork must leave on the data dir's filesystem: the VMs on it write there.
RESERVE_BYTES = 64 * 1024 * 1024
MAX_COMMIT_TAGS = 64
MAX_LABELS = 64
MAX_TEXT = 256
COMMIT_ID_RE = re.compile(r"cmt-[0-9a-f]{16}")
# Printable ASCII without spaces, as node tags: they travel in query strings.
TAG_RE = re.compile(r"[!-~]{1,128}")
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")


# -- requests --------------------------------------------------------------------------------------


def _commit_tags(tags: list[str]) -> list[str]:
    if len(tags) > MAX_COMMIT_TAGS:
        raise ValueError(f"at most {MAX_COMMIT_TAGS} tags")
    for index, tag in enumerate(tags):
        if not TAG_RE.fullmatch(tag):
            raise ValueError(f"tags[{index}]: {tag[:40]!r} is not 1..128 printable characters without spaces")
    return list(dict.fromkeys(tags))


def _labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not LABEL_KEY_RE.fullmatch(key):
            raise ValueError(f"{key[:40]!r} is not a label key (letters, digits, . _ / -, at most 128)")
        if len(value) > MAX_TEXT or not value.isprintable():
            raise ValueError(f"{key}: a value is at most {MAX_TEXT} printable characters")
    return labels


def _cache_key(value: str) -> str:
    value = value.strip()
    if len(value) > MAX_TEXT or not value.isprintable():
        raise ValueError(f"at most {MAX_TEXT} printable characters")
    return value


def _fixups(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    for index, value in enumerate(values):
        if value not in FIXUPS:
            raise ValueError(f"[{index}]: {value!r} is not one of {', '.join(FIXUPS)}")
    return list(dict.fromkeys(values))


def _cidrs(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    checked = []
    for index, value in enumerate(values):
        try:
            checked.append(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            raise ValueError(f"[{index}]: {value[:60]!r} is not a CIDR (10.0.0.0/8) or an address") from None
    return checked


CommitTags = Annotated[list[StrictStr], AfterValidator(_commit_tags)]
Cidrs = Annotated[list[StrictStr] | None, AfterValidator(_cidrs)]


class CommitRequest(BaseModel):
    """What a commit records besides the disk: tags and labels to find it by, and a cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tags: CommitTags = Field(default_factory=list)
    labels: Annotated[dict[StrictStr, StrictStr], AfterValidator(_labels)] = Field(default_factory=dict)
    cache_key: Annotated[StrictStr, AfterValidator(_cache_key)] = Field(default="", description="trimmed")


class ForkNetwork(BaseModel):
    """The child's own allow/drop lists; an omitted list is the host group's, ``[]`` means none."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: Cidrs = None
    drop: Cidrs = None


class ForkRequest(BaseModel):
    """What a fork may choose; everything else is the commit's source's. Never a hostname: the daemon names it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    network: ForkNetwork | None = None
    tags: list[StrictStr] | None = Field(default=None, description="added to the source's tags (see tag_mode)")
    tag_mode: Literal["append", "replace"] = "append"
    secrets: list[StrictStr] | None = Field(
        default=None, description="the secrets it may see; omitted: the source's grant; []: none"
    )
    persistent: StrictBool | None = Field(default=None, description="omitted: the host group's default")
    fixups: Annotated[list[StrictStr] | None, AfterValidator(_fixups)] = Field(
        default=None, description=f"identity fix-ups: any of {', '.join(FIXUPS)}; omitted: all; []: none"
    )
    vcpu: StrictInt | None = Field(default=None, ge=0, description="0 or omitted: the source's")
    ram_bytes: StrictInt | None = Field(default=None, ge=0, description="0 or omitted: the source's")

    @model_validator(mode="before")
    @classmethod
    def _no_hostname(cls, data: Any) -> Any:
        if isinstance(data, dict) and "hostname" in data:
            raise PydanticCustomError("hostname_given", "hostname: a fork is named by the daemon; leave it out")
        return data


@dataclass(frozen=True, slots=True)
class CommitFilter:
    tags: tuple[str, ...] = ()
    cache_key: str | None = None
    source: str | None = None
    mode: str | None = None

    def matches(self, commit: CommitRecord) -> bool:
        return (
            all(tag in commit.tags for tag in self.tags)
            and (not self.cache_key or commit.cache_key == self.cache_key)
            and (not self.source or commit.source_hostname == self.source)
            and (not self.mode or commit.mode == self.mode)
        )


# -- records ---------------------------------------------------------------------------------------


@dataclass
class CommitRecord:
    commit_id: str
    mode: str
    source_hostname: str
    source_host_group: str
    created_at: str
    tags: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    cache_key: str = ""
    parent_commit_id: str = ""  # the commit its disk stands on (empty: the guest image's base)
    # what a fork takes from the source, as it was when committed
    cpus: int = 1
    ram_bytes: int = 0
    disk_bytes: int = 0
    userdata: str = ""
    source_tags: list[str] = field(default_factory=list)
    secrets: list[str] | None = None
    image: str = ""
    size_bytes: int = 0  # what its files take on the host's disk

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CommitRecord:
        """Raises ValueError for a record this daemon cannot read."""
        try:
            record = cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(record.commit_id, str) or not COMMIT_ID_RE.fullmatch(record.commit_id):
            raise ValueError("no valid commit id")
        if not isinstance(record.source_hostname, str) or not isinstance(record.source_host_group, str):
            raise ValueError("no source")
        return record


def new_commit_id() -> str:
    return f"cmt-{secrets.token_hex(8)}"


def check_commit_id(commit_id: str) -> str:
    """Raises InvalidArgument for an id that could name a path outside the commits (Slicer's rule), NotFound
    for one this daemon could never have made."""
    if not commit_id or any(bad in commit_id for bad in ("/", "\\", "..", "\x00")):
        raise InvalidArgument(f"commit_id: {commit_id[:80]!r} is not a commit id", code="invalid_commit_id")
    if not COMMIT_ID_RE.fullmatch(commit_id):
        raise NotFound(f"commit {commit_id[:80]!r} not found", code="commit_not_found")
    return commit_id


def allocated_bytes(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def _storage_error(what: str, exc: OSError) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(f"{what}: the data dir's disk is full", code="no_space")
    return StorageError(f"{what}: {exc.strerror or exc}", code="storage_error")


# -- the files -------------------------------------------------------------------------------------


class CommitStore:
    """The commit directories under the data dir. Knows files, not VMs: the fleet decides what may change."""

    def __init__(self, root: Path, free_bytes: Callable[[Path], int] | None = None) -> None:
        self.root = root
        self._free_bytes = free_bytes or (lambda path: shutil.disk_usage(path).free)

    def dir(self, commit_id: str) -> Path:
        return self.root / commit_id

    def disk(self, commit_id: str) -> Path:
        return self.root / commit_id / DISK

    def check_space(self, what: str, needed: int = 0) -> None:
        """Raises InsufficientStorage, saying how much is free, unless ``needed`` bytes plus the reserve fit."""
        self.root.mkdir(parents=True, exist_ok=True)
        free = self._free_bytes(self.root)
        if free < needed + RESERVE_BYTES:
            raise InsufficientStorage(
                f"{what}: the data dir's disk has {free // 2**20} MiB free and "
                f"{(needed + RESERVE_BYTES) // 2**20} MiB must stay free; nothing was changed",
                code="no_space",
            )

    async def take(self, record: CommitRecord, source_disk: Path) -> CommitRecord:
        """Move ``source_disk`` (of a stopped VM) into a new commit and switch the path onto an overlay over it;
        the record with its size. On failure nothing is left and the source disk is as it was. Raises
        InsufficientStorage when the disk is full, StorageError, HypervisorError when qemu-img fails."""
        what = f"commit of {record.source_hostname}"
        staging = self.root / f"{STAGING_PREFIX}{record.commit_id}"
        final = self.dir(record.commit_id)
        next_overlay = source_disk.with_name(f".{source_disk.stem}.next.qcow2")
        try:
            staging.mkdir(parents=True)
            (staging / RECORD).write_text(json.dumps(record.to_dict()))
            os.link(source_disk, staging / DISK)
            os.rename(staging, final)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise _storage_error(what, exc) from None
        try:
            await create_overlay(final / DISK, next_overlay, None, base_format="qcow2")
            os.replace(next_overlay, source_disk)  # from here the commit is the source's base
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                next_overlay.unlink()
            shutil.rmtree(final, ignore_errors=True)
            if isinstance(exc, OSError):
                raise _storage_error(what, exc) from None
            raise
        with contextlib.suppress(OSError):
            os.chmod(final / DISK, 0o444)
        return dataclasses.replace(record, size_bytes=self.size(record.commit_id))

    def size(self, commit_id: str) -> int:
        directory = self.dir(commit_id)
        return sum(allocated_bytes(path) for path in directory.iterdir()) if directory.is_dir() else 0

    def remove(self, commit_id: str) -> None:
        shutil.rmtree(self.dir(commit_id), ignore_errors=True)

    def sweep(self, recorded: Iterable[str]) -> list[CommitRecord]:
        """Clear what a crash left: staging dirs go, and so does a commit directory without a record that its
        source was never switched onto; one it was switched onto is given back (to be recorded again)."""
        known = set(recorded)
        found: list[CommitRecord] = []
        if not self.root.is_dir():
            return found
        for path in sorted(self.root.iterdir()):
            if path.name in known:
                continue
            if path.name.startswith(STAGING_PREFIX) or not path.is_dir():
                log.info("removing %s: an unfinished commit", path.name)
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                continue
            try:
                record = CommitRecord.from_dict(json.loads((path / RECORD).read_text()))
                links = (path / DISK).stat().st_nlink
            except (OSError, ValueError) as exc:
                log.warning("removing commit dir %s: it cannot be read (%s)", path.name, exc)
                shutil.rmtree(path, ignore_errors=True)
                continue
            if record.commit_id != path.name or links > 1:
                log.info("removing %s: its source was never switched onto it", path.name)
                shutil.rmtree(path, ignore_errors=True)
                continue
            log.warning("%s: taking back a commit whose record was lost", path.name)
            found.append(dataclasses.replace(record, size_bytes=self.size(path.name)))
        return found


def inherited_tags(source_tags: Iterable[str]) -> list[str]:
    """The source's tags a fork starts with: not its ``name=`` (unique) nor its ``expires_at=`` (its own)."""
    return [tag for tag in source_tags if not tag.startswith(("name=", "expires_at="))]


def in_use(commit_id: str, users: Iterable[str]) -> Conflict:
    names = sorted(users)
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return Conflict(f"commit {commit_id} is in use by {shown}; delete those first", code="commit_in_use")
