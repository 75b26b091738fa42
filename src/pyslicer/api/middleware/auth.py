"""Bearer-token auth for every path but the public ones."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from pyslicer.api.errors import error_response
from pyslicer.errors import Unauthenticated

PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json"})


class BearerAuth:
    def __init__(self, app: ASGIApp, *, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in PUBLIC_PATHS or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(Unauthenticated("missing or invalid bearer token", code="unauthorized"))
        response.headers["www-authenticate"] = "Bearer"
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self.token)
        return False
