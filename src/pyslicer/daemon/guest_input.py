"""Reading what a guest sends: it is input like any other, so a field counts only with the type expected."""

from __future__ import annotations

from typing import TypeVar

D = TypeVar("D")


def int_or(value: object, default: D) -> int | D:
    """``value`` if it is an int (a JSON true or false is not), else ``default``."""
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def str_or(value: object, default: D) -> str | D:
    return value if isinstance(value, str) else default
