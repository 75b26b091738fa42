"""A query string escaped into the path (the Go SDK's filtered GetHostGroupNodes) is read as the query."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote

import pytest

from pyslicer.api.middleware import QueryInPath


def seen(raw_path: bytes, query_string: bytes = b"") -> dict[str, Any]:
    got: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got.update(scope)

    scope = {"type": "http", "path": unquote(raw_path.decode()), "raw_path": raw_path, "query_string": query_string}
    asyncio.run(QueryInPath(app)(scope, None, None))
    return got


@pytest.mark.parametrize("escaped", [b"%3F", b"%3f"])
def test_the_query_leaves_the_path(escaped: bytes) -> None:
    scope = seen(b"/hostgroup/g/nodes" + escaped + b"tag=x")
    assert (scope["path"], scope["raw_path"], scope["query_string"]) == (
        "/hostgroup/g/nodes",
        b"/hostgroup/g/nodes",
        b"tag=x",
    )


def test_an_escaped_query_is_unescaped_once_and_joins_the_real_one() -> None:
    scope = seen(b"/hostgroup/g/nodes%3Ftag=a%2520b", b"tag_prefix=t")
    assert scope["path"] == "/hostgroup/g/nodes"
    assert scope["query_string"] == b"tag=a%20b&tag_prefix=t"


def test_other_paths_pass_untouched() -> None:
    scope = seen(b"/vm/sbox-1/exec", b"cmd=true")
    assert (scope["path"], scope["query_string"]) == ("/vm/sbox-1/exec", b"cmd=true")
    assert seen(b"/vm/a%20b/health")["path"] == "/vm/a b/health"
