"""Query-string and body parsing that names the offending field in its 400."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from pyslicer.errors import InvalidArgument

TRUE = {"1", "true", "yes", "on"}
FALSE = {"", "0", "false", "no", "off"}


def query_bool(request: Request, name: str, default: bool = False) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise InvalidArgument(f"{name}: {raw!r} is not a boolean", code=f"invalid_{name}")


def query_int(request: Request, name: str, *, minimum: int = 0, maximum: int = 2**31 - 1) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgument(f"{name}: {raw!r} is not an integer", code=f"invalid_{name}") from None
    if not minimum <= value <= maximum:
        raise InvalidArgument(f"{name}: {value} is outside {minimum}..{maximum}", code=f"invalid_{name}")
    return value


async def json_body(request: Request, limit: int = 1024 * 1024) -> dict[str, Any]:
    """The request's JSON object; an empty body is an empty object."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise InvalidArgument(f"request body is larger than {limit} bytes", code="body_too_large")
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise InvalidArgument("request body is nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidArgument("request body must be a JSON object", code="invalid_json")
    return data
