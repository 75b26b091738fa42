"""What a watch pattern means, for both ends: the daemon checks patterns, the agent matches paths with them.

Slicer's agent is written in Go and matches with ``path.Match``; this is a port of it (no ``re``, which the
agent does without), so a pattern means the same here: ``*`` is any run of characters but ``/``, ``?`` one
character but ``/``, ``[a-z]`` / ``[^a-z]`` a class, ``\\`` escapes. A malformed pattern raises
``BadPattern`` (Go's ``ErrBadPattern``).
"""

from __future__ import annotations


class BadPattern(ValueError):
    pass


def match(pattern: str, name: str) -> bool:
    """Go's ``path.Match(pattern, name)``; raises BadPattern for a malformed pattern."""
    while pattern:
        star, chunk, pattern = _scan_chunk(pattern)
        if star and not chunk:
            return "/" not in name  # a trailing * matches the rest, unless it holds a /
        rest = _match_chunk(chunk, name)
        if rest is not None and (not rest or pattern):
            name = rest
            continue
        if star:
            found = False
            for i in range(len(name)):
                if name[i] == "/":
                    break
                rest = _match_chunk(chunk, name[i + 1 :])
                if rest is not None:
                    if not pattern and rest:
                        continue  # the last chunk must use up the name
                    name = rest
                    found = True
                    break
            if found:
                continue
        while pattern:  # no match; the rest of the pattern must still be well-formed
            _, chunk, pattern = _scan_chunk(pattern)
            _match_chunk(chunk, "")
        return False
    return not name


def check(pattern: str) -> None:
    """Raise BadPattern when ``pattern`` is malformed."""
    rest = pattern
    while rest:
        _, chunk, rest = _scan_chunk(rest)
        _match_chunk(chunk, "")


def _scan_chunk(pattern: str) -> tuple[bool, str, str]:
    star = False
    while pattern.startswith("*"):
        pattern = pattern[1:]
        star = True
    in_range = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            if i + 1 < len(pattern):
                i += 1
        elif ch == "[":
            in_range = True
        elif ch == "]":
            in_range = False
        elif ch == "*" and not in_range:
            break
        i += 1
    return star, pattern[:i], pattern[i:]


def _match_chunk(chunk: str, s: str) -> str | None:
    """What is left of ``s`` once ``chunk`` matched its start, or None; checks the whole chunk's syntax."""
    failed = False
    while chunk:
        if not failed and not s:
            failed = True
        head = chunk[0]
        if head == "[":
            char = ""
            if not failed:
                char, s = s[0], s[1:]
            chunk = chunk[1:]
            negated = chunk.startswith("^")
            if negated:
                chunk = chunk[1:]
            matched = False
            ranges = 0
            while True:
                if chunk.startswith("]") and ranges > 0:
                    chunk = chunk[1:]
                    break
                low, chunk = _escaped(chunk)
                high = low
                if chunk[0] == "-":
                    high, chunk = _escaped(chunk[1:])
                if low <= char <= high:
                    matched = True
                ranges += 1
            if matched == negated:
                failed = True
        elif head == "?":
            if not failed:
                if s[0] == "/":
                    failed = True
                s = s[1:]
            chunk = chunk[1:]
        else:
            if head == "\\":
                chunk = chunk[1:]
                if not chunk:
                    raise BadPattern("a pattern may not end in \\")
            if not failed:
                if chunk[0] != s[0]:
                    failed = True
                s = s[1:]
            chunk = chunk[1:]
    return None if failed else s


def _escaped(chunk: str) -> tuple[str, str]:
    if not chunk or chunk[0] in "-]":
        raise BadPattern("malformed character class")
    if chunk[0] == "\\":
        chunk = chunk[1:]
        if not chunk:
            raise BadPattern("malformed character class")
    char, rest = chunk[0], chunk[1:]
    if not rest:
        raise BadPattern("unterminated character class")
    return char, rest
