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
    return CopyFailure("failed", f"{what}: {exc.strerror or exc}")


def make_temp_dir(parent: str) -> str:
    """A new hidden directory in ``parent`` (mode 0700 while it fills)."""
    for _ in range(100):
        path = os.path.join(parent, TEMP_PREFIX + os.urandom(8).hex())
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path
    raise CopyFailure("failed", f"cannot make a temporary directory in {parent}")


def remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def make_parents(path: str, owner: Owner, made: list[str]) -> None:
    """``mkdir -p`` of ``path`` (0755, owned by ``owner``), recording each directory made in ``made``."""
    missing = []
    while not os.path.isdir(path):
        if os.path.lexists(path):
            raise CopyFailure("not_a_directory", f"{path} exists and is not a directory")
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            continue
        except OSError as exc:
            raise failure_of(exc, directory) from None
        made.append(directory)
        os.chown(directory, owner.uid, owner.gid)


def remove_made(made: list[str]) -> None:
    for directory in reversed(made):
        try:
            os.rmdir(directory)
        except OSError:
            return


# -- extraction ----------------------------------------------------------------------------------------


class Extraction:
    """Extracts a tar stream into ``root`` (a fresh directory), owned by ``owner``."""

    def __init__(self, root: str, owner: Owner, excludes: list[str]) -> None:
        self.root = root
        self.owner = owner
        self.excludes = excludes
        self.links: dict[str, str] = {}  # name -> target
        self.files: set[str] = set()
        self.dirs: dict[str, tuple[int, float]] = {}  # name -> (mode, mtime), applied at the end
        self.root_mode = 0o755
        self.size = 0

    def run(self, stream: Any) -> None:  # a binary file, or anything with read(size)
        try:
            archive = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115  # closed below
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
        for name, target in self.links.items():
            if not link_stays_inside(name, target, set(self.links)):
                raise CopyFailure("unsafe_entry", f"tar entry {name!r} links outside the target ({target!r})")
        for name in sorted(self.dirs, reverse=True):
            mode, mtime = self.dirs[name]
            path = os.path.join(self.root, name)
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))
        os.chmod(self.root, self.root_mode)
        os.chown(self.root, self.owner.uid, self.owner.gid)

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
        if parent:
            self._check_parent(name, parent)
        path = os.path.join(self.root, name)
        try:
            if member.isdir():
                self._clear(path, name, directory=True)
                if not os.path.isdir(path):
                    os.mkdir(path, 0o700)
                    os.chown(path, self.owner.uid, self.owner.gid)
                self.dirs[name] = (mode | 0o700 if mode & 0o400 else mode, member.mtime)  # keep it readable
            elif member.isreg():
                self._clear(path, name, directory=False)
                source = archive.extractfile(member)
                assert source is not None
                self._write_file(path, source, mode, member.mtime)
                self.files.add(name)
            elif member.issym():
                self._clear(path, name, directory=False)
                target = member.linkname
                if not link_stays_inside(name, target, set(self.links)):
                    raise CopyFailure("unsafe_entry", f"tar entry {name!r} links outside the target ({target!r})")
                os.symlink(target, path)
                os.lchown(path, self.owner.uid, self.owner.gid)
                self.links[name] = target
            elif member.islnk():
                target_name = entry_name(member.linkname)
                if target_name is None or target_name not in self.files:
                    raise CopyFailure("unsafe_entry", f"tar entry {name!r} is a hard link to {member.linkname!r}")
                self._clear(path, name, directory=False)
                os.link(os.path.join(self.root, target_name), path)
                self.files.add(name)
            # devices, fifos and the like are skipped, as the Go SDK does
        except OSError as exc:
            raise failure_of(exc, name) from None

    def _check_parent(self, name: str, parent: str) -> None:
        parts = parent.split("/")
        for index in range(len(parts)):
            prefix = "/".join(parts[: index + 1])
            if prefix in self.links or prefix in self.files:
                raise CopyFailure("unsafe_entry", f"tar entry {name!r} goes through {prefix!r}, not a directory")
        path = os.path.join(self.root, parent)
        if not os.path.isdir(path):
            made: list[str] = []
            make_parents(path, self.owner, made)

    def _clear(self, path: str, name: str, *, directory: bool) -> None:
        """A later entry for a name replaces an earlier one, but never a directory by a non-directory."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            if not directory:
                raise CopyFailure("unsafe_entry", f"tar entry {name!r} would replace a directory")
            return
        os.unlink(path)
        self.links.pop(name, None)
        self.files.discard(name)

    def _write_file(self, path: str, source: IO[bytes], mode: int, mtime: float) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            while chunk := source.read(CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                self.size += len(chunk)
            os.fchown(fd, self.owner.uid, self.owner.gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.utime(path, (mtime, mtime))


# -- moving a finished tree into place -----------------------------------------------------------------


def _conflicts(source: str, dest: str, skip: str) -> None:
    for name in os.listdir(source):
        if name == skip:
            continue
        there = os.path.join(dest, name)
        try:
            existing = os.lstat(there)
        except FileNotFoundError:
            continue
        incoming = os.lstat(os.path.join(source, name))
        if stat.S_ISDIR(existing.st_mode):
            if not stat.S_ISDIR(incoming.st_mode):
                raise CopyFailure("not_a_directory", f"cannot overwrite directory {there} with a non-directory")
            _conflicts(os.path.join(source, name), there, "")


def _merge(source: str, dest: str, skip: str) -> None:
    for name in os.listdir(source):
        if name == skip:
            continue
        here, there = os.path.join(source, name), os.path.join(dest, name)
        incoming = os.lstat(here)
        try:
            existing = os.lstat(there)
        except FileNotFoundError:
            os.rename(here, there)
            continue
        if stat.S_ISDIR(incoming.st_mode) and stat.S_ISDIR(existing.st_mode):
            _merge(here, there, "")
            os.chmod(there, stat.S_IMODE(incoming.st_mode))
            os.utime(there, (incoming.st_mtime, incoming.st_mtime))
            os.rmdir(here)
        elif stat.S_ISDIR(incoming.st_mode):
            os.unlink(there)  # a file or a link where the tree has a directory: never merged through
            os.rename(here, there)
        else:
            os.rename(here, there)  # atomic: a reader sees the old file or the new one


def install_tree(temp: str, target: str, merge: bool) -> None:
    """Move the finished tree in ``temp`` to ``target``: one rename for a new target; into an existing one,
    entry by entry (renames only, after checking that no directory would be replaced by a file)."""
    try:
        if not merge:
            os.rename(temp, target)
            return
        skip = os.path.basename(temp) if os.path.dirname(temp) == target else ""
        _conflicts(temp, target, skip)
        _merge(temp, target, skip)
        os.rmdir(temp)
    except OSError as exc:
        raise failure_of(exc, target) from None


# -- writing a tree ------------------------------------------------------------------------------------


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
                        with open(entry.path, "rb") as file:
                            member.size = os.fstat(file.fileno()).st_size
                            archive.addfile(member, file)
                        size += member.size
                except FileNotFoundError:
                    continue
            pending.extend(reversed(subdirs))
    return size
