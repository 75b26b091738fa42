"""Secrets: stored in the data dir, and kept in step inside every running guest that may see them.

The store is the truth. Each secret is one file ``<data dir>/secrets/<name>`` (the directory 0700, the files
0600): a line of JSON metadata, then the secret's bytes, so the bytes and their owner and mode change together
in one rename. A write goes to a temporary file in the same directory, is fsynced and renamed (``link`` for a
create, which cannot clobber a secret made meanwhile), then the directory is fsynced.

A guest holds its secrets under ``/run/slicer/secrets/<name>`` (a tmpfs): the agent gets the whole set it is
granted (``Op.SECRETS``, the bytes as stream data) whenever it says READY, and again after every change. A
node created with ``secrets[]`` is granted those names only (names not stored yet appear once created);
without, it is granted every secret. A sync that fails (the agent is away, the VM is paused) is logged and
the answer to the API goes out all the same: that guest catches up at its next READY.

Values are never logged, listed, put in an error message or shown by ``repr``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import re
import secrets as tokens
import weakref
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from pyslicer.daemon.agent_link import AgentLink, Message
from pyslicer.daemon.guest_input import int_or, str_or
from pyslicer.daemon.timestamps import utc_now
from pyslicer.errors import Conflict, InvalidArgument, NotFound, SlicerError, Unavailable
from pyslicer.protocol import Event, Op

if TYPE_CHECKING:
    from pyslicer import protocol
    from pyslicer.daemon.node import Node

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
MAX_NAME_LENGTH = 128
MAX_SECRET_BYTES = 1024 * 1024
MAX_STORE_BYTES = 16 * 1024 * 1024  # every guest granted them all holds them in RAM (tmpfs)
MAX_SECRETS = 256  # keeps a guest's whole set in one request frame
MAX_ID = 2**32 - 2  # uid_t; (uid_t)-1 means "unchanged" to chown
DEFAULT_MODE = 0o600
MAX_HEADER_BYTES = 4096
TEMP_PREFIX = ".tmp-"
SYNC_TIMEOUT = 30.0  # one guest's sync, start to answer
ANSWER_WAIT = 5.0  # how long a change waits for the guests before the API answers anyway
RETRY_FIRST = 1.0  # a failed sync is tried again after this, then twice as long each time, up to RETRY_MAX
RETRY_MAX = 30.0
MODE_RE = re.compile(r"[0-7]{3,4}")


def check_name(name: str, field_name: str = "name") -> str:
    """``name`` when it is a valid secret name; raises InvalidArgument naming ``field_name``."""
    if not name:
        raise InvalidArgument(f"{field_name}: a secret name is required", code="invalid_name")
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"{field_name}: {name[:MAX_NAME_LENGTH]!r} is not a valid secret name (1-{MAX_NAME_LENGTH} of "
            "A-Z a-z 0-9 . _ -, not starting with . or -)",
            code="invalid_name",
        )
    return name


def check_grant(names: Iterable[str]) -> tuple[str, ...]:
    """A node's ``secrets[]``: valid names, each once, in the order given. Raises InvalidArgument."""
    granted: dict[str, None] = {}
    for index, name in enumerate(names):
        granted[check_name(name, f"secrets[{index}]")] = None
    return tuple(granted)


def format_mode(mode: int) -> str:
    return f"{mode:04o}"


# -- request models ------------------------------------------------------------------------------------


def _name(value: Any) -> Any:
    if isinstance(value, str):
        try:
            check_name(value)
        except InvalidArgument as exc:
            raise PydanticCustomError("invalid_name", exc.message.removeprefix("name: ")) from None
    return value


def _data(value: Any) -> Any:
    """Base64 text -> bytes, without ever quoting it back."""
    if not isinstance(value, str):
        raise PydanticCustomError("invalid_data", "must be a base64 string")
    too_large = PydanticCustomError("secret_too_large", f"a secret holds at most {MAX_SECRET_BYTES // 1024} KiB")
    if len(value) > 4 * -(-MAX_SECRET_BYTES // 3):  # refused before decoding
        raise too_large
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise PydanticCustomError("invalid_data", "is not valid base64") from None
    if len(data) > MAX_SECRET_BYTES:
        raise too_large
    return data


def _data_or_unchanged(value: Any) -> Any:
    return None if value in ("", None) else _data(value)


def _mode(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str) or not MODE_RE.fullmatch(value) or int(value, 8) > 0o777:
        raise PydanticCustomError("invalid_permissions", 'must be octal permission bits as a string, like "0600"')
    return int(value, 8)


BASE64_SCHEMA = {"type": "string", "contentEncoding": "base64", "pattern": "^[A-Za-z0-9+/]*={0,2}$"}
SecretName = Annotated[
    str,
    BeforeValidator(_name),
    WithJsonSchema({"type": "string", "pattern": f"^{NAME_RE.pattern}$", "maxLength": MAX_NAME_LENGTH}),
    Field(description="A-Z a-z 0-9 . _ -, not starting with . or -"),
]
SecretData = Annotated[
    bytes,
    BeforeValidator(_data),
    WithJsonSchema(BASE64_SCHEMA),
    Field(description="the value, base64 (at most 1 MiB decoded)"),
]
ChangedData = Annotated[
    bytes | None,
    BeforeValidator(_data_or_unchanged),
    WithJsonSchema(BASE64_SCHEMA),
    Field(description='the new value, base64; "" (what the SDKs send for no change) keeps the value'),
]
Mode = Annotated[
    int,
    BeforeValidator(_mode),
    WithJsonSchema({"type": "string", "pattern": "^[0-7]{3,4}$"}),
    Field(description='octal permission bits, at most 0777, e.g. "0600"'),
]
OwnerId = Annotated[int, Field(ge=0, le=MAX_ID)]


class NewSecret(BaseModel):
    """``POST /secrets``."""

    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    name: SecretName
    data: SecretData = Field(repr=False)
    permissions: Mode = Field(DEFAULT_MODE, json_schema_extra={"default": format_mode(DEFAULT_MODE)})
    uid: OwnerId = 0
    gid: OwnerId = 0


class SecretChange(BaseModel):
    """``PATCH /secrets/{name}``: what is given changes. Both SDKs always send ``data``, as ``""`` when only
    the metadata changes, so an empty ``data`` keeps the value (to empty a secret, delete and create it)."""

    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    data: ChangedData = Field(default=None, repr=False)
    permissions: Mode | None = None
    uid: OwnerId | None = None
    gid: OwnerId | None = None


# -- the store -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """What may be shown of a secret: everything but its value."""

    name: str
    size: int
    mode: int
    uid: int
    gid: int
    modified_at: str

    @property
    def permissions(self) -> str:
        return format_mode(self.mode)


@dataclass(frozen=True, slots=True)
class Secret:
    info: SecretInfo
    data: bytes = field(repr=False)


class SecretStore:
    """The secrets on disk; blocking calls (the daemon runs them in a thread, one change at a time)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def open(self) -> None:
        """Make the directory (0700) and remove temporary files a crash left behind."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        for path in self.directory.iterdir():
            if path.name.startswith(TEMP_PREFIX):
                path.unlink(missing_ok=True)

    def _path(self, name: str) -> Path:
        return self.directory / check_name(name)

    # -- reading ---------------------------------------------------------------------------------
    def infos(self) -> list[SecretInfo]:
        """Every secret's metadata, by name."""
        found = []
        for path in sorted(self.directory.iterdir()):
            if not path.name.startswith(".") and (secret := self._load(path, with_data=False)) is not None:
                found.append(secret.info)
        return found

    def read(self, names: Collection[str] | None = None) -> list[Secret]:
        """The secrets of ``names`` that exist (all of them for None), with their values, by name."""
        wanted = sorted(self._names() if names is None else set(names) & self._names())
        secrets = []
        for name in wanted:
            secret = self._load(self.directory / name, with_data=True)
            if secret is not None:
                secrets.append(secret)
        return secrets

    def holds_any(self, names: Collection[str] | None = None) -> bool:
        """Whether any of ``names`` (any at all for None) is stored."""
        stored = self._names()
        return bool(stored if names is None else stored.intersection(names))

    def info(self, name: str) -> SecretInfo:
        """Raises NotFound."""
        secret = self._load(self._path(name), with_data=False)
        if secret is None:
            raise NotFound(f"secret {name!r} not found", code="secret_not_found")
        return secret.info

    def _names(self) -> set[str]:
        return {path.name for path in self.directory.iterdir() if not path.name.startswith(".")}

    def _load(self, path: Path, *, with_data: bool) -> Secret | None:
        """The secret at ``path``; None when it is gone, or unreadable (logged, without its contents)."""
        try:
            with path.open("rb") as file:
                header = file.readline(MAX_HEADER_BYTES)
                meta = json.loads(header)
                data = file.read(MAX_SECRET_BYTES + 1) if with_data else b""
                info = SecretInfo(
                    name=path.name,
                    size=int(meta["size"]),
                    mode=int(meta["mode"]) & 0o777,
                    uid=int(meta["uid"]),
                    gid=int(meta["gid"]),
                    modified_at=str(meta["modified_at"]),
                )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("secret store: %s is unreadable; ignoring it", path.name)
            return None
        if with_data and len(data) != info.size:
            log.warning("secret store: %s is truncated; ignoring it", path.name)
            return None
        return Secret(info, data)

    # -- writing ---------------------------------------------------------------------------------
    def create(self, spec: NewSecret) -> SecretInfo:
        """Raises Conflict when it exists, Unavailable when the store is full."""
        path = self._path(spec.name)
        if path.exists():
            raise Conflict(f"secret {spec.name!r} already exists", code="secret_exists")
        self._check_room(spec.name, len(spec.data))
        info = SecretInfo(spec.name, len(spec.data), spec.permissions, spec.uid, spec.gid, utc_now())
        temp = self._write_temp(info, spec.data)
        try:
            os.link(temp, path)  # unlike a rename, never replaces one made meanwhile
        except FileExistsError:
            raise Conflict(f"secret {spec.name!r} already exists", code="secret_exists") from None
        finally:
            temp.unlink(missing_ok=True)
        self._sync_directory()
        return info

    def update(self, name: str, change: SecretChange) -> SecretInfo:
        """Raises NotFound, Unavailable when the store is full."""
        path = self._path(name)
        current = self._load(path, with_data=True)
        if current is None:
            raise NotFound(f"secret {name!r} not found", code="secret_not_found")
        data = current.data if change.data is None else change.data
        self._check_room(name, len(data))
        old = current.info
        info = SecretInfo(
            name,
            len(data),
            old.mode if change.permissions is None else change.permissions,
            old.uid if change.uid is None else change.uid,
            old.gid if change.gid is None else change.gid,
            utc_now(),
        )
        temp = self._write_temp(info, data)
        try:
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        self._sync_directory()
        return info

    def delete(self, name: str) -> None:
        """Raises NotFound."""
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            raise NotFound(f"secret {name!r} not found", code="secret_not_found") from None
        self._sync_directory()

    def _check_room(self, name: str, size: int) -> None:
        others = [info for info in self.infos() if info.name != name]
        if len(others) + 1 > MAX_SECRETS or sum(info.size for info in others) + size > MAX_STORE_BYTES:
            raise Unavailable(
                f"the secret store is full (at most {MAX_SECRETS} secrets and {MAX_STORE_BYTES // 2**20} MiB in all)",
                code="secret_store_full",
            )

    def _write_temp(self, info: SecretInfo, data: bytes) -> Path:
        meta = {"size": info.size, "mode": info.mode, "uid": info.uid, "gid": info.gid, "modified_at": info.modified_at}
        temp = self.directory / f"{TEMP_PREFIX}{tokens.token_hex(8)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(json.dumps(meta).encode() + b"\n")
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return temp

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- keeping guests in step ----------------------------------------------------------------------------


def granted(node: Node, name: str) -> bool:
    grant = node.record.secrets
    return grant is None or name in grant


class GuestSync:
    """One guest's copy of its secrets, kept in step with the store.

    ``request`` asks for a sync with the store as it is then and returns once an attempt that began after the
    call has ended, well or not. Requests that come while an attempt runs fold into one more attempt, so a burst
    of changes to a slow guest costs two syncs, not one each. A failed attempt (the agent slow to answer, a guest
    short of room) is retried with a growing pause for as long as the guest's agent is connected; once it is
    not, the guest's next READY asks again.
    """

    def __init__(self, attempt: Callable[[], Awaitable[bool]], connected: Callable[[], bool]) -> None:
        self._attempt = attempt
        self._connected = connected
        self._wanted = 0
        self._tried = 0
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def request(self) -> None:
        self._wanted += 1
        wanted = self._wanted
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="secrets-sync")
        async with self._progress:
            await self._progress.wait_for(lambda: self._tried >= wanted)

    async def _run(self) -> None:
        pause = RETRY_FIRST
        while True:
            target = self._wanted
            synced = await self._attempt()
            async with self._progress:
                self._tried = target
                self._progress.notify_all()
            if synced:
                if self._tried >= self._wanted:
                    return
                pause = RETRY_FIRST
                continue
            if not self._connected():
                return
            await asyncio.sleep(pause)
            pause = min(2 * pause, RETRY_MAX)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


