"""``slicer-agent upload check|finalise|abort``: the guest's half of the Go SDK's chunked copies (chunked-copy-v2).

The SDK uploads a big file (or a staged tar) as checksummed chunks with plain binary copies into
``<destination's parent>/.slicer-upload-<32 hex>/chunks/NNNNNN.chunk``, then a ``manifest.json`` beside them, and
runs ``finalise``: every chunk's size and sha256 is checked while the chunks are joined into a hidden file (or
extracted, for a tar, into a hidden directory) beside the destination, which is then renamed into place with the
manifest's cp-v1 placement, mode and owner; the upload directory is removed. ``abort`` removes it. Exit status 0
on success, 1 with a message on stderr otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

from pyslicer.agent.accounts import resolve_owner
from pyslicer.agent.copy_rules import (
    CopyFailure,
    check_space,
    expand_path,
    normalise_excludes,
    place_file,
    place_tree,
    valid_source_name,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from pyslicer.agent.accounts import Owner

CAPABILITY = "chunked-copy-v2"
SESSION_PREFIX = ".slicer-upload-"
NOT_GIVEN_ID = 2**32 - 1
MAX_MANIFEST = 16 * 1024 * 1024
READ_SIZE = 1024 * 1024


class UploadError(Exception):
    pass


def _options(args: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    index = 0
    while index < len(args):
        name = args[index]
        if name not in ("--manifest", "--uid", "--gid") or index + 1 >= len(args):
            raise UploadError(f"unexpected argument {name!r}")
        options[name[2:]] = args[index + 1]
        index += 2
    if "manifest" not in options:
        raise UploadError("--manifest is required")
    return options


def _id(options: dict[str, str], name: str) -> int | None:
    text = options.get(name)
    if text is None:
        return None
    if not text.isdigit() or int(text) > NOT_GIVEN_ID:
        raise UploadError(f"--{name}: {text!r} is not a numeric id")
    return None if int(text) == NOT_GIVEN_ID else int(text)


def session_dir(manifest_path: str, home: str) -> str:
    """The upload directory a manifest path names: only ``.../.slicer-upload-<32 hex>/manifest.json``."""
    path, _ = expand_path(manifest_path, home)
    directory, name = os.path.split(path)
    session = os.path.basename(directory)
    token = session[len(SESSION_PREFIX) :]
    if (
        name != "manifest.json"
        or not session.startswith(SESSION_PREFIX)
        or len(token) != 32
        or any(c not in "0123456789abcdef" for c in token)
    ):
        raise UploadError(f"{manifest_path} is not the manifest of a chunked upload")
    return directory


# -- the manifest ----------------------------------------------------------------------------------


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def validate_manifest(manifest: object) -> dict[str, Any]:
    """The Go SDK's CopyManifest.Validate, on untrusted JSON."""
    if not isinstance(manifest, dict):
        raise UploadError("the manifest is not a JSON object")
    version = manifest.get("version")
    mode = manifest.get("mode")
    if version not in (1, 2):
        raise UploadError(f"unsupported copy manifest version: {version!r}")
    if mode not in ("binary", "tar"):
        raise UploadError(f"invalid copy mode: {mode!r}")
    if version == 2:
        source_type = manifest.get("source_type")
        copy_contents = manifest.get("copy_contents") is True
        if manifest.get("copy_semantics") != "cp-v1":
            raise UploadError(f"invalid copy semantics: {manifest.get('copy_semantics')!r}")
        if source_type not in ("file", "directory"):
            raise UploadError(f"invalid copy source type: {source_type!r}")
        if not copy_contents and not valid_source_name(manifest.get("source_name")):
            raise UploadError(f"invalid copy source name: {manifest.get('source_name')!r}")
        if source_type == "file" and (mode != "binary" or copy_contents):
            raise UploadError("file copy semantics require binary mode without copy_contents")
        if source_type == "directory" and mode != "tar":
            raise UploadError("directory copy semantics require tar mode")
    destination = manifest.get("destination")
    if not isinstance(destination, str) or not destination:
        raise UploadError("copy destination is required")
    size = _int(manifest.get("size"))
    unpacked = _int(manifest.get("unpacked_size", 0))
    if size is None or size < 0 or unpacked is None or unpacked < 0:
        raise UploadError("copy sizes must be non-negative integers")
    chunks = manifest.get("chunks")
    if not isinstance(chunks, list):
        raise UploadError("chunks must be a list")
    total = 0
    for index, chunk in enumerate(chunks):
        if not isinstance(chunk, dict) or _int(chunk.get("index")) != index:
            raise UploadError(f"chunk index out of sequence, expected {index}")
        chunk_size = _int(chunk.get("size"))
        if chunk_size is None or chunk_size <= 0:
            raise UploadError(f"chunk {index} has invalid size {chunk.get('size')!r}")
        digest = chunk.get("sha256")
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
            raise UploadError(f"chunk {index} has invalid SHA-256: {digest!r}")
        total += chunk_size
    if total != size:
        raise UploadError(f"chunk sizes total {total} bytes, expected {size}")
    permissions = manifest.get("permissions") or ""
    if permissions and (
        not isinstance(permissions, str)
        or not permissions
        or any(c not in "01234567" for c in permissions)
        or int(permissions, 8) > 0o7777
    ):
        raise UploadError(f"invalid permissions {permissions!r}")
    return manifest


def open_trusted(name: str, dir_fd: int | None, owner_uid: int, *, directory: bool = False) -> int:
    """Open a part of the upload (never through a link) that root or the upload's own user owns: anything
    else may have been written by someone the finaliser must not act for."""
    import stat

    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        raise UploadError(f"cannot open {name}: {exc.strerror}") from None
    info = os.fstat(fd)
    if info.st_uid not in (0, owner_uid) or not (stat.S_ISDIR if directory else stat.S_ISREG)(info.st_mode):
        os.close(fd)
        raise UploadError(f"{name} is not the upload's own (owned by uid {info.st_uid}, or not a plain file)")
    os.set_blocking(fd, True)
    return fd


def read_manifest(session_fd: int, owner_uid: int) -> dict[str, Any]:
    fd = open_trusted("manifest.json", session_fd, owner_uid)
    try:
        with open(fd, "rb") as file:
            data = file.read(MAX_MANIFEST + 1)
    except OSError as exc:
        raise UploadError(f"cannot read the manifest: {exc.strerror}") from None
    if len(data) > MAX_MANIFEST:
        raise UploadError("the manifest is too large")
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise UploadError(f"the manifest is not valid JSON: {exc}") from None
    return validate_manifest(manifest)


# -- the chunks ------------------------------------------------------------------------------------


def verified_chunks(session: Session, chunks: list[dict[str, Any]]) -> Iterator[bytes]:
    """Every chunk's bytes in order, each checked for its size and sha256 as it is read (before its last
    piece is handed on, so a bad chunk never completes the stream)."""
    chunks_fd = open_trusted("chunks", session.fd, session.owner_uid, directory=True)
    try:
        for chunk in chunks:
            yield from _verified_chunk(chunks_fd, session.owner_uid, chunk)
    finally:
        os.close(chunks_fd)


class Session:
    """The upload directory, opened once: its fd, its path, and the user it may belong to besides root."""

    def __init__(self, path: str, owner_uid: int) -> None:
        self.path = path
        self.owner_uid = owner_uid
        self.fd = open_trusted(path, None, owner_uid, directory=True)


def _verified_chunk(chunks_fd: int, owner_uid: int, chunk: dict[str, Any]) -> Iterator[bytes]:
    index = chunk["index"]
    file = open(open_trusted(f"{index:06d}.chunk", chunks_fd, owner_uid), "rb")  # noqa: SIM115  # closed below
    with file:
        if os.fstat(file.fileno()).st_size != chunk["size"]:
            raise UploadError(f"chunk {index} has {os.fstat(file.fileno()).st_size} bytes, expected {chunk['size']}")
        digest = hashlib.sha256()
        held = b""
        while piece := file.read(READ_SIZE):
            digest.update(piece)
            if held:
                yield held
            held = piece
        if digest.hexdigest() != chunk["sha256"].lower():
            raise UploadError(f"chunk {index} does not match its SHA-256")
        if held:
            yield held


