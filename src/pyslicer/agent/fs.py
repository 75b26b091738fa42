"""The filesystem ops (``fs_stat``, ``fs_readdir``, ``fs_mkdir``, ``fs_remove``): os calls, never a command.

A listing goes out as NDJSON in DATA frames under the host's credit, produced only as credit comes in, so a
huge directory never piles up in the agent (only its sorted names are held). Everything else is one MESSAGE.
Paths are absolute or start with ``~`` (root's home: these ops run as the agent, root); nothing is
normalised, the kernel resolves ``..`` and symlinks in the parents as it would for any program.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time

from pyslicer.agent.accounts import home_of
from pyslicer.agent.session import StreamSession
from pyslicer.protocol import INITIAL_WINDOW, MAX_PAYLOAD, Channel, FrameType, encode, encode_json
from pyslicer.protocol.frames import dumps

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    from pyslicer.protocol import FsDone, FsEntry, FsError


class FsFailure(Exception):
    """An op that failed, with the errno name the host maps to a status."""

    def __init__(self, message: str, errno_name: str) -> None:
        super().__init__(message)
        self.errno_name = errno_name


def failure_of(exc: OSError, what: str, path: str) -> FsFailure:
    name = errno.errorcode.get(exc.errno or 0, "EIO")
    return FsFailure(f"{what} {path}: {exc.strerror or name}", name)


def send_under_credit(send: Callable[[bytes], None], stream: int, buffer: bytearray, credit: int) -> int:
    """Send the front of ``buffer`` as stdout DATA frames while ``credit`` lasts (what is sent leaves the
    buffer); returns the credit left."""
    while buffer and credit > 0:
        size = min(len(buffer), credit, MAX_PAYLOAD)
        send(encode(FrameType.DATA, stream, bytes(buffer[:size]), Channel.STDOUT))
        del buffer[:size]
        credit -= size
    return credit


def resolve(path: object, uid: int | None = None) -> str:
    """``path`` with ``~`` expanded to ``uid``'s home; FsFailure for anything but an absolute path."""
    if not isinstance(path, str) or not path:
        raise FsFailure("a path is required", "EINVAL")
    if "\0" in path:
        raise FsFailure("a path may not contain NUL", "EINVAL")
    if path == "~" or path.startswith("~/"):
        home = home_of(uid)
        if not home:
            raise FsFailure(
                f"{path}: the user has no account in the guest, so no home: give an absolute path", "EINVAL"
            )
        path = home.rstrip("/") + path[1:] or "/"
    if not path.startswith("/"):
        raise FsFailure(f"path must be absolute or start with ~/: {path}", "EINVAL")
    return path


