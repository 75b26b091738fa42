"""The guest filesystem: validated requests in, typed entries and watch events out.

The agent does the work with its own os calls (``agent/fs.py``, ``agent/watch.py``); what it sends back is
rebuilt here from the fields we know. Listings and watch events arrive as NDJSON under the stream's credit,
which goes back to the guest only as the consumer takes them, so a slow reader holds back only its own
stream (and the agent coalesces or drops a watch's events, see ``agent/watch.py``).

Paths are absolute or start with ``~`` (the home of root, or for a watch of ``uid``); a relative path is an
error rather than a guess. Names that are not UTF-8 in the guest come back with U+FFFD in their place.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from pyslicer.daemon.agent_link import AgentLink, AgentStream, Message, Output
from pyslicer.daemon.exec import Flag, UserId
from pyslicer.daemon.guest_input import int_or, str_or
from pyslicer.durations import parse_go_duration_ns
from pyslicer.errors import (
    AgentError,
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SlicerError,
    Unavailable,
)
from pyslicer.protocol import WATCH_KINDS, Event, Op
from pyslicer.protocol.globs import BadPattern, check

if TYPE_CHECKING:
    from pyslicer import protocol

EntryType = Literal["file", "directory", "symlink"]
WatchKind = Literal["create", "write", "remove", "rename", "chmod"]  # protocol.WATCH_KINDS, for validation
DEFAULT_DEBOUNCE_NS = 200_000_000  # Slicer's default
MAX_DEBOUNCE_NS = 10_000_000_000
MAX_TIMEOUT_NS = 24 * 3600 * 1_000_000_000
MAX_WATCH_EVENTS = 1_000_000
MAX_LINE = 1024 * 1024  # one NDJSON line from the guest (an entry or an event is a few hundred bytes)
CALL_TIMEOUT = 30.0
SLOW_CALL_TIMEOUT = 600.0  # a recursive remove of a big tree under TCG
MAX_EVENT_ID = 2**53 - 1  # what every client parses exactly (a JavaScript number, Go's int); ids wrap to 1 after it

# The agent's errno names, as the daemon's errors.
_ERRORS: dict[str, tuple[type[SlicerError], str]] = {
    "ENOENT": (NotFound, "path_not_found"),
    "EEXIST": (Conflict, "path_exists"),
    "ENOTEMPTY": (Conflict, "directory_not_empty"),
    "EBUSY": (Conflict, "path_busy"),
    "EROFS": (Conflict, "read_only"),
    "EXDEV": (Conflict, "other_filesystem"),
    "ENOTDIR": (InvalidArgument, "not_a_directory"),
    "EISDIR": (InvalidArgument, "is_a_directory"),
    "EINVAL": (InvalidArgument, "invalid_path"),
    "ENAMETOOLONG": (InvalidArgument, "invalid_path"),
    "ELOOP": (InvalidArgument, "invalid_path"),
    "EACCES": (PermissionDenied, "permission_denied"),
    "EPERM": (PermissionDenied, "permission_denied"),
    "ENOSPC": (Unavailable, "no_space"),
    "EMFILE": (Unavailable, "too_many_watches"),  # only a watch says it: its limits, or the kernel's
}


# -- requests ----------------------------------------------------------------------------------------


def _guest_path(value: str) -> str:
    if not value:
        raise PydanticCustomError("invalid_path", "a path is required")
    if "\0" in value:
        raise PydanticCustomError("invalid_path", "a path may not contain NUL")
    if not (value.startswith("/") or value == "~" or value.startswith("~/")):
        raise PydanticCustomError("invalid_path", "path must be absolute or start with ~/: {path!r}", {"path": value})
    return value


GuestPath = Annotated[
    str, AfterValidator(_guest_path), Field(description="an absolute path in the guest, or ~/... (root's home)")
]


def parse_mode(value: Any) -> int:
    """``"0755"``, ``"755"`` or ``"0o755"`` as permission bits."""
    text = value if isinstance(value, str) else None
    digits = text.strip().lower().removeprefix("0o") if text is not None else ""
    if not digits or len(digits) > 5 or any(ch not in "01234567" for ch in digits) or int(digits, 8) > 0o7777:
        raise PydanticCustomError(
            "invalid_mode", "invalid mode {mode}: an octal permission like 0755 is expected", {"mode": repr(value)}
        )
    return int(digits, 8)


def _mode_or_default(value: Any) -> Any:
    return 0o755 if value in (None, "") else parse_mode(value)


class PathQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    path: GuestPath


class RemoveRequest(PathQuery):
    recursive: Flag = Field(default=False, description="remove a directory and everything in it")


class MkdirRequest(BaseModel):
    """``POST fs/mkdir``'s body."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    path: GuestPath
    recursive: bool = Field(default=False, description="create missing parents; an existing directory is fine")
    mode: Annotated[
        int,
        BeforeValidator(_mode_or_default),
        WithJsonSchema({"type": "string", "description": 'octal permission bits, e.g. "0755" (the default)'}),
    ] = 0o755