class Secrets:
    """The store and the guests' copies: every change is stored, then synced to the running guests it
    concerns. ``nodes`` gives the nodes there are now."""

    def __init__(self, directory: Path, nodes: Callable[[], Iterable[Node]]) -> None:
        self.store = SecretStore(directory)
        self._nodes = nodes
        self._lock = asyncio.Lock()  # one change at a time, so a create's "exists" check holds
        self._guests: weakref.WeakKeyDictionary[Node, GuestSync] = weakref.WeakKeyDictionary()
        self._waiters: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        await asyncio.to_thread(self.store.open)

    async def close(self) -> None:
        for guest in list(self._guests.values()):
            guest.cancel()
        for task in list(self._waiters):
            task.cancel()
        for task in list(self._waiters):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the API's operations ----------------------------------------------------------------------
    async def infos(self) -> list[SecretInfo]:
        return await asyncio.to_thread(self.store.infos)

    async def create(self, spec: NewSecret) -> SecretInfo:
        """Raises Conflict when it exists, Unavailable when the store is full."""
        async with self._lock:
            info = await asyncio.to_thread(self.store.create, spec)
        await self._sync_concerned(spec.name)
        return info

    async def update(self, name: str, change: SecretChange) -> SecretInfo:
        """Raises InvalidArgument for a bad name, NotFound, Unavailable when the store is full."""
        check_name(name)
        async with self._lock:
            info = await asyncio.to_thread(self.store.update, name, change)
        await self._sync_concerned(name)
        return info

    async def delete(self, name: str) -> None:
        """Raises InvalidArgument for a bad name, NotFound."""
        check_name(name)
        async with self._lock:
            await asyncio.to_thread(self.store.delete, name)
        await self._sync_concerned(name)

    async def _sync_concerned(self, name: str) -> None:
        """Sync every running guest granted ``name``; answer once they all have it, or after ANSWER_WAIT
        (the syncs go on, and are retried while they fail; each failure is logged)."""
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(self.sync(node), name=f"{node.hostname}-secrets")
            for node in self._nodes()
            if granted(node, name) and _running(node)
        ]
        for task in tasks:
            self._waiters.add(task)
            task.add_done_callback(self._waiters.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=ANSWER_WAIT)

    # -- one guest ---------------------------------------------------------------------------------
    async def sync(self, node: Node) -> None:
        """Give ``node``'s guest exactly the secrets it is granted; return once an attempt has ended (a failed
        one is logged and retried in the background). Raises nothing."""
        await self._guest(node).request()

    async def sync_at_ready(self, node: Node) -> None:
        """``sync`` for an agent that has just said READY (wait=agent waits for this). A guest granted nothing
        stored is not waited for: its sync can only clear what an earlier agent left, so it goes on in the
        background rather than add a round trip to every create. Raises nothing."""
        try:
            granted_any = await asyncio.to_thread(self.store.holds_any, node.record.secrets)
        except OSError:
            granted_any = True  # the attempt reports it
        if granted_any:
            await self.sync(node)
            return
        task = asyncio.get_running_loop().create_task(self.sync(node), name=f"{node.hostname}-secrets")
        self._waiters.add(task)
        task.add_done_callback(self._waiters.discard)

    def _guest(self, node: Node) -> GuestSync:
        guest = self._guests.get(node)
        if guest is None:
            # By weak reference: the sync is the value of a weak mapping keyed by the node.
            ref = weakref.ref(node)
            guest = self._guests[node] = GuestSync(lambda: self._attempt(ref()), lambda: _running(ref()))
        return guest

    async def _attempt(self, node: Node | None) -> bool:
        if node is None:
            return False
        try:
            link = node.agent()
            secrets = await asyncio.to_thread(self.store.read, node.record.secrets)
            written, removed = await _send(link, secrets)
        except SlicerError as exc:
            log.warning("%s: secrets not synced: %s", node.hostname, exc.message)
        except TimeoutError:
            log.warning("%s: secrets not synced: the agent did not answer in %gs", node.hostname, SYNC_TIMEOUT)
        except OSError as exc:
            log.warning("%s: secrets not synced: cannot read the store: %s", node.hostname, exc.strerror)
        else:
            log.info("%s: secrets synced: %d in place, %d removed", node.hostname, written, removed)
            return True
        return False