def rfc3339(time_ns: int) -> str:
    """RFC 3339 in UTC with nanoseconds, trailing zeros dropped (Go's RFC3339Nano)."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    t = time.gmtime(seconds)
    stamp = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{min(t.tm_sec, 59):02d}"
    if nanos:
        stamp += "." + f"{nanos:09d}".rstrip("0")
    return stamp + "Z"


def entry_of(name: str, st: os.stat_result) -> FsEntry:
    mode = st.st_mode
    kind = "directory" if stat.S_ISDIR(mode) else "symlink" if stat.S_ISLNK(mode) else "file"
    return {
        "name": name,
        "type": kind,  # type: ignore[typeddict-item]  # one of the three
        "size": st.st_size,
        "mtime": rfc3339(st.st_mtime_ns),
        "mode": f"{stat.S_IMODE(mode):04o}",
    }


def base_name(path: str) -> str:
    trimmed = path.rstrip("/")
    return trimmed.rsplit("/", 1)[-1] if trimmed else "/"


def lstat_entry(path: str) -> FsEntry:
    try:
        return entry_of(base_name(path), os.lstat(path))
    except OSError as exc:
        raise failure_of(exc, "stat", path) from None


def make_directory(path: str, recursive: bool, mode: int) -> None:
    """mkdir, or with ``recursive`` mkdir -p; every directory made gets exactly ``mode``."""
    if not recursive:
        try:
            os.mkdir(path, 0o700)
        except OSError as exc:
            raise failure_of(exc, "mkdir", path) from None
        _chmod(path, mode)
        return
    missing: list[str] = []
    current = path.rstrip("/") or "/"
    while True:
        try:
            st = os.stat(current)
        except FileNotFoundError:
            missing.append(current)
            parent = current.rsplit("/", 1)[0] or "/"
            if parent == current:
                break
            current = parent
            continue
        except OSError as exc:
            raise failure_of(exc, "mkdir", current) from None
        if not stat.S_ISDIR(st.st_mode):
            code = "EEXIST" if current == (path.rstrip("/") or "/") else "ENOTDIR"
            raise FsFailure(f"mkdir {current}: exists and is not a directory", code)
        break
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: as mkdir -p, that is fine
        except OSError as exc:
            raise failure_of(exc, "mkdir", directory) from None
        _chmod(directory, mode)


def _chmod(path: str, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except OSError as exc:
        raise failure_of(exc, "chmod", path) from None


def root_identity() -> tuple[int, int]:
    st = os.stat("/")
    return st.st_dev, st.st_ino


def remove_path(path: str, recursive: bool) -> None:
    """rm (a symlink itself, never its target), rmdir, or with ``recursive`` rm -r --one-file-system.

    As rm's --preserve-root, ``/`` is refused by what it is, not how it is spelt: a bind mount of it or
    ``/proc/1/root`` are ``/`` too. A trailing slash on a symlink is ignored, so ``link/`` removes the link."""
    if path.rstrip("/") == "" or path.rstrip("/") in (".", "..") or base_name(path) in (".", ".."):
        raise FsFailure(f"refusing to remove {path}", "EINVAL")
    target = path.rstrip("/")
    try:
        st = os.lstat(target)
        root = root_identity()
    except OSError as exc:
        raise failure_of(exc, "remove", path) from None
    if (st.st_dev, st.st_ino) == root:
        raise FsFailure(f"refusing to remove {path}: it is the root directory", "EINVAL")
    if not stat.S_ISDIR(st.st_mode):
        try:
            os.unlink(target)
        except OSError as exc:
            raise failure_of(exc, "remove", path) from None
        return
    if recursive:
        _remove_tree(target, st)
        return
    try:
        os.rmdir(target)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FsFailure(f"remove {path}: directory not empty (use recursive)", "ENOTEMPTY") from None
        raise failure_of(exc, "remove", path) from None


def _open_directory(path: str, expected: os.stat_result) -> int:
    """An fd on the directory ``path`` provided it is still the one ``expected`` describes (no symlink, no
    swap since it was seen: a guest process cannot redirect the removal elsewhere)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino):
        os.close(fd)
        raise FsFailure(f"remove {path}: changed while it was being removed", "EBUSY")
    return fd


def _remove_tree(top: str, top_st: os.stat_result) -> None:
    # Depth-first with a stack rather than recursion (a deep tree must not hit Python's recursion limit), one
    # fd open at a time (nor the fd limit). Each directory is opened without following symlinks and checked
    # against what its parent listed; one on another filesystem (a mount point) is not entered.
    stack: list[tuple[str, os.stat_result, os.stat_result | None, bool]] = [(top, top_st, None, False)]
    while stack:
        directory, st, parent_st, emptied = stack.pop()
        try:
            if emptied:
                if parent_st is None:
                    os.rmdir(directory)
                    continue
                fd = _open_directory(directory.rsplit("/", 1)[0] or "/", parent_st)
                try:
                    os.rmdir(base_name(directory), dir_fd=fd)
                finally:
                    os.close(fd)
                continue
            stack.append((directory, st, parent_st, True))
            fd = _open_directory(directory, st)
            try:
                with os.scandir(fd) as entries:
                    for item in entries:
                        if not item.is_dir(follow_symlinks=False):
                            try:
                                os.unlink(item.name, dir_fd=fd)
                            except FileNotFoundError:
                                continue  # gone meanwhile
                            continue
                        child = os.stat(item.name, dir_fd=fd, follow_symlinks=False)
                        path = f"{directory}/{item.name}"
                        if child.st_dev != top_st.st_dev:
                            raise FsFailure(f"remove {top}: {path} is another filesystem (not crossed)", "EXDEV")
                        stack.append((path, child, st, False))
            finally:
                os.close(fd)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise failure_of(exc, "remove", directory) from None