def _split_commas(value: Any) -> Any:
    """Repeated parameters, each of which may also be a comma-separated list."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return [part.strip() for item in value for part in str(item).split(",") if part.strip()]
    return value


def _patterns(values: list[str]) -> list[str]:
    for pattern in values:
        try:
            check(pattern)
        except BadPattern as exc:
            raise PydanticCustomError(
                "invalid_pattern", "bad pattern {pattern!r}: {reason}", {"pattern": pattern, "reason": str(exc)}
            ) from None
    return values


def _duration(low: int, high: int, *, zero_ok: bool) -> Any:
    def parse(value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            ns = value
        else:
            try:
                ns = parse_go_duration_ns(str(value).strip())
            except SlicerError as exc:
                raise PydanticCustomError("invalid_duration", "{reason}", {"reason": exc.message}) from None
        if ns == 0 and zero_ok:
            return 0
        if not low <= ns <= high:
            raise PydanticCustomError(
                "out_of_range",
                "must be a Go duration between {low} and {high}",
                {"low": "0s" if zero_ok else "1ns", "high": f"{high // 1_000_000_000}s"},
            )
        return ns

    return BeforeValidator(parse)


class WatchRequest(BaseModel):
    """``GET fs/watch``'s query. ``paths``, ``patterns`` and ``events`` are repeated parameters, each of which
    may also be a comma-separated list (not ``paths``: a comma is a legal character in a path)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    paths: Annotated[list[GuestPath], Field(min_length=1, description="what to watch (repeat for more); ~ is uid's")]
    patterns: Annotated[
        list[str],
        BeforeValidator(_split_commas),
        AfterValidator(_patterns),
        Field(default_factory=list, description="Go path.Match globs against the full path or the base name"),
    ]
    events: Annotated[
        list[WatchKind | Literal["all"]],
        BeforeValidator(_split_commas),
        Field(default_factory=list, description="the event types to deliver (none, or all: every type)"),
    ]
    recursive: Flag = Field(default=False, description="watch subdirectories, and those created later")
    one_shot: Flag = Field(default=False, description="end the stream after the first event")
    debounce: Annotated[
        int,
        _duration(0, MAX_DEBOUNCE_NS, zero_ok=True),
        WithJsonSchema({"type": "string", "description": "Go duration (default 200ms, at most 10s): coalesce bursts"}),
    ] = DEFAULT_DEBOUNCE_NS
    timeout: Annotated[
        int | None,
        _duration(1, MAX_TIMEOUT_NS, zero_ok=True),
        WithJsonSchema({"type": "string", "description": "Go duration: end the stream then (at most 24h; 0: never)"}),
    ] = None
    max_events: int = Field(
        default=0, ge=0, le=MAX_WATCH_EVENTS, description="end the stream after this many events (0: no limit)"
    )
    uid: UserId = None
    last_event_id: int = Field(
        default=0, ge=0, le=MAX_EVENT_ID, description="ids continue after this one (at most 2^53-1, then wrap to 1)"
    )

    def to_wire(self) -> protocol.FsWatchRequest:
        return {
            "op": Op.FS_WATCH,
            "paths": list(self.paths),
            "patterns": list(self.patterns),
            "events": [kind for kind in self.events if kind != "all"] if "all" not in self.events else [],
            "recursive": self.recursive,
            "debounce_ms": self.debounce // 1_000_000,
            "uid": self.uid,
        }

    @property
    def limit(self) -> int:
        """How many events end the stream (0: none)."""
        return 1 if self.one_shot else self.max_events


# -- results -----------------------------------------------------------------------------------------


def clean_text(value: object, default: str = "") -> str:
    """A guest string made safe to encode: lone surrogates (a name that is not UTF-8) become U+FFFD."""
    text = str_or(value, default)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text