class _ChunkReader:
    """The verified chunks as a file, for tarfile: what is read is dropped from the front only when a chunk is
    added, so reading a chunk in tarfile's small pieces copies it a bounded number of times, not once a piece."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._buffer = bytearray()
        self._offset = 0  # bytes of _buffer already read

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) - self._offset < size:
            piece = next(self._pieces, None)
            if piece is None:
                break
            del self._buffer[: self._offset]
            self._offset = 0
            self._buffer += piece
        end = len(self._buffer) if size < 0 else min(len(self._buffer), self._offset + size)
        with memoryview(self._buffer) as view:
            data = bytes(view[self._offset : end])
        self._offset = end
        return data


def assemble_file(manifest: dict[str, Any], session: Session, owner: Owner, target: str) -> None:
    from pyslicer.agent.copy_tar import Made, failure_of, inherited_mode, install_file, make_temp_file, open_directory

    parent = os.path.dirname(target)
    made = Made()
    dir_fd = open_directory(parent, owner, made)
    temp = ""
    try:
        mode = inherited_mode(dir_fd, os.path.basename(target), _permissions(manifest))
        fd, temp = make_temp_file(dir_fd, parent)
        try:
            for piece in verified_chunks(session, manifest["chunks"]):
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            raise
        install_file(fd, dir_fd, temp, os.path.basename(target), owner, mode)
        temp = ""
        made.keep()
    except OSError as exc:
        raise failure_of(exc, target) from None
    finally:
        if temp:
            os.unlink(temp, dir_fd=dir_fd)
        made.remove()
        os.close(dir_fd)


def _permissions(manifest: dict[str, Any]) -> int | None:
    permissions = manifest.get("permissions") or ""
    return int(permissions, 8) if permissions else None


def assemble_tree(manifest: dict[str, Any], session: Session, owner: Owner, target: str, merge: bool) -> None:
    from pyslicer.agent.copy_tar import Extraction, Made, install_tree, make_temp_dir, open_directory, remove_tree

    made = Made()
    where = target if merge else os.path.dirname(target)
    dir_fd = open_directory(where, owner, made)
    root_fd = -1
    try:
        root_fd, temp = make_temp_dir(dir_fd, where)
        try:
            extraction = Extraction(root_fd, owner, normalise_excludes(manifest.get("exclude")))
            extraction.run(_ChunkReader(verified_chunks(session, manifest["chunks"])))
            install_tree(extraction, dir_fd, temp, target, merge)
        except BaseException:
            remove_tree(dir_fd, temp)
            raise
        made.keep()
    finally:
        made.remove()
        if root_fd >= 0:
            os.close(root_fd)
        os.close(dir_fd)


def finalise(options: dict[str, str]) -> None:
    owner = resolve_owner(_id(options, "uid"), _id(options, "gid"))
    session = Session(session_dir(options["manifest"], owner.home), owner.uid)
    try:
        _finalise(options, owner, session)
    finally:
        os.close(session.fd)
    abort(options)


def _finalise(options: dict[str, str], owner: Owner, session: Session) -> None:
    manifest = read_manifest(session.fd, owner.uid)
    cp_v1 = manifest["version"] == 2
    path, as_directory = expand_path(manifest["destination"], owner.home)
    # where the Go SDK puts the upload: in the destination's directory (or the destination itself, for ~)
    if os.path.dirname(session.path) not in (os.path.dirname(path), path):
        raise UploadError(f"the destination {path} is not beside the upload directory {session.path}")
    if manifest["mode"] == "binary":
        target = place_file(path, as_directory, cp_v1, manifest.get("source_name"), manifest.get("source_type"))
        check_space(os.path.dirname(target), manifest["size"])
        assemble_file(manifest, session, owner, target)
    else:
        target, merge = place_tree(
            path, cp_v1, manifest.get("source_name"), manifest.get("source_type"), manifest.get("copy_contents") is True
        )
        check_space(target, manifest.get("unpacked_size") or manifest["size"])
        assemble_tree(manifest, session, owner, target, merge)


def abort(options: dict[str, str]) -> None:
    import shutil

    owner = resolve_owner(_id(options, "uid"), _id(options, "gid"))
    session = session_dir(options["manifest"], owner.home)
    shutil.rmtree(session, ignore_errors=True)


USAGE = "usage: slicer-agent upload check | finalise --manifest PATH [--uid U --gid G] | abort --manifest PATH"


def main(args: list[str]) -> int:
    if not args or args[0] not in ("check", "finalise", "finalize", "abort"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        if args[0] == "check":
            print(CAPABILITY)
        elif args[0] == "abort":
            abort(_options(args[1:]))
        else:
            finalise(_options(args[1:]))
    except (UploadError, ValueError) as exc:
        print(f"slicer-agent upload {args[0]}: {exc}", file=sys.stderr)
        return 1
    except CopyFailure as exc:
        print(f"slicer-agent upload {args[0]}: {exc.message}", file=sys.stderr)
        return 1
    return 0
