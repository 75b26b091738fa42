"""The local half of copies, stdlib only: a tar of a local tree produced chunk by chunk (never whole in memory),
the answer headers of a download, and a tar stream extracted safely into a local directory."""

from __future__ import annotations

import base64
import os
import re
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import IO

CHUNK = 1024 * 1024
BLOCK = 512


@dataclass(frozen=True, slots=True)
class CopySource:
    """What a download carries, from its headers: a ``file`` (raw bytes) or a ``directory`` (a tar)."""

    source_type: str
    name: str  # "" for a contents-only path (dir/., /) or a server that sent none
    file_mode: str  # octal, e.g. "0644" ("" when not sent)
    size: int | None  # a file's length, when known


def source_of(headers: object) -> CopySource:
    get = headers.get  # type: ignore[attr-defined]  # httpx.Headers; kept duck-typed so this module has no httpx
    encoded = get("x-slicer-source-name-base64") or ""
    try:
        name = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode() if encoded else ""
    except (ValueError, UnicodeDecodeError):
        name = ""
    content_type = get("content-type") or ""
    kind = get("x-slicer-source-type") or ("directory" if content_type.startswith("application/x-tar") else "file")
    if name and (name in (".", "..") or any(c in name for c in "/\\\0")):
        raise ValueError(f"the server sent an unsafe source name {name!r}")
    mode = get("x-slicer-file-mode") or ""
    if not re.fullmatch(r"0?[0-7]{3,4}", mode):
        mode = ""
    length = get("content-length")
    return CopySource(kind, name, mode, int(length) if length and length.isdigit() else None)


def encode_name(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).rstrip(b"=").decode()


# -- excludes (the Go SDK's rules, as the guest applies them) -----------------------------------------------


def _normal(patterns: Sequence[str]) -> list[str]:
    out = []
    for pattern in patterns:
        pattern = pattern.strip().replace("\\", "/").removeprefix("./").strip("/")
        if pattern:
            out.append(pattern)
    return out