@dataclass(frozen=True, slots=True)
class FsEntry:
    name: str
    type: EntryType
    size: int
    mtime: str  # RFC 3339
    mode: str  # "0644"

    @classmethod
    def from_guest(cls, body: object) -> FsEntry:
        fields: dict[str, Any] = body if isinstance(body, dict) else {}
        kind = fields.get("type")
        return cls(
            name=clean_text(fields.get("name")),
            type=kind if kind in ("file", "directory", "symlink") else "file",
            size=max(0, int_or(fields.get("size"), 0)),
            mtime=clean_text(fields.get("mtime"), "1970-01-01T00:00:00Z"),
            mode=clean_text(fields.get("mode"), "0000"),
        )


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change (or, with type ``overflow``, a note that events were lost: ``message`` says how)."""

    id: int
    type: str
    path: str
    timestamp: str
    size: int
    is_dir: bool
    message: str | None = None

    @property
    def is_change(self) -> bool:
        return self.type in WATCH_KINDS


@dataclass(frozen=True, slots=True)
class WatchEnded:
    """The last item of a watch: ``one_shot``, ``max_events``, ``timeout``, or the guest's reason."""

    reason: str


def guest_error(body: dict[str, Any], what: str) -> SlicerError:
    """The daemon's error for an agent's ``FsError``."""
    cls, code = _ERRORS.get(str_or(body.get("errno"), ""), (Unavailable, "fs_error"))
    return cls(clean_text(body.get("error"), f"{what} failed"), code=code)


class NdjsonLines:
    """NDJSON lines split from DATA chunks (a line may span chunks); the caller returns each chunk's credit
    once it has handed on the chunk's lines."""

    def __init__(self) -> None:
        self._partial = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._partial += data
        *lines, rest = bytes(self._partial).split(b"\n")
        if len(rest) > MAX_LINE:
            raise AgentError("the agent sent an overlong line")
        self._partial = bytearray(rest)
        return [line for line in lines if line.strip()]


def json_line(line: bytes) -> dict[str, Any]:
    try:
        body = json.loads(line)
    except ValueError:
        raise AgentError("the agent sent a line that is not JSON") from None
    if not isinstance(body, dict):
        raise AgentError("the agent sent a line that is not a JSON object")
    return body


class DirectoryListing:
    """The entries of one directory, as the guest lists them (sorted by name). Iterate ``entries()`` once.

    Raises AgentError when the agent is lost (or sends nonsense) mid-listing."""

    def __init__(self, stream: AgentStream, path: str) -> None:
        self._stream = stream
        self._events = aiter(stream)
        self.path = path
        self._first: Output | None = None
        self._finished = False

    async def _open(self) -> None:
        """Wait for the first entries or the answer; raises the guest's error (NotFound, ...)."""
        async for event in self._events:
            if isinstance(event, Output):
                self._first = event
                return
            if isinstance(event, Message):
                if event.body.get("type") == Event.ERROR:
                    self._finished = True
                    raise guest_error(event.body, "readdir")
                self._finished = True
                return
        raise AgentError(f"the agent ended readdir {self.path} without an answer")

    async def entries(self) -> AsyncIterator[FsEntry]:
        lines = NdjsonLines()
        try:
            chunk = self._first
            while True:
                if chunk is not None:
                    for line in lines.feed(chunk.data):
                        yield FsEntry.from_guest(json_line(line))
                    self._stream.consumed(len(chunk.data))
                if self._finished:
                    return
                chunk = None
                event = await anext(self._events, None)
                if event is None:
                    raise AgentError(f"the agent ended readdir {self.path} early")
                if isinstance(event, Output):
                    chunk = event
                elif isinstance(event, Message):
                    if event.body.get("type") == Event.ERROR:
                        raise guest_error(event.body, "readdir")
                    self._finished = True
        finally:
            self.cancel()

    def cancel(self) -> None:
        self._stream.cancel()