class FsSession(StreamSession):
    """One fs op for one stream. ``fs_readdir`` streams under credit; the rest answer at once."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._credit = 0
        self._names: Iterator[str] | None = None
        self._directory = ""
        self._buffer = bytearray()

    # -- from the host -------------------------------------------------------------------------
    def start(self) -> None:
        request = self._request
        self._credit = int(request.get("window") or INITIAL_WINDOW)
        op = request.get("op")
        try:
            path = resolve(request.get("path"))
            if op == "fs_stat":
                self._answer({"type": "done", "path": path, "entry": lstat_entry(path)})
            elif op == "fs_mkdir":
                mode = request.get("mode")
                mode = mode if isinstance(mode, int) and 0 <= mode <= 0o7777 else 0o755
                make_directory(path, request.get("recursive") is True, mode)
                self._answer({"type": "done", "path": path, "entry": lstat_entry(path)})
            elif op == "fs_remove":
                remove_path(path, request.get("recursive") is True)
                self._answer({"type": "done", "path": path})
            elif op == "fs_readdir":
                self._open_listing(path)
            else:
                raise FsFailure(f"unknown fs op {op!r}", "EINVAL")
        except FsFailure as exc:
            self._fail(str(exc), exc.errno_name)
        except Exception as exc:  # the host must always see an end to the stream
            self._fail(f"agent: {exc!r}", "EIO")

    def on_data(self, channel: int, data: bytes) -> None:
        pass  # nothing reads stdin

    def on_eof(self, channel: int) -> None:
        pass

    def on_window(self, increment: int) -> None:
        self._credit += increment
        if self._names is not None:
            self._guarded_pump()

    def cancel(self) -> None:
        self._cancelled = True
        self._names = None
        self._buffer = bytearray()

    # -- answers -------------------------------------------------------------------------------
    def _answer(self, body: FsDone | FsError) -> None:
        if self._cancelled or self._done:
            return
        self._done = True
        self._send_frame(encode_json(FrameType.MESSAGE, self.stream, body))
        self._on_finish(self)

    def _fail(self, message: str, errno_name: str) -> None:
        self._names = None
        self._answer({"type": "error", "error": message, "errno": errno_name})

    # -- a listing -----------------------------------------------------------------------------
    def _open_listing(self, path: str) -> None:
        try:
            names = sorted(os.listdir(path))  # sorted, as Go's os.ReadDir is
        except OSError as exc:
            raise failure_of(exc, "readdir", path) from None
        self._directory = path.rstrip("/") + "/"
        self._names = iter(names)
        self._guarded_pump()

    def _guarded_pump(self) -> None:
        try:
            self._pump()
        except Exception as exc:
            print(f"slicer-agent: stream {self.stream}: {exc!r}", file=sys.stderr)
            self._fail(f"agent: readdir: {exc!r}", "EIO")

    def _pump(self) -> None:
        while not self._cancelled and self._names is not None:
            self._credit = send_under_credit(self._send_frame, self.stream, self._buffer, self._credit)
            if self._buffer:
                return  # out of credit: on_window brings us back
            for name in self._names:
                try:
                    st = os.lstat(self._directory + name)
                except FileNotFoundError:
                    continue  # gone since the listing
                except OSError as exc:
                    print(f"slicer-agent: readdir: {name!r}: {exc}", file=sys.stderr)
                    continue
                self._buffer += dumps(entry_of(name, st)).encode() + b"\n"
                if len(self._buffer) >= MAX_PAYLOAD:
                    break
            else:
                if self._buffer:
                    continue  # the last lines, then the end
                self._names = None
                self._send_frame(encode(FrameType.EOF, self.stream, flags=Channel.STDOUT))
                self._answer({"type": "done", "path": self._directory.rstrip("/") or "/"})
                return
