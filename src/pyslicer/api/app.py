"""The ASGI application: routes, auth, errors and request metrics."""

from __future__ import annotations

import hmac
import logging
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pyslicer.api import exec as exec_api
from pyslicer.api import metrics, nodes, vm
from pyslicer.api.errors import INTERNAL_ERROR, error_response
from pyslicer.daemon import Daemon
from pyslicer.errors import SlicerError, Unauthenticated

log = logging.getLogger(__name__)

PUBLIC_PATHS = {"/healthz"}


async def info(request: Request) -> JSONResponse:
    return JSONResponse(nodes.daemon(request).info())


async def healthz(request: Request) -> Response:
    if request.method == "HEAD":
        return Response(status_code=200)
    return JSONResponse({"status": "ok"})


ROUTES = [
    Route("/info", info, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET", "HEAD"]),
    Route("/hostgroup", nodes.list_host_groups, methods=["GET"]),
    Route("/hostgroup/{name}/nodes", nodes.list_nodes, methods=["GET"]),
    Route("/hostgroup/{name}/nodes", nodes.create_node, methods=["POST"]),
    Route("/hostgroup/{name}/nodes/{hostname}", nodes.delete_node, methods=["DELETE"]),
    Route("/nodes", nodes.list_nodes, methods=["GET"]),
    Route("/vm/{hostname}/health", vm.health, methods=["GET", "HEAD"]),
    Route("/vm/{hostname}/logs", vm.logs, methods=["GET"]),
    Route("/vm/{hostname}/exec", exec_api.exec_command, methods=["POST"]),
    Route("/metrics", metrics.metrics, methods=["GET"]),
]


async def slicer_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SlicerError)
    return error_response(exc)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse({"error": str(exc.detail), "code": code}, status_code=exc.status_code)


async def client_gone(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "the client disconnected", "code": "client_disconnected"}, status_code=400)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after this answer; AuthAndMetrics logs it once and keeps the connection usable.
    return JSONResponse(INTERNAL_ERROR, status_code=500)


class AuthAndMetrics:
    """Bearer auth (when enabled) and request counting, as plain ASGI so streams pass untouched."""

    def __init__(self, app: ASGIApp, *, token: str | None, metrics: metrics.ApiMetrics) -> None:
        self.app = app
        self.token = token
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_and_count(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.token is not None and scope["path"] not in PUBLIC_PATHS and not self._authorized(scope):
                missing = Unauthenticated("missing or invalid bearer token", code="unauthorized")
                response = error_response(missing)
                response.headers["www-authenticate"] = "Bearer"
                await response(scope, receive, send_and_count)
                return
            await self.app(scope, receive, send_and_count)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not status:
                await JSONResponse(INTERNAL_ERROR, status_code=500)(scope, receive, send_and_count)
        finally:
            self.metrics.observe(scope["method"], status or 500, time.perf_counter() - started)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(
                    credentials.strip().encode(), self.token.encode() if self.token else b""
                )
        return False


def create_app(daemon: Daemon, *, token: str | None) -> ASGIApp:
    app = Starlette(
        routes=ROUTES,
        exception_handlers={
            SlicerError: slicer_error,
            HTTPException: http_error,
            ClientDisconnect: client_gone,
            Exception: unexpected_error,
        },
    )
    app.router.redirect_slashes = False  # Slicer: "/nodes/" is not "/nodes"
    app.state.daemon = daemon
    app.state.metrics = metrics.ApiMetrics(daemon)
    return AuthAndMetrics(app, token=token, metrics=app.state.metrics)