class FsWatch:
    """A watch in a guest, started: iterate ``events()`` once; it ends with one ``WatchEnded``.

    ``one_shot``, ``max_events`` and ``timeout`` are kept here; ``overflow`` notes count toward none of them.
    """

    def __init__(self, stream: AgentStream, request: WatchRequest) -> None:
        self._stream = stream
        self._events = aiter(stream)
        self.request = request
        self.paths: list[str] = []
        self.next_id = request.last_event_id % MAX_EVENT_ID + 1

    async def _open(self) -> None:
        async for event in self._events:
            if isinstance(event, Message):
                kind = event.body.get("type")
                if kind == Event.ERROR:
                    raise guest_error(event.body, "watch")
                if kind == Event.STARTED:
                    paths = event.body.get("paths")
                    self.paths = [clean_text(p) for p in paths] if isinstance(paths, list) else []
                    return
        raise AgentError("the agent ended the watch before it started")

    async def events(self) -> AsyncIterator[WatchEvent | WatchEnded]:
        loop = asyncio.get_running_loop()
        timeout = self.request.timeout
        deadline = loop.time() + timeout / 1e9 if timeout else None
        limit = self.request.limit
        delivered = 0
        lines = NdjsonLines()
        try:
            while True:
                try:
                    remaining = None if deadline is None else max(0.0, deadline - loop.time())
                    event = await asyncio.wait_for(anext(self._events), remaining)
                except TimeoutError:
                    yield WatchEnded("timeout")
                    return
                except StopAsyncIteration:
                    yield WatchEnded("the agent ended the watch")
                    return
                if isinstance(event, Message):
                    kind = event.body.get("type")
                    if kind == Event.ERROR:
                        raise guest_error(event.body, "watch")
                    if kind == "ended":
                        dropped = max(0, int_or(event.body.get("dropped"), 0))
                        if dropped:  # the guest ended with events it had no credit to send
                            yield self._event_from(
                                {"type": "overflow", "message": f"{dropped} events dropped: the watch ended first"}
                            )
                        yield WatchEnded(clean_text(event.body.get("reason"), "ended"))
                        return
                    continue
                if not isinstance(event, Output):
                    continue
                for line in lines.feed(event.data):
                    typed = self._event_from(json_line(line))
                    yield typed
                    if typed.is_change:
                        delivered += 1
                        if limit and delivered >= limit:
                            yield WatchEnded("one_shot" if self.request.one_shot else "max_events")
                            return
                self._stream.consumed(len(event.data))
        finally:
            self.cancel()

    def _event_from(self, body: dict[str, Any]) -> WatchEvent:
        event_id, self.next_id = self.next_id, self.next_id % MAX_EVENT_ID + 1
        message = body.get("message")
        return WatchEvent(
            id=event_id,
            type=clean_text(body.get("type"), "overflow"),
            path=clean_text(body.get("path")),
            timestamp=clean_text(body.get("timestamp")),
            size=max(0, int_or(body.get("size"), 0)),
            is_dir=body.get("isDir") is True,
            message=clean_text(message) if isinstance(message, str) else None,
        )

    def cancel(self) -> None:
        """Stop watching (the agent closes its inotify fd). Safe to call more than once."""
        self._stream.cancel()


_Streamed = TypeVar("_Streamed", DirectoryListing, FsWatch)


class GuestFilesystem:
    """The filesystem of one running guest, through its agent. Every method raises NotFound (code
    ``path_not_found``) for a missing path, Conflict, InvalidArgument or PermissionDenied as the guest's
    answer says, and AgentError when the agent does not answer."""

    def __init__(self, link: AgentLink, hostname: str) -> None:
        self._link = link
        self.hostname = hostname

    async def _call(self, request: protocol.FsPathRequest | protocol.FsMkdirRequest, timeout: float) -> dict[str, Any]:
        body = await self._link.call(request, timeout=timeout)
        if body.get("type") == Event.ERROR:
            raise guest_error(body, str(request["op"]).removeprefix("fs_"))
        return body

    async def stat(self, path: str) -> FsEntry:
        request: protocol.FsPathRequest = {"op": Op.FS_STAT, "path": path}
        return FsEntry.from_guest((await self._call(request, CALL_TIMEOUT)).get("entry"))

    async def mkdir(self, request: MkdirRequest) -> FsEntry:
        wire: protocol.FsMkdirRequest = {
            "op": Op.FS_MKDIR,
            "path": request.path,
            "recursive": request.recursive,
            "mode": request.mode,
        }
        return FsEntry.from_guest((await self._call(wire, SLOW_CALL_TIMEOUT)).get("entry"))

    async def remove(self, request: RemoveRequest) -> str:
        """Remove a path; returns it resolved (``~`` expanded)."""
        wire: protocol.FsPathRequest = {"op": Op.FS_REMOVE, "path": request.path, "recursive": request.recursive}
        return clean_text((await self._call(wire, SLOW_CALL_TIMEOUT)).get("path"), request.path)

    async def readdir(self, path: str) -> DirectoryListing:
        request: protocol.FsPathRequest = {"op": Op.FS_READDIR, "path": path}
        return await self._started(DirectoryListing(self._link.open(request), path), "answer readdir")

    async def watch(self, request: WatchRequest) -> FsWatch:
        """Start watching; returns once the guest's watches are in place (NotFound for a missing path)."""
        return await self._started(FsWatch(self._link.open(request.to_wire()), request), "start the watch")

    async def _started(self, stream: _Streamed, what: str) -> _Streamed:
        """``stream`` once the guest has begun it; cancelled on any failure, AgentError when it takes too long."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await stream._open()
        except TimeoutError:
            stream.cancel()
            raise AgentError(f"agent on {self.hostname} did not {what}") from None
        except BaseException:
            stream.cancel()
            raise
        return stream
