"""``fs_watch``: inotify (through ctypes, on a non-blocking fd in the agent's epoll loop), never polling.

Events are filtered here, wait in a bounded queue that coalesces repeats of one type and path (``watch_events``),
and go out as NDJSON in DATA frames under the host's credit. A host that stops reading therefore costs at
most the queue's ``PENDING_LIMIT`` events and one frame: beyond that new events are dropped and counted, and
one ``overflow`` event says so once there is room again. Cancelling the stream closes the inotify fd, which
removes every watch with it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
import sys
import time

from pyslicer.agent.copy_rules import TEMP_PREFIX
from pyslicer.agent.fs import FsFailure, failure_of, resolve, rfc3339, send_under_credit
from pyslicer.agent.session import StreamSession
from pyslicer.agent.watch_events import (
    IN_CREATE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    EventFilter,
    Pending,
    kind_of,
    mask_for,
)
from pyslicer.protocol import INITIAL_WINDOW, MAX_PAYLOAD, Channel, FrameType, encode, encode_json
from pyslicer.protocol.frames import dumps

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from pyslicer.agent.loop import Timer
    from pyslicer.protocol import FsError, FsWatchEnded, FsWatchEvent, FsWatchStarted

PENDING_LIMIT = 4096
MAX_WATCHES = 8192  # directories per watch stream; the kernel's own limit (max_user_watches) may be lower
MAX_AGENT_WATCHES = 16384  # directories over all streams
MAX_STREAMS = 16  # watch streams at once: each is an inotify instance, and the kernel allows root 128 in all
END_GRACE = 10.0  # seconds a watch that ended waits for credit to send what it still holds
SCAN_STEP = 64  # directories listed per turn of the loop while a tree is being watched: other streams go on
READ_SIZE = 64 * 1024
_COPY_TEMP = TEMP_PREFIX.encode()
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len, then the name

_libc: Any = None


def libc() -> Any:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)  # the interpreter's own libc: no find_library (subprocess)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        _libc = lib
    return _libc


def _errno_error(path: str = "") -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code), path) if path else OSError(code, os.strerror(code))


class Inotify:
    def __init__(self) -> None:
        fd = libc().inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise _errno_error()
        self.fd: int = fd

    def add(self, path: str, mask: int) -> int:
        wd: int = libc().inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            raise _errno_error(path)
        return wd

    def remove(self, wd: int) -> None:
        libc().inotify_rm_watch(self.fd, wd)  # an error means it is gone already

    def read(self) -> list[tuple[int, int, int, bytes]]:
        """The events waiting: (wd, mask, cookie, name)."""
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return []
        events = []
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, cookie, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size
            name = data[offset : offset + length].rstrip(b"\0")
            offset += length
            events.append((wd, mask, cookie, name))
        return events

    def close(self) -> None:
        os.close(self.fd)


class Watch:
    __slots__ = ("device", "is_dir", "is_root", "path")

    def __init__(self, path: str, is_root: bool, is_dir: bool, device: int) -> None:
        self.path = path
        self.is_root = is_root
        self.is_dir = is_dir
        self.device = device  # the root's filesystem: a recursive watch never enters another


class _Budget:
    """What every watch stream of this agent holds together."""

    streams = 0
    watches = 0


_budget = _Budget()


class WatchSession(StreamSession):
    """Watches ``request`` (an ``FsWatchRequest``, untrusted) for ``stream`` until cancelled."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._credit = 0
        self._inotify: Inotify | None = None
        self._watches: dict[int, Watch] = {}
        self._filter = EventFilter()
        self._pending = Pending(PENDING_LIMIT)
        self._debounce = 0.0
        self._recursive = False
        self._mask = 0
        self._buffer = bytearray()
        self._timer: Timer | None = None
        self._limit_noted = False
        self._counted = False
        self._started = False
        self._scans: list[tuple[str, int, bool]] = []  # directories to list: (path, device, report contents)
        self._scan_timer: Timer | None = None
        self._paths: list[str] = []
        self._ending: str | None = None  # why the watch ended, while what it holds still goes out
        self._end_timer: Timer | None = None

    # -- from the host -------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._start()
        except FsFailure as exc:
            self._fail(str(exc), exc.errno_name)
        except Exception as exc:
            self._fail(f"agent: watch: {exc!r}", "EIO")

    def on_data(self, channel: int, data: bytes) -> None:
        pass

    def on_eof(self, channel: int) -> None:
        pass

    def on_window(self, increment: int) -> None:
        self._credit += increment
        self._guard(self._flush)

    def cancel(self) -> None:
        self._done = True
        self._close()

    # -- setting up ----------------------------------------------------------------------------
    def _start(self) -> None:
        request = self._request
        self._credit = int(request.get("window") or INITIAL_WINDOW)
        uid = request.get("uid")
        uid = uid if isinstance(uid, int) and not isinstance(uid, bool) and uid >= 0 else None
        paths = [resolve(path, uid).rstrip("/") or "/" for path in _strings(request.get("paths"))]
        if not paths:
            raise FsFailure("paths: at least one path is required", "EINVAL")
        kinds = _strings(request.get("events"))
        self._filter = EventFilter(kinds, _strings(request.get("patterns")))
        self._mask = mask_for(self._filter.kinds)
        self._recursive = request.get("recursive") is True
        debounce_ms = request.get("debounce_ms")
        self._debounce = debounce_ms / 1000 if isinstance(debounce_ms, int) and debounce_ms > 0 else 0.0
        if _budget.streams >= MAX_STREAMS:
            raise FsFailure(f"too many watches in this VM at once (at most {MAX_STREAMS}): end one first", "EMFILE")
        self._inotify = Inotify()
        _budget.streams += 1
        self._counted = True
        for path in paths:
            try:
                st = os.stat(path)
            except OSError as exc:
                raise failure_of(exc, "watch", path) from None
            is_dir = stat.S_ISDIR(st.st_mode)
            self._add(path, is_root=True, is_dir=is_dir, device=st.st_dev)
            if self._recursive and is_dir:
                self._watch_tree(path, st.st_dev, report=False)  # (the root is watched already)
        self._paths = paths
        if not self._scans:
            self._begin()

    def _begin(self) -> None:
        """Every watch is in place: say so, and start reading (what happened meanwhile waits in the kernel)."""
        assert self._inotify is not None
        self._started = True
        started: FsWatchStarted = {"type": "started", "paths": self._paths, "watches": len(self._watches)}
        self._send_frame(encode_json(FrameType.MESSAGE, self.stream, started))
        self._loop.add_reader(self._inotify.fd, self._on_readable)

    def _add(self, path: str, *, is_root: bool, is_dir: bool, device: int) -> bool:
        assert self._inotify is not None
        if len(self._watches) >= MAX_WATCHES or _budget.watches >= MAX_AGENT_WATCHES:
            if is_root:
                raise FsFailure(f"watch {path}: too many directories watched in this VM", "EMFILE")
            self._note_limit(path)
            return False
        try:
            wd = self._inotify.add(path, self._mask)
        except OSError as exc:
            if is_root and exc.errno == errno.ENOSPC:  # the kernel's max_user_watches
                raise FsFailure(f"watch {path}: the kernel's limit of watches is reached", "EMFILE") from None
            if is_root:
                raise failure_of(exc, "watch", path) from None
            if exc.errno == errno.ENOSPC:
                self._note_limit(path)
            return False  # a subdirectory gone already, or unreadable: nothing to watch there
        if wd in self._watches and not is_root:
            return False  # watched (and listed) already: its create and our listing of its parent both saw it
        if wd not in self._watches:
            _budget.watches += 1
        self._watches[wd] = Watch(path, is_root, is_dir, device)
        return True

    def _drop(self, wd: int) -> None:
        if self._watches.pop(wd, None) is not None:
            _budget.watches -= 1

    def _watch_new_directory(self, path: str, device: int, *, report: bool) -> None:
        """A directory that appeared in the tree, and everything under it. Made here (``report``), its contents
        may have appeared before its watch: they are reported as created. Moved in, they are not (as fsnotify)."""
        if self._add(path, is_root=False, is_dir=True, device=device):
            self._watch_tree(path, device, report=report)

    def _watch_tree(self, top: str, device: int, *, report: bool) -> None:
        """Watch every directory under ``top`` (``top`` itself is watched already) on ``device``, listing
        ``SCAN_STEP`` directories a turn of the loop."""
        self._scans.append((top, device, report))
        if self._scan_timer is None:
            self._scan_timer = self._loop.call_later(0, self._on_scan)

    def _on_scan(self) -> None:
        self._scan_timer = None
        self._guard(self._scan_step)

    def _scan_step(self) -> None:
        if self._done or self._inotify is None:
            return
        for _ in range(SCAN_STEP):
            if not self._scans:
                break
            directory, device, report = self._scans.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                is_dir = entry.is_dir(follow_symlinks=False)
                if report:
                    self._emit("create", entry.path, is_dir)
                if not is_dir:
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_dev != device:
                        continue  # a mount point: another filesystem (/proc, /sys, ...) is not entered
                except OSError:
                    continue
                if self._add(entry.path, is_root=False, is_dir=True, device=device):
                    self._scans.append((entry.path, device, report))
        if self._scans:
            self._scan_timer = self._loop.call_later(0, self._on_scan)
        elif not self._started:
            self._begin()
        if self._started:
            self._flush()

    def _note_limit(self, path: str) -> None:
        if self._limit_noted:
            return
        self._limit_noted = True
        note: FsWatchEvent = {
            "type": "overflow",
            "path": path,
            "timestamp": rfc3339(time.time_ns()),
            "size": 0,
            "isDir": True,
            "message": "watch limit reached: some new directories are not watched",
        }
        self._buffer += dumps(note).encode() + b"\n"

    # -- events --------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        self._guard(self._read)

    def _read(self) -> None:
        if self._inotify is None:
            return
        moved_away: dict[int, str] = {}  # a move's cookie -> the directory that left its old name
        for wd, mask, cookie, raw_name in self._inotify.read():
            if raw_name.startswith(_COPY_TEMP):
                continue  # a copy being written aside: its rename into place is the event that shows
            if mask & IN_Q_OVERFLOW:
                self._pending.dropped += 1  # at least one; the kernel does not say how many
                continue
            watch = self._watches.get(wd)
            if watch is None:
                continue
            if mask & IN_IGNORED:
                self._drop(wd)
                continue
            if not raw_name and not watch.is_root:
                continue  # a subdirectory's own events: its parent's watch reports them by name
            path = _join(watch.path, os.fsdecode(raw_name)) if raw_name else watch.path
            is_dir = bool(mask & IN_ISDIR) or (not raw_name and watch.is_dir)
            kind = kind_of(mask)
            if kind is not None:
                self._emit(kind, path, is_dir)  # first: a new directory comes before what is in it
            if self._recursive and is_dir and raw_name:
                if mask & IN_MOVED_FROM:
                    moved_away[cookie] = path
                elif mask & IN_MOVED_TO and cookie in moved_away:
                    self._rename_watches(moved_away.pop(cookie), path)  # a move within the tree
                elif mask & (IN_MOVED_TO | IN_CREATE):
                    self._watch_new_directory(path, watch.device, report=not mask & IN_MOVED_TO)
            if not raw_name and mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                self._inotify.remove(wd)  # gone or moved away: the path means nothing now
        for path in moved_away.values():
            self._unwatch_under(path)  # moved out of the tree (or its other half is in the next read)
        if not self._watches:
            self._end("nothing left to watch")
            return
        self._flush()

    def _unwatch_under(self, path: str) -> None:
        assert self._inotify is not None
        prefix = path + "/"
        for wd, watch in list(self._watches.items()):
            if not watch.is_root and (watch.path == path or watch.path.startswith(prefix)):
                self._drop(wd)
                self._inotify.remove(wd)

    def _rename_watches(self, old: str, new: str) -> None:
        prefix = old + "/"
        for watch in self._watches.values():
            if not watch.is_root and (watch.path == old or watch.path.startswith(prefix)):
                watch.path = new + watch.path[len(old) :]

    def _emit(self, kind: str, path: str, is_dir: bool) -> None:
        if not self._filter.wants(kind) or not self._filter.matches(path):
            return
        size = _size(path) if kind != "remove" else 0
        event: FsWatchEvent = {
            "type": kind,  # type: ignore[typeddict-item]  # one of KINDS
            "path": path,
            "timestamp": rfc3339(time.time_ns()),
            "size": size,
            "isDir": is_dir,
        }
        self._pending.add(event, time.monotonic())

    # -- sending -------------------------------------------------------------------------------
    def _flush(self, *, everything: bool = False) -> None:
        """Move what is due into the outgoing buffer while it has room, and send it as credit allows."""
        if self._done:
            return
        now = time.monotonic()
        debounce = 0.0 if everything or self._ending is not None else self._debounce
        while len(self._buffer) < MAX_PAYLOAD:
            note = self._pending.take_note(rfc3339(time.time_ns()))
            event = note or self._pending.pop_ready(now, debounce)
            if event is None:
                break
            self._buffer += dumps(event).encode() + b"\n"
        self._credit = send_under_credit(self._send_frame, self.stream, self._buffer, self._credit)
        if self._ending is not None:
            if not self._buffer and not len(self._pending) and not self._pending.dropped:
                self._finish(dropped=0)
            return
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self._pending.next_due(self._debounce)
        if due is not None and len(self._buffer) < MAX_PAYLOAD:  # (a full buffer waits for credit instead)
            self._timer = self._loop.call_later(max(0.0, due - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._guard(self._flush)

    def _end(self, reason: str) -> None:
        """Nothing is left to watch: send what is held as credit comes (for ``END_GRACE`` at most), then end."""
        self._stop_watching()
        self._ending = reason
        self._flush()
        if not self._done:
            self._end_timer = self._loop.call_later(END_GRACE, self._on_end_timer)

    def _on_end_timer(self) -> None:
        self._end_timer = None
        # What could not go out: every whole line still held (a line half sent counts), and what waits.
        self._finish(dropped=self._buffer.count(b"\n") + len(self._pending) + self._pending.dropped)

    def _finish(self, *, dropped: int) -> None:
        if self._done or self._ending is None:
            return
        self._done = True
        ended: FsWatchEnded = {"type": "ended", "reason": self._ending}
        if dropped:
            ended["dropped"] = dropped
        self._close()
        self._send_frame(encode(FrameType.EOF, self.stream, flags=Channel.STDOUT))
        self._send_frame(encode_json(FrameType.MESSAGE, self.stream, ended))
        self._on_finish(self)

    def _fail(self, message: str, errno_name: str) -> None:
        if self._done:
            return
        self._done = True
        self._close()
        error: FsError = {"type": "error", "error": message, "errno": errno_name}
        self._send_frame(encode_json(FrameType.MESSAGE, self.stream, error))
        self._on_finish(self)

    def _guard(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:  # the host must always see an end to the stream
            print(f"slicer-agent: stream {self.stream}: {exc!r}", file=sys.stderr)
            self._fail(f"agent: watch: {exc!r}", "EIO")

    def _close(self) -> None:
        self._stop_watching()
        for timer in (self._timer, self._end_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._end_timer = None
        self._buffer = bytearray()

    def _stop_watching(self) -> None:
        if self._scan_timer is not None:
            self._scan_timer.cancel()
            self._scan_timer = None
        self._scans = []
        if self._inotify is not None:
            self._loop.forget(self._inotify.fd)
            self._inotify.close()  # removes every watch with it
            self._inotify = None
        if self._counted:
            self._counted = False
            _budget.streams -= 1
        _budget.watches -= len(self._watches)
        self._watches = {}


def _join(directory: str, name: str) -> str:
    return directory + name if directory.endswith("/") else f"{directory}/{name}"


def _size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0  # gone already


def _strings(value: object) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []
