"""Human and machine output for the CLI."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks."""
    grid = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in grid) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in grid]
    return "\n".join(lines)


def fields(pairs: Iterable[tuple[str, str]]) -> str:
    """``key: value`` lines with the values aligned."""
    items = list(pairs)
    width = max((len(key) for key, _ in items), default=0) + 1
    return "\n".join(f"{key + ':':<{width}} {value}".rstrip() for key, value in items)


def human_bytes(value: int | None) -> str:
    if not value:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            text = f"{size:.1f}".removesuffix(".0")
            return f"{text}{unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """``3d4h``, ``2h5m``, ``4m10s``, ``12s``, ``0.4s``: the two largest units are plenty for uptimes."""
    if seconds < 10:
        return f"{seconds:.1f}s".replace(".0s", "s")
    total = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, total = divmod(total, size)
        if amount or parts:
            parts.append(f"{amount}{unit}")
    return "".join(parts[:2])


def timestamp(value: datetime | None) -> str:
    if value is None or value.year <= 1:
        return "-"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def to_jsonable(value: Any) -> Any:
    # Commands that print no model never import pydantic, and a model exists only once pydantic is imported.
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: to_jsonable(item) for key, item in value.items()}
    return value


def dumps(value: Any) -> str:
    return json.dumps(to_jsonable(value), indent=2)
