"""VM tags: what a tag may be, and how one change (add, remove or replace) turns a VM's tags into new ones.

Two kinds of tag carry meaning: ``name=<value>`` (immutable once set, unique across the host's VMs; clients
look a VM up by it) and ``expires_at=<RFC 3339>`` (at most one; the VM is removed when it passes, see
``pyslicer.daemon.expiry``). Everything here is pure: the daemon checks uniqueness and persists.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pyslicer.errors import Conflict, InvalidArgument

NAME_PREFIX = "name="
EXPIRES_PREFIX = "expires_at="
MAX_TAG_LENGTH = 128
MAX_TAGS = 64
# Printable ASCII without spaces: tags travel in query strings and table cells, and compare byte for byte.
TAG_RE = re.compile(r"[!-~]+")
# RFC 3339 section 5.6 date-time (the "T" may be any case or a space, as its note allows).
RFC3339_RE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")

TagOperation = Literal["add", "remove", "replace"]


@dataclass(frozen=True, slots=True)
class TagChange:
    """One tag update: ``add`` tags, ``remove`` tags, or ``replace`` every mutable tag (``[]`` clears)."""

    operation: TagOperation
    tags: tuple[str, ...]


def parse_expires_at(value: str, field: str = "expires_at") -> datetime.datetime:
    """An RFC 3339 time (with its offset) as an aware datetime. Raises InvalidArgument naming ``field``."""
    if not RFC3339_RE.fullmatch(value):
        raise InvalidArgument(
            f"{field}: {value!r} is not an RFC 3339 time (e.g. 2030-01-02T15:04:05Z)", code="invalid_expires_at"
        )
    # fromisoformat wants "T" and "+00:00"; Python 3.11 reads any number of fractional digits.
    text = value[:10] + "T" + value[11:]
    text = text[:-1] + "+00:00" if text[-1] in "Zz" else text
    try:
        return datetime.datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidArgument(f"{field}: {value!r} is not a valid time: {exc}", code="invalid_expires_at") from None


def format_expires_at(when: datetime.datetime) -> str:
    """The tag value for ``when``: UTC, whole seconds, rounded up so a VM never goes early."""
    utc = when.astimezone(datetime.UTC)
    if utc.microsecond:
        utc = utc.replace(microsecond=0) + datetime.timedelta(seconds=1)
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def expires_tag(when: datetime.datetime) -> str:
    return EXPIRES_PREFIX + format_expires_at(when)


def name_of(tags: Iterable[str]) -> str | None:
    """The value of the ``name=`` tag, if there is one."""
    return next((tag[len(NAME_PREFIX) :] for tag in tags if tag.startswith(NAME_PREFIX)), None)


def expires_at_of(tags: Iterable[str]) -> datetime.datetime | None:
    """When the VM expires, from its ``expires_at=`` tag (checked when it was set; None if unreadable)."""
    for tag in tags:
        if tag.startswith(EXPIRES_PREFIX):
            try:
                return parse_expires_at(tag[len(EXPIRES_PREFIX) :])
            except InvalidArgument:
                return None
    return None


def check_tags(tags: Sequence[str], field: str) -> tuple[str, ...]:
    """Tags as given in a request, each checked, duplicates dropped (first kept). Raises InvalidArgument
    naming ``field[i]`` for a bad tag, and for two ``name=`` or two ``expires_at=`` tags."""
    seen: dict[str, None] = {}
    names: list[str] = []
    expiries: list[str] = []
    for index, tag in enumerate(tags):
        where = f"{field}[{index}]"
        if not isinstance(tag, str) or not tag:
            raise InvalidArgument(f"{where}: a tag must be a non-empty string", code="invalid_tag")
        if len(tag) > MAX_TAG_LENGTH:
            raise InvalidArgument(f"{where}: longer than {MAX_TAG_LENGTH} characters", code="invalid_tag")
        if not TAG_RE.fullmatch(tag):
            raise InvalidArgument(
                f"{where}: {tag!r} has a character outside printable ASCII (or a space)", code="invalid_tag"
            )
        if tag.startswith(NAME_PREFIX):
            if tag == NAME_PREFIX:
                raise InvalidArgument(f"{where}: name= needs a value", code="invalid_tag")
            names.append(tag)
        if tag.startswith(EXPIRES_PREFIX):
            parse_expires_at(tag[len(EXPIRES_PREFIX) :], where)
            expiries.append(tag)
        seen[tag] = None
    if len(set(names)) > 1:
        raise InvalidArgument(f"{field}: more than one name= tag ({', '.join(names)})", code="invalid_tag")
    if len(set(expiries)) > 1:
        raise InvalidArgument(f"{field}: more than one expires_at= tag", code="invalid_expires_at")
    return tuple(seen)


def _check_count(tags: Sequence[str], field: str) -> None:
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"{field}: a VM has at most {MAX_TAGS} tags ({len(tags)} asked)", code="too_many_tags")


def initial_tags(tags: Sequence[str]) -> tuple[str, ...]:
    """A new VM's tags. Raises InvalidArgument naming ``tags[i]``."""
    checked = check_tags(tags, "tags")
    _check_count(checked, "tags")
    return checked


def apply_change(hostname: str, current: Sequence[str], change: TagChange) -> list[str]:
    """The tags after ``change``. Raises InvalidArgument naming the field for a bad tag or too many tags,
    Conflict (code ``name_tag_immutable``) for a change that would remove or alter the ``name=`` tag.

    An added ``expires_at=`` replaces the one there (re-tagging moves the deadline); removing a tag that is
    not there does nothing. A replace keeps the ``name=`` tag whether it is listed or not."""
    field = change.operation
    given = check_tags(change.tags, field)
    name = name_of(current)
    name_tag = NAME_PREFIX + name if name is not None else None
    for tag in given:
        if tag.startswith(NAME_PREFIX) and name_tag is not None and tag != name_tag:
            raise Conflict(f"{hostname} is named {name!r}: a name= tag cannot be changed", code="name_tag_immutable")
    if change.operation == "add":
        new_expiry = any(tag.startswith(EXPIRES_PREFIX) for tag in given)
        kept = [tag for tag in current if not (new_expiry and tag.startswith(EXPIRES_PREFIX))]
        result = list(dict.fromkeys([*kept, *given]))
    elif change.operation == "remove":
        if name_tag is not None and name_tag in given:
            raise Conflict(f"{hostname} is named {name!r}: a name= tag cannot be removed", code="name_tag_immutable")
        result = [tag for tag in current if tag not in given]
    else:
        result = list(dict.fromkeys([*([name_tag] if name_tag is not None else []), *given]))
    _check_count(result, field)
    return result
