"""The rules of a copy that touch no file data: paths, cp-like placement, exclude patterns, tar entry names.

Pure functions (a few ``stat`` calls for placement), shared by the copy sessions and ``slicer-agent upload``,
and tested on the host. Everything here reads untrusted input: a violation is a ``CopyFailure`` carrying the
code the host maps to an HTTP status.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyslicer.protocol.messages import CopyErrorCode

TEMP_PREFIX = ".slicer-cp-"


class CopyFailure(Exception):
    """A copy refused or failed; ``code`` is a ``CopyErrorCode``."""

    def __init__(self, code: CopyErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: CopyErrorCode = code
        self.message = message


# -- paths ---------------------------------------------------------------------------------------------


def expand_path(path: object, home: str) -> tuple[str, bool]:
    """The guest path a request names, absolute and normalised, and whether it was written as a directory
    (a trailing ``/`` or ``/.``). ``~`` and ``~/...`` are the user's home; a relative path is taken from it."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise CopyFailure("invalid_path", "path must be a non-empty string")
    if not home and not path.startswith("/"):
        raise CopyFailure(
            "invalid_path", f"{path}: the user has no account in the guest, so no home: give an absolute path"
        )
    if path == "~":
        path = home
    elif path.startswith("~/"):
        path = home.rstrip("/") + "/" + path[2:]
    elif not path.startswith("/"):
        path = home.rstrip("/") + "/" + path
    as_directory = path.endswith(("/", "/."))
    normal = os.path.normpath(path)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    return normal, as_directory


def is_contents_path(raw: str, expanded: str) -> bool:
    """``dir/.`` or ``/``: the contents of a directory, with no name of its own."""
    return raw.rstrip("/").endswith("/.") or raw.rstrip("/") in (".", "") or expanded == "/"


def valid_source_name(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name


def source_name_of(path: str) -> str:
    name = os.path.basename(path)
    return name if valid_source_name(name) else ""


def file_mode_text(mode: int) -> str:
    return "0" + format(stat.S_IMODE(mode) & 0o777, "03o")


# -- where an upload lands -----------------------------------------------------------------------------


def _is_dir(path: str) -> bool:
    return os.path.isdir(path)  # follows links: a link to a directory is a place to copy into


def place_file(path: str, as_directory: bool, cp_v1: bool, source_name: object, source_type: object) -> str:
    """The file a binary upload writes. cp-v1: into an existing directory (or a path ending in ``/``) as
    ``path/source_name``, else at ``path`` (an existing file is replaced). Legacy: always at ``path``."""
    if cp_v1:
        if source_type != "file":
            raise CopyFailure("invalid_path", f"source_type {source_type!r} does not fit a binary copy")
        if not valid_source_name(source_name):
            raise CopyFailure("invalid_path", f"invalid source_name {source_name!r}")
        assert isinstance(source_name, str)
        if as_directory or _is_dir(path):
            path = os.path.join(path, source_name)
    elif as_directory or _is_dir(path):
        raise CopyFailure("not_a_file", f"{path} is a directory: name the file to write")
    if _is_dir(path):
        raise CopyFailure("not_a_file", f"{path} is a directory: cannot overwrite it with a file")
    return path


def place_tree(
    path: str, cp_v1: bool, source_name: object, source_type: object, copy_contents: bool
) -> tuple[str, bool]:
    """The directory a tar upload fills, and whether it exists already (its contents are merged).

    cp-v1: with ``copy_contents`` the entries go into ``path``; otherwise into ``path/source_name`` when
    ``path`` is an existing directory, else ``path`` is created as the copy. Legacy: into ``path``."""
    if cp_v1:
        if source_type != "directory":
            raise CopyFailure("invalid_path", f"source_type {source_type!r} does not fit a tar copy")
        if not copy_contents:
            if not valid_source_name(source_name):
                raise CopyFailure("invalid_path", f"invalid source_name {source_name!r}")
            assert isinstance(source_name, str)
            if _is_dir(path):
                path = os.path.join(path, source_name)
    if os.path.lexists(path) and not _is_dir(path):
        raise CopyFailure("not_a_directory", f"{path} exists and is not a directory")
    return path, _is_dir(path)


def existing_ancestor(path: str) -> str:
    while not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_space(path: str, needed: object) -> None:
    """Refuse (``no_space``) an upload of ``needed`` bytes the filesystem holding ``path`` cannot take."""
    if not isinstance(needed, int) or isinstance(needed, bool) or needed <= 0:
        return
    fs = os.statvfs(existing_ancestor(path))
    free = fs.f_bavail * fs.f_frsize
    if needed > free:
        raise CopyFailure("no_space", f"not enough space in the guest for {needed} bytes at {path} ({free} free)")


# -- tar entries ---------------------------------------------------------------------------------------


def entry_name(name: str) -> str | None:
    """A tar entry's path relative to the tree, or None for the tree's own root (``.``, ``./``).
    Raises ``unsafe_entry`` for an absolute name or one with ``..`` (or empty) components."""
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    if name in ("", "."):
        return None
    if name.startswith("/") or "\0" in name:
        raise CopyFailure("unsafe_entry", f"tar entry {name!r} has an absolute path")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise CopyFailure("unsafe_entry", f"tar entry {name!r} leaves the target or is not a clean path")
    return name


def link_stays_inside(name: str, target: str, links: set[str]) -> bool:
    """Whether a symbolic link ``name`` -> ``target`` (both within the tree) resolves inside the tree,
    without passing through another link of the tree (whose own target could lead anywhere)."""
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
        if index < len(steps) - 1 and "/".join(parts) in links:
            return False
    return True


# -- excludes (the Go SDK's rules) ---------------------------------------------------------------------


def normalise_excludes(patterns: object) -> list[str]:
    if not isinstance(patterns, list):
        return []
    normal = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            continue
        pattern = pattern.strip()  # a \ is an escape, as in Go's path.Match (the SDK's ToSlash is a no-op here)
        if pattern.startswith("./"):
            pattern = pattern[2:]
        pattern = pattern.lstrip("/").rstrip("/")
        if pattern:
            normal.append(pattern)
    return normal


def _glob(pattern: str, name: str) -> bool:
    """Go's ``path.Match``, a malformed pattern matching nothing (as the Go SDK treats it)."""
    from pyslicer.protocol.globs import BadPattern, match

    try:
        return match(pattern, name)
    except BadPattern:
        return False


def _segments_match(patterns: list[str], parts: list[str]) -> bool:
    if not patterns:
        return not parts
    if patterns[0] == "**":
        return any(_segments_match(patterns[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and _glob(patterns[0], parts[0]) and _segments_match(patterns[1:], parts[1:])


def is_excluded(relative: str, patterns: list[str]) -> bool:
    """``relative`` (a/b/c) matches a pattern: the whole path segment by segment (``**`` spans segments), or
    its last segment for a pattern without ``/``."""
    if not patterns or not relative:
        return False
    parts = relative.strip("/").split("/")
    for pattern in patterns:
        if _segments_match(pattern.strip("/").split("/"), parts):
            return True
        if "/" not in pattern and _glob(pattern, parts[-1]):
            return True
    return False


def is_pruned(relative: str, patterns: list[str]) -> bool:
    """``relative`` or one of the directories above it is excluded."""
    if not patterns:
        return False
    parts = relative.split("/")
    return any(is_excluded("/".join(parts[: i + 1]), patterns) for i in range(len(parts)))