def _running(node: Node | None) -> bool:
    if node is None:
        return False
    link = node.link
    return link is not None and link.ready.is_set()


async def _send(link: AgentLink, secrets: list[Secret]) -> tuple[int, int]:
    """One ``secrets`` stream: the set, its bytes, the agent's answer (files written, files removed).
    Raises SlicerError or TimeoutError."""
    files: list[protocol.SecretFile] = [
        {"name": s.info.name, "size": s.info.size, "mode": s.info.mode, "uid": s.info.uid, "gid": s.info.gid}
        for s in secrets
    ]
    request: protocol.SecretsRequest = {"op": Op.SECRETS, "secrets": files}
    stream = link.open(request)
    try:
        async with asyncio.timeout(SYNC_TIMEOUT):
            for secret in secrets:
                if secret.data:
                    await stream.write(secret.data)
            stream.close_input()
            async for event in stream:
                if isinstance(event, Message):
                    return _answer(event.body)
    finally:
        stream.cancel()
    raise Unavailable("the agent ended the stream without an answer", code="agent_unavailable")


def _answer(body: dict[str, Any]) -> tuple[int, int]:
    if body.get("type") == Event.DONE:
        return int_or(body.get("written"), 0), int_or(body.get("removed"), 0)
    raise Unavailable(f"the agent refused: {str_or(body.get('error'), 'no reason given')[:300]}", code="secrets_sync")
