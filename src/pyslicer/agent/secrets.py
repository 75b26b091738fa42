"""The host's secrets, written under /run/slicer/secrets (the guest's /run is a tmpfs: never on the disk).

One stream carries the whole set the guest should hold: the request lists the files (name, size, mode,
owner) and their bytes follow on the stdin channel, in order, then EOF. Each file is written to a staging
name in the same directory, owned and moded before it is renamed into place, so a reader never sees a
half-written secret or one with the wrong mode; once every file is in place, whatever the set no longer
holds is removed. Nothing here ever prints a secret's bytes.

The directory is 0711 root: a user can open a secret made readable to it by name, but nobody but root can
list the names.
"""

from __future__ import annotations

import os

from pyslicer.agent.session import StreamSession
from pyslicer.protocol import Channel, Event, FrameType, encode, encode_json, window_payload

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pyslicer.protocol import SecretsAnswer

SECRETS_DIR = "/run/slicer/secrets"
DIR_MODE = 0o711
PARENT_MODE = 0o755
STAGING_PREFIX = ".incoming-"
MAX_NAME_BYTES = 255
MAX_ID = 2**32 - 2
MAX_TOTAL_BYTES = 64 * 1024 * 1024  # the host sends far less; this only bounds a confused one
OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class SecretsError(Exception):
    """A request or stream this session cannot honour; the message never holds a secret's bytes."""


class _File:
    __slots__ = ("gid", "mode", "name", "size", "uid")

    def __init__(self, name: str, size: int, mode: int, uid: int, gid: int) -> None:
        self.name = name
        self.size = size
        self.mode = mode
        self.uid = uid
        self.gid = gid


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise SecretsError("a secret name must be a non-empty string")
    if "/" in name or "\0" in name or name.startswith(".") or len(name.encode("utf-8", "replace")) > MAX_NAME_BYTES:
        raise SecretsError(f"invalid secret name {name!r}")
    return name


def _check_int(value: object, what: str, top: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
        raise SecretsError(f"{what} must be an integer in 0..{top}")
    return value


def parse_files(request: dict[str, Any]) -> list[_File]:
    """The files of a ``SecretsRequest`` (untrusted), checked; raises SecretsError."""
    entries = request.get("secrets")
    if not isinstance(entries, list):
        raise SecretsError("secrets must be a list")
    files: list[_File] = []
    seen: set[str] = set()
    total = 0
    for entry in entries:
        if not isinstance(entry, dict):
            raise SecretsError("each secret must be an object")
        name = _check_name(entry.get("name"))
        if name in seen:
            raise SecretsError(f"secret {name!r} is listed twice")
        seen.add(name)
        size = _check_int(entry.get("size"), f"{name}: size", MAX_TOTAL_BYTES)
        total += size
        if total > MAX_TOTAL_BYTES:
            raise SecretsError(f"the secrets are larger than {MAX_TOTAL_BYTES} bytes in all")
        mode = _check_int(entry.get("mode"), f"{name}: mode", 0o777)
        uid = _check_int(entry.get("uid"), f"{name}: uid", MAX_ID)
        gid = _check_int(entry.get("gid"), f"{name}: gid", MAX_ID)
        files.append(_File(name, size, mode, uid, gid))
    return files


MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
TMPFS_OPTIONS = b"mode=0711,size=32m"  # the store holds at most 16 MiB


def prepare_directory(directory: str, *, in_memory: bool = True) -> None:
    """Make ``directory`` (and its parent) if need be, a real directory owned by root with DIR_MODE; staging
    files an interrupted sync left behind are removed. With ``in_memory``, every directory above it must be
    root's alone (nobody else could swap one for a link), and it must be on a memory filesystem: when it is not
    (an image whose /run is on its disk), a tmpfs is mounted on it, so a secret never reaches a disk."""
    parent = os.path.dirname(directory)
    os.makedirs(parent, mode=PARENT_MODE, exist_ok=True)
    if not os.path.lexists(directory):
        os.mkdir(directory, DIR_MODE)
    info = os.lstat(directory)
    if (info.st_mode & 0o170000) != 0o040000:  # S_ISDIR without importing stat
        raise SecretsError(f"{directory} is not a directory")
    if in_memory:
        _check_ancestors(parent)
        if filesystem_of(directory) not in MEMORY_FILESYSTEMS:
            _mount_tmpfs(directory)
    if os.geteuid() == 0:
        os.chown(directory, 0, 0)
    os.chmod(directory, DIR_MODE)
    for entry in os.listdir(directory):
        if entry.startswith(STAGING_PREFIX):
            _unlink(os.path.join(directory, entry))


def _check_ancestors(path: str) -> None:
    while True:
        info = os.lstat(path)
        if (info.st_mode & 0o170000) != 0o040000 or info.st_uid != 0 or info.st_mode & 0o022:
            raise SecretsError(f"{path} must be a directory that only root can change")
        if path == "/":
            return
        path = os.path.dirname(path)


def filesystem_of(path: str) -> str:
    """The type of the filesystem ``path`` is on: that of the deepest mount point over it."""
    path = os.path.realpath(path)
    deepest, kind = "", ""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) < 3:
                continue
            point = fields[1].replace("\\040", " ")
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(deepest):
                deepest, kind = point, fields[2]
    return kind