def _match(patterns: list[str], parts: list[str]) -> bool:
    if not patterns:
        return not parts
    if patterns[0] == "**":
        return any(_match(patterns[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], patterns[0]) and _match(patterns[1:], parts[1:])


def excluded(relative: str, patterns: list[str]) -> bool:
    parts = relative.split("/")
    return any(_match(p.split("/"), parts) or ("/" not in p and fnmatchcase(parts[-1], p)) for p in patterns)


# -- a local tree as a tar stream ---------------------------------------------------------------------------


def tree_size(root: str, exclude: Sequence[str] = ()) -> int:
    """Bytes of regular-file data ``tar_chunks`` would send (for ``X-Slicer-Unpacked-Size``)."""
    return sum(size for _, _, size in _walk(root, _normal(exclude)) if size >= 0)


def _walk(root: str, patterns: list[str]) -> Iterator[tuple[str, os.stat_result, int]]:
    """(relative name, lstat, file size or -1), parents first; excluded directories are not entered."""
    pending = [""]
    while pending:
        relative_dir = pending.pop()
        with os.scandir(os.path.join(root, relative_dir)) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        subdirs = []
        for entry in entries:
            name = f"{relative_dir}/{entry.name}" if relative_dir else entry.name
            if patterns and excluded(name, patterns):
                continue
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                subdirs.append(name)
            yield name, info, info.st_size if stat.S_ISREG(info.st_mode) else -1
        pending.extend(reversed(subdirs))


def tar_chunks(root: str, exclude: Sequence[str] = ()) -> Iterator[bytes]:
    """A tar (PAX) of the contents of directory ``root``: names relative to it, no ``.`` entry; directories,
    regular files and symbolic links. Produced piece by piece: at most one chunk of a file is held."""
    for name, info, size in _walk(root, _normal(exclude)):
        member = tarfile.TarInfo(name)
        member.mode = stat.S_IMODE(info.st_mode)
        member.mtime = int(info.st_mtime)
        if stat.S_ISDIR(info.st_mode):
            member.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(info.st_mode):
            member.type = tarfile.SYMTYPE
            member.linkname = os.readlink(os.path.join(root, name))
        elif size >= 0:
            member.size = size
        else:
            continue  # devices, sockets, fifos
        yield member.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
        if member.type == tarfile.REGTYPE:
            sent = 0
            with open(os.path.join(root, name), "rb") as file:
                while sent < size and (chunk := file.read(min(CHUNK, size - sent))):
                    sent += len(chunk)
                    yield chunk
            if sent < size:
                raise OSError(f"{name} shrank while it was sent")
            if size % BLOCK:
                yield b"\0" * (BLOCK - size % BLOCK)
    yield b"\0" * (BLOCK * 2)


def file_chunks(file: IO[bytes]) -> Iterator[bytes]:
    while chunk := file.read(CHUNK):
        yield chunk


# -- a tar stream into a local directory --------------------------------------------------------------------


class _ChunkReader:
    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = bytearray()

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        size = len(self._buffer) if size < 0 else size
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


def _link_stays_inside(name: str, target: str, is_link: Callable[[str], bool]) -> bool:
    """Whether link ``name`` -> ``target`` resolves inside the tree without passing through another link
    (whose own target could lead anywhere); the same rule as the agent's ``link_stays_inside``."""
    if not target or target.startswith("/") or "\0" in target:
        return False
    parts = name.split("/")[:-1]
    steps = [part for part in target.split("/") if part not in ("", ".")]
    for index, part in enumerate(steps):
        if part == "..":
            if not parts:
                return False
            parts.pop()
            continue
        parts.append(part)
        if index < len(steps) - 1 and is_link("/".join(parts)):
            return False
    return True


def extract_tar(chunks: Iterable[bytes], dest: str) -> int:
    """Extract a tar stream into directory ``dest`` (made if missing); returns the entries written. Refuses
    (ValueError) absolute names, ``..``, links leading out of ``dest``, links through links, and writes
    through anything but a real directory; each entry is checked against the filesystem before anything is
    made for it."""
    os.makedirs(dest, exist_ok=True)
    root = os.path.realpath(dest)
    links: set[str] = set()  # the archive's links so far

    def is_link(relative: str) -> bool:
        return relative in links or os.path.islink(os.path.join(root, relative))

    count = 0
    with tarfile.open(fileobj=_ChunkReader(chunks), mode="r|") as archive:  # type: ignore[call-overload]
        for member in archive:
            name = member.name.removeprefix("./").rstrip("/")
            if not name or name == ".":
                continue
            parts = name.split("/")
            if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
                raise ValueError(f"unsafe tar entry {member.name!r}")
            for index in range(1, len(parts)):
                above = os.path.join(root, *parts[:index])
                if os.path.islink(above) or (os.path.lexists(above) and not os.path.isdir(above)):
                    raise ValueError(f"tar entry {name!r} goes through a link or a file")
            if member.issym() and not _link_stays_inside(name, member.linkname, is_link):
                raise ValueError(f"tar entry {name!r} links outside {dest}")
            path = os.path.join(root, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)  # only real directories above, checked
            if os.path.lexists(path) and not (member.isdir() and os.path.isdir(path) and not os.path.islink(path)):
                if os.path.isdir(path) and not os.path.islink(path):
                    raise ValueError(f"tar entry {name!r} would replace a directory")
                os.unlink(path)
                links.discard(name)
            if member.isdir():
                os.makedirs(path, exist_ok=True)
                os.chmod(path, (member.mode & 0o777) | 0o700)
            elif member.issym():
                os.symlink(member.linkname, path)
                links.add(name)
            elif member.isreg():
                source = archive.extractfile(member)
                assert source is not None
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, member.mode & 0o777)
                with open(fd, "wb") as out:
                    while piece := source.read(CHUNK):
                        out.write(piece)
                os.utime(path, (member.mtime, member.mtime))
            else:
                continue
            count += 1
    return count
