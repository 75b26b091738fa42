"""The ASGI application: FastAPI routes by resource, the error mapping, and the middleware stack.

``GET /openapi.json`` (OpenAPI 3.1) is generated from the routes' typed models.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp

from pyslicer import __version__
from pyslicer.api import (
    background,
    commits,
    cp,
    forward,
    fs,
    lifecycle,
    nodes,
    openapi,
    secrets,
    shell,
    stats,
    system,
    vm,
)
from pyslicer.api import exec as exec_api
from pyslicer.api.errors import HANDLERS
from pyslicer.api.metrics import ApiMetrics
from pyslicer.api.middleware import BearerAuth, QueryInPath, RequestMetrics
from pyslicer.daemon import Daemon

DESCRIPTION = """Slicer's REST API, served by pyslicer: real micro-VMs on this host.

Errors are always JSON `{"error", "code"}`; a 400 names the field. Over TCP every path but `/healthz` and
`/openapi.json` needs `Authorization: Bearer <token>` (the token file is under the data dir); a unix socket
has no auth."""


def create_fastapi(daemon: Daemon) -> FastAPI:
    app = FastAPI(
        title="pyslicer",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url=None,  # the docs pages load their scripts from a CDN; offline hosts have none
        redoc_url=None,
        redirect_slashes=False,  # Slicer: "/nodes/" is not "/nodes"
        exception_handlers=HANDLERS,
    )
    # the hottest first: routing tries them in order
    # commits before vm: /vm/commits is not a VM
    for module in (exec_api, background, cp, fs, commits, vm, lifecycle, nodes, stats, secrets, system, shell, forward):
        app.include_router(module.router)
    openapi.install(app)
    app.state.daemon = daemon
    app.state.metrics = ApiMetrics(daemon)
    return app


def create_app(daemon: Daemon, *, token: str | None) -> ASGIApp:
    app = create_fastapi(daemon)
    stack: ASGIApp = BearerAuth(app, token=token) if token is not None else app
    stack = QueryInPath(stack)
    return RequestMetrics(stack, observe=app.state.metrics.observe)
