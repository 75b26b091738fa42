"""Who a request acts as when it names nobody: the guest's default user, and its home for ``~/`` paths.

One place for the rule. Until the image has a non-root default user, the default is root.
"""

from __future__ import annotations

import pwd

DEFAULT_UID = 0


class Owner:
    """The ids files are given and the home ``~`` means ("" when the guest has no account for the uid)."""

    __slots__ = ("gid", "home", "uid")

    def __init__(self, uid: int, gid: int, home: str) -> None:
        self.uid = uid
        self.gid = gid
        self.home = home


def resolve_owner(uid: object = None, gid: object = None) -> Owner:
    """``uid``/``gid`` as the request gave them (None: the default user; gid None: the uid's account group).
    Raises ValueError for ids that are not non-negative integers."""
    for value in (uid, gid):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"invalid user or group id {value!r}")
    user = DEFAULT_UID if uid is None else uid
    assert isinstance(user, int)
    try:
        account: pwd.struct_passwd | None = pwd.getpwuid(user)
    except KeyError:
        account = None
    group = gid if isinstance(gid, int) else (account.pw_gid if account else user)
    home = account.pw_dir if account and account.pw_dir else ""
    return Owner(user, group, home)


def home_of(uid: int | None) -> str:
    """The home of ``uid`` (None: the default user), or "" when the guest has no account for it."""
    try:
        return pwd.getpwuid(DEFAULT_UID if uid is None else uid).pw_dir or ""
    except KeyError:
        return ""
