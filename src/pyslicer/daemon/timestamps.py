"""Timestamps as the API writes them: RFC 3339, UTC, with a Z."""

from __future__ import annotations

import datetime


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