def _mount_tmpfs(directory: str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    if libc.mount(b"tmpfs", os.fsencode(directory), b"tmpfs", flags, TMPFS_OPTIONS) != 0:
        error = ctypes.get_errno()
        raise SecretsError(f"{directory} is not on a tmpfs and one cannot be mounted there: {os.strerror(error)}")


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


class SecretsSession(StreamSession):
    """Writes one set of secrets for ``stream`` (see the module's docstring)."""

    directory = SECRETS_DIR  # tests point it elsewhere, and turn in_memory off
    in_memory = True

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._files: list[_File] = []
        self._index = 0  # the file whose bytes arrive now
        self._remaining = 0  # of its bytes still to come
        self._fd = -1
        self._staged: list[tuple[str, str]] = []  # (staging path, final name) of the files written

    # -- from the host -------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._files = parse_files(self._request)
            prepare_directory(self.directory, in_memory=self.in_memory)
            self._next_file()
        except (SecretsError, OSError) as exc:
            self._fail(exc)

    def on_data(self, channel: int, data: bytes) -> None:
        if channel != Channel.STDIN or self._done:
            return
        try:
            self._write(memoryview(data))
        except (SecretsError, OSError) as exc:
            self._fail(exc)
            return
        self._send_frame(encode(FrameType.WINDOW, self.stream, window_payload(len(data))))

    def on_eof(self, channel: int) -> None:
        if channel != Channel.STDIN or self._done:
            return
        try:
            if self._index < len(self._files):
                raise SecretsError("the stream ended before every secret had arrived")
            removed = self._install()
        except (SecretsError, OSError) as exc:
            self._fail(exc)
            return
        self._answer({"type": Event.DONE, "written": len(self._staged), "removed": removed})

    def on_window(self, increment: int) -> None:
        pass  # this stream sends no output

    def cancel(self) -> None:
        self._done = True
        self._discard()

    # -- writing -------------------------------------------------------------------------------
    def _next_file(self) -> None:
        """Open the next file with bytes still to come; files of no bytes are finished on the way."""
        while self._index < len(self._files):
            file = self._files[self._index]
            staging = os.path.join(self.directory, f"{STAGING_PREFIX}{self.stream}-{self._index}")
            self._fd = os.open(staging, OPEN_FLAGS, 0o600)
            self._staged.append((staging, file.name))
            self._remaining = file.size
            if self._remaining:
                return
            self._close_file()

    def _write(self, data: memoryview) -> None:
        while data:
            if self._fd < 0:
                raise SecretsError("the host sent more bytes than the secrets hold")
            piece = data[: self._remaining]
            written = os.write(self._fd, piece)
            self._remaining -= written
            data = data[written:]
            if not self._remaining:
                self._close_file()
                self._next_file()

    def _close_file(self) -> None:
        file = self._files[self._index]
        fd, self._fd = self._fd, -1
        try:
            if os.geteuid() == 0:
                os.fchown(fd, file.uid, file.gid)
            os.fchmod(fd, file.mode)  # after the chown, which may clear mode bits
        finally:
            os.close(fd)
        self._index += 1

    def _install(self) -> int:
        """Rename every staged file into place, then remove what the set no longer holds."""
        for staging, name in self._staged:
            os.rename(staging, os.path.join(self.directory, name))
        wanted = {name for _, name in self._staged}
        removed = 0
        for entry in os.listdir(self.directory):
            if entry not in wanted and not entry.startswith(STAGING_PREFIX):
                try:
                    removed += _unlink(os.path.join(self.directory, entry))
                except OSError:  # not ours to clean (a directory root made there): leave it
                    continue
        return removed

    # -- ending --------------------------------------------------------------------------------
    def _discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for staging, _ in self._staged:
            try:
                _unlink(staging)
            except OSError:
                continue

    def _fail(self, exc: Exception) -> None:
        # OSError's text is its errno and the path (a staging or secret name), never the bytes written.
        self._discard()
        self._answer({"type": Event.ERROR, "error": f"secrets: {exc}"})

    def _answer(self, body: SecretsAnswer) -> None:
        if self._done:
            return
        self._done = True
        self._send_frame(encode_json(FrameType.MESSAGE, self.stream, body))
        self._on_finish(self)
