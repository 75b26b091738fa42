"""Tar streams for copies: extracted into a fresh hidden directory and then moved into place, and written from a
directory tree without building them in memory. Blocking code: the copy sessions run it on a worker thread.

An uploaded tar is untrusted. Entries with absolute names or ``..`` are refused, nothing is written through a
symbolic link the archive made, and every link must resolve inside the tree (checked once the whole tree is
known, before anything moves into place). Owners come from the request, never from the archive; modes keep
the permission bits only (no setuid, setgid or sticky).
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile

from pyslicer.agent.copy_rules import (
    TEMP_PREFIX,
    CopyFailure,
    entry_name,
    is_pruned,
    link_stays_inside,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO, Any

    from pyslicer.agent.accounts import Owner

CHUNK = 1024 * 1024


def failure_of(exc: OSError, what: str) -> CopyFailure:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CopyFailure("no_space", f"the guest is out of disk space writing {what}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CopyFailure("permission_denied", f"{what}: {exc.strerror}")
    # the request's fault: a name too long, a path through a link loop or a file, a file where a directory goes
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return CopyFailure("not_a_directory", f"{what}: {exc.strerror}")
    if exc.errno == errno.EISDIR:
        return CopyFailure("not_a_file", f"{what}: {exc.strerror}")
    if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL):
        return CopyFailure("invalid_path", f"{what}: {exc.strerror}")
    return CopyFailure("failed", f"{what}: {exc.strerror or exc}")


# -- anchored to directory fds ---------------------------------------------------------------------------
#
# The agent is root and a guest user may own a directory on the way to the target (a copy to ~/ with
# uid=1000). Every step after the target's directory is opened works on names relative to a directory fd,
# never through a path that could be re-resolved: a component swapped for a link meanwhile is never followed
# (O_NOFOLLOW), modes and owners are set on fds, renames go between directory fds (docs/protocol.md "Copies").

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Made:
    """The directories a copy created (each as its parent's fd and its name), removed again on failure."""

    def __init__(self) -> None:
        self._made: list[tuple[int, str]] = []

    def add(self, parent_fd: int, name: str) -> None:
        self._made.append((os.dup(parent_fd), name))

    def remove(self) -> None:
        """Remove what was made (deepest first, only while empty) and let go of it."""
        failed = False
        for parent_fd, name in reversed(self._made):
            if not failed:
                try:
                    os.rmdir(name, dir_fd=parent_fd)
                except OSError:
                    failed = True
            os.close(parent_fd)
        self._made = []

    def keep(self) -> None:
        for parent_fd, _ in self._made:
            os.close(parent_fd)
        self._made = []


def _open_made_dir(parent_fd: int, name: str, what: str) -> int:
    """A directory just made by us, opened by name: refused when something else (a link, another user's
    directory) took its place in between."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        raise CopyFailure("failed", f"{what} was replaced while the copy made it ({exc.strerror})") from None
    info = os.fstat(fd)
    if info.st_uid != os.geteuid():
        os.close(fd)
        raise CopyFailure("failed", f"{what} was replaced while the copy made it")
    return fd


def open_directory(path: str, owner: Owner, made: Made) -> int:
    """An fd of directory ``path``, made where missing (``mkdir -p``, 0755, owned by ``owner``, each recorded
    in ``made``). The part that exists is followed as the path says; below it each new directory is opened by
    name from its parent's fd, never through a link."""
    missing = []
    while not os.path.isdir(path):
        if os.path.lexists(path):
            raise CopyFailure("not_a_directory", f"{path} exists and is not a directory")
        missing.append(os.path.basename(path))
        path = os.path.dirname(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise failure_of(exc, path) from None
    try:
        for name in reversed(missing):
            path = os.path.join(path, name)
            try:
                os.mkdir(name, 0o755, dir_fd=fd)
            except FileExistsError:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)  # made meanwhile: never through a link
            except OSError as exc:
                raise failure_of(exc, path) from None
            else:
                made.add(fd, name)
                child = _open_made_dir(fd, name, path)
                os.fchown(child, owner.uid, owner.gid)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_temp_file(dir_fd: int, where: str) -> tuple[int, str]:
    """A new hidden file (0600) in the directory ``dir_fd``: its fd and its name."""
    for _ in range(100):
        name = TEMP_PREFIX + os.urandom(8).hex()
        try:
            return os.open(name, NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd), name
        except FileExistsError:
            continue
        except OSError as exc:
            raise failure_of(exc, where) from None
    raise CopyFailure("failed", f"cannot make a temporary file in {where}")


def check_name(dir_fd: int, name: str, where: str) -> None:
    """Refuse, before any byte is taken, a name the directory cannot hold."""
    try:
        longest = os.fpathconf(dir_fd, "PC_NAME_MAX")
    except (OSError, ValueError):
        longest = 255
    if len(os.fsencode(name)) > longest:
        raise CopyFailure("invalid_path", f"{where}: the name is longer than {longest} bytes")


def inherited_mode(dir_fd: int, name: str, permissions: object) -> int:
    """The mode a file written to ``name`` gets: the request's, else the regular file it replaces keeps its
    permission bits, else 0644."""
    if isinstance(permissions, int) and not isinstance(permissions, bool) and 0 <= permissions <= 0o7777:
        return permissions
    try:
        info = os.stat(name, dir_fd=dir_fd)
    except OSError:
        return 0o644
    return stat.S_IMODE(info.st_mode) & 0o777 if stat.S_ISREG(info.st_mode) else 0o644


def install_file(fd: int, dir_fd: int, temp: str, name: str, owner: Owner, mode: int) -> None:
    """Give the filled temporary file (its fd, closed here) its owner and mode and rename it to ``name``."""
    try:
        os.fchown(fd, owner.uid, owner.gid)
        os.fchmod(fd, mode)  # after the chown, which clears setuid/setgid bits
    finally:
        os.close(fd)
    os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def make_temp_dir(dir_fd: int, where: str) -> tuple[int, str]:
    """A new hidden directory (0700, root's while it fills, so nobody else can reach inside) in the directory
    ``dir_fd``: its fd and its name."""
    for _ in range(100):
        name = TEMP_PREFIX + os.urandom(8).hex()
        try:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            continue
        except OSError as exc:
            raise failure_of(exc, where) from None
        return _open_made_dir(dir_fd, name, f"the temporary directory in {where}"), name
    raise CopyFailure("failed", f"cannot make a temporary directory in {where}")


def remove_tree(dir_fd: int, name: str) -> None:
    import shutil

    shutil.rmtree(name, ignore_errors=True, dir_fd=dir_fd)  # fd-based: never follows a link


# -- extraction ----------------------------------------------------------------------------------------


class _EndAware(tarfile.TarInfo):
    """Notes on the archive that its end-of-archive block was read: a stream that just stops is cut short."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> _EndAware:
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.EOFHeaderError:  # type: ignore[attr-defined]  # not in the stubs
            tarfile_.saw_end = True  # type: ignore[attr-defined]
            raise


class Extraction:
    """Extracts a tar stream into the fresh directory ``root_fd``; what it makes is owned by ``owner``. The
    directory itself stays root's and 0700 until ``install_tree``, so nothing inside can be swapped."""

    def __init__(self, root_fd: int, owner: Owner, excludes: list[str]) -> None:
        self.root_fd = root_fd
        self.owner = owner
        self.excludes = excludes
        self.links: dict[str, str] = {}  # name -> target
        self.files: set[str] = set()
        self.dirs: dict[str, tuple[int, float]] = {}  # name -> (mode, mtime), applied at the end
        self.root_mode = 0o755
        self.size = 0

    def run(self, stream: Any) -> None:  # a binary file, or anything with read(size)
        try:
            archive = tarfile.open(fileobj=stream, mode="r|", tarinfo=_EndAware)  # noqa: SIM115  # closed below
        except tarfile.ReadError as exc:
            if "empty" in str(exc):
                return  # no bytes at all: an empty tree
            raise CopyFailure("invalid_tar", f"not a tar archive: {exc}") from None
        try:
            with archive:
                for member in archive:
                    self._entry(archive, member)
        except (tarfile.TarError, EOFError) as exc:
            raise CopyFailure("invalid_tar", f"invalid tar archive: {exc}") from None
        if not getattr(archive, "saw_end", False):
            raise CopyFailure("invalid_tar", "invalid tar archive: it ends without its end-of-archive blocks")
        for name, target in self.links.items():
            if not link_stays_inside(name, target, set(self.links)):
                raise CopyFailure("unsafe_entry", f"tar entry {name!r} links outside the target ({target!r})")
        for name in sorted(self.dirs, reverse=True):
            mode, mtime = self.dirs[name]
            fd = os.open(name, DIR_FLAGS, dir_fd=self.root_fd)
            try:
                os.fchmod(fd, mode)
                os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)

    def _lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.root_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _entry(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = entry_name(member.name)
        mode = member.mode & 0o777
        if name is None:
            if member.isdir():
                self.root_mode = mode | 0o700
            return
        if is_pruned(name, self.excludes):
            return
        parent = name.rpartition("/")[0]
        try:
            if parent:
                self._make_parents(name, parent)
            if member.isdir():
                self._clear(name, directory=True)
                if self._lstat(name) is None:
                    self._mkdir(name)
                self.dirs[name] = (mode | 0o700 if mode & 0o400 else mode, member.mtime)  # keep it readable
            elif member.isreg():
                self._clear(name, directory=False)
                source = archive.extractfile(member)
                assert source is not None
                self._write_file(name, source, mode, member.mtime)
                self.files.add(name)
            elif member.issym():
                self._clear(name, directory=False)
                target = member.linkname
                if not link_stays_inside(name, target, set(self.links)):
                    raise CopyFailure("unsafe_entry", f"tar entry {name!r} links outside the target ({target!r})")
                os.symlink(target, name, dir_fd=self.root_fd)
                os.chown(name, self.owner.uid, self.owner.gid, dir_fd=self.root_fd, follow_symlinks=False)
                self.links[name] = target
            elif member.islnk():
                target_name = entry_name(member.linkname)
                if target_name is None or target_name not in self.files:
                    raise CopyFailure("unsafe_entry", f"tar entry {name!r} is a hard link to {member.linkname!r}")
                self._clear(name, directory=False)
                os.link(target_name, name, src_dir_fd=self.root_fd, dst_dir_fd=self.root_fd, follow_symlinks=False)
                self.files.add(name)
            # devices, fifos and the like are skipped, as the Go SDK does
        except OSError as exc:
            raise failure_of(exc, name) from None
        except OverflowError:  # a PAX mtime or size no filesystem takes
            raise CopyFailure("invalid_tar", f"tar entry {name!r} has an out-of-range value") from None

    def _mkdir(self, name: str) -> None:
        os.mkdir(name, 0o700, dir_fd=self.root_fd)
        os.chown(name, self.owner.uid, self.owner.gid, dir_fd=self.root_fd, follow_symlinks=False)

    def _make_parents(self, name: str, parent: str) -> None:
        parts = parent.split("/")
        for index in range(len(parts)):
            prefix = "/".join(parts[: index + 1])
            if prefix in self.links or prefix in self.files:
                raise CopyFailure("unsafe_entry", f"tar entry {name!r} goes through {prefix!r}, not a directory")
            info = self._lstat(prefix)
            if info is None:
                self._mkdir(prefix)
            elif not stat.S_ISDIR(info.st_mode):
                raise CopyFailure("unsafe_entry", f"tar entry {name!r} goes through {prefix!r}, not a directory")

    def _clear(self, name: str, *, directory: bool) -> None:
        """A later entry for a name replaces an earlier one, but never a directory by a non-directory."""
        info = self._lstat(name)
        if info is None:
            return
        if stat.S_ISDIR(info.st_mode):
            if not directory:
                raise CopyFailure("unsafe_entry", f"tar entry {name!r} would replace a directory")
            return
        os.unlink(name, dir_fd=self.root_fd)
        self.links.pop(name, None)
        self.files.discard(name)

    def _write_file(self, name: str, source: IO[bytes], mode: int, mtime: float) -> None:
        fd = os.open(name, NEW_FILE_FLAGS, 0o600, dir_fd=self.root_fd)
        try:
            while chunk := source.read(CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                self.size += len(chunk)
            os.fchown(fd, self.owner.uid, self.owner.gid)
            os.fchmod(fd, mode)
            os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)


# -- moving a finished tree into place -----------------------------------------------------------------


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _conflicts(source_fd: int, dest_fd: int, dest: str, skip: str) -> None:
    """Everything the merge would stop at, found before anything moves: a directory replaced by a
    non-directory, a directory that cannot be written."""
    if not os.access(".", os.W_OK, dir_fd=dest_fd, effective_ids=True):
        raise CopyFailure("permission_denied", f"{dest}: cannot write there")
    for name in os.listdir(source_fd):
        if name == skip:
            continue
        existing = _lstat_at(dest_fd, name)
        if existing is None or not stat.S_ISDIR(existing.st_mode):
            continue
        incoming = os.stat(name, dir_fd=source_fd, follow_symlinks=False)
        there = os.path.join(dest, name)
        if not stat.S_ISDIR(incoming.st_mode):
            raise CopyFailure("not_a_directory", f"cannot overwrite directory {there} with a non-directory")
        source_child = os.open(name, DIR_FLAGS, dir_fd=source_fd)
        try:
            dest_child = os.open(name, DIR_FLAGS, dir_fd=dest_fd)
            try:
                _conflicts(source_child, dest_child, there, "")
            finally:
                os.close(dest_child)
        finally:
            os.close(source_child)


def _merge(source_fd: int, dest_fd: int, skip: str) -> None:
    for name in os.listdir(source_fd):
        if name == skip:
            continue
        incoming = os.stat(name, dir_fd=source_fd, follow_symlinks=False)
        existing = _lstat_at(dest_fd, name)
        if existing is None:
            os.rename(name, name, src_dir_fd=source_fd, dst_dir_fd=dest_fd)
        elif stat.S_ISDIR(incoming.st_mode) and stat.S_ISDIR(existing.st_mode):
            source_child = os.open(name, DIR_FLAGS, dir_fd=source_fd)
            try:
                dest_child = os.open(name, DIR_FLAGS, dir_fd=dest_fd)  # never into a link swapped in
                try:
                    _merge(source_child, dest_child, "")
                    os.fchmod(dest_child, stat.S_IMODE(incoming.st_mode))
                    os.utime(dest_child, (incoming.st_mtime, incoming.st_mtime))
                finally:
                    os.close(dest_child)
            finally:
                os.close(source_child)
            os.rmdir(name, dir_fd=source_fd)
        elif stat.S_ISDIR(incoming.st_mode):
            os.unlink(name, dir_fd=dest_fd)  # a file or a link where the tree has a directory: never merged through
            os.rename(name, name, src_dir_fd=source_fd, dst_dir_fd=dest_fd)
        else:  # atomic: a reader sees the old file or the new one
            os.rename(name, name, src_dir_fd=source_fd, dst_dir_fd=dest_fd)


def install_tree(extraction: Extraction, dir_fd: int, temp: str, target: str, merge: bool) -> None:
    """Move the finished tree (the temporary directory ``temp`` in ``dir_fd``) to ``target``. A new target is
    ``temp`` renamed beside it, given its mode and owner first. An existing one is ``dir_fd`` itself, with
    ``temp`` inside it: the entries move in one by one (renames only, after checking that none would replace
    a directory by a file and that every directory is writable)."""
    root_fd = extraction.root_fd
    try:
        if not merge:
            os.fchmod(root_fd, extraction.root_mode)
            os.fchown(root_fd, extraction.owner.uid, extraction.owner.gid)
            os.rename(temp, os.path.basename(target), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return
        _conflicts(root_fd, dir_fd, target, temp)
        _merge(root_fd, dir_fd, temp)
        os.rmdir(temp, dir_fd=dir_fd)
    except OSError as exc:
        raise failure_of(exc, target) from None


# -- writing a tree ------------------------------------------------------------------------------------


def open_regular(path: str) -> IO[bytes] | None:
    """``path`` opened for reading if it is (still) a regular file, never through a link, never blocking on
    a fifo swapped in after it was listed; else None."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return open(fd, "rb")  # the caller closes it


def write_tree(out: IO[bytes], source: str, excludes: list[str], stopped: Callable[[], bool]) -> int:
    """A tar of the contents of directory ``source`` (names relative to it, no ``.`` entry), written to ``out``
    as it is read; returns the bytes of file data. Links are stored as links; what vanishes meanwhile is skipped."""
    size = 0
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        pending = [""]
        while pending:
            relative_dir = pending.pop()
            try:
                with os.scandir(os.path.join(source, relative_dir)) as scan:
                    entries = sorted(scan, key=lambda entry: entry.name)
            except (FileNotFoundError, NotADirectoryError):
                continue
            subdirs = []
            for entry in entries:
                if stopped():
                    return size
                name = f"{relative_dir}/{entry.name}" if relative_dir else entry.name
                if is_pruned(name, excludes):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                    member = tarfile.TarInfo(name)
                    member.mode = stat.S_IMODE(info.st_mode)
                    member.uid, member.gid, member.mtime = info.st_uid, info.st_gid, int(info.st_mtime)
                    if stat.S_ISDIR(info.st_mode):
                        member.type = tarfile.DIRTYPE
                        archive.addfile(member)
                        subdirs.append(name)
                    elif stat.S_ISLNK(info.st_mode):
                        member.type = tarfile.SYMTYPE
                        member.linkname = os.readlink(entry.path)
                        archive.addfile(member)
                    elif stat.S_ISREG(info.st_mode):
                        file = open_regular(entry.path)
                        if file is None:
                            continue
                        with file:
                            member.size = os.fstat(file.fileno()).st_size
                            archive.addfile(member, file)
                        size += member.size
                except (FileNotFoundError, OSError) as exc:
                    if isinstance(exc, FileNotFoundError) or exc.errno == errno.ELOOP:
                        continue  # vanished, or became a link, while it was read
                    raise
            pending.extend(reversed(subdirs))
    return size
