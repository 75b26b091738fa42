"""A query string sent inside the path of a node listing (``/hostgroup/g/nodes%3Ftag=x``) is read as the query.

The Go SDK's filtered GetHostGroupNodes builds its URL that way; Slicer answers it as ``?tag=x``. Elsewhere an
encoded ``?`` is part of a path segment (a background exec id, a file name) and stays one.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

_ENCODED_QUESTION_MARK = re.compile(rb"%3f", re.IGNORECASE)


class QueryInPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path: bytes | None = scope.get("raw_path")
        match = _ENCODED_QUESTION_MARK.search(raw_path) if scope["type"] == "http" and raw_path else None
        if match is not None and raw_path is not None and raw_path[: match.start()].endswith(b"/nodes"):
            path, query = raw_path[: match.start()], unquote_to_bytes(raw_path[match.end() :])
            existing: bytes = scope.get("query_string", b"")
            scope = {
                **scope,
                "raw_path": path,
                "path": unquote(path.decode("latin-1")),
                "query_string": query + b"&" + existing if existing else query,
            }
        await self.app(scope, receive, send)
