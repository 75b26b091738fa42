"""The daemon itself: /info, /healthz, /metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from pyslicer.api.dependencies import DaemonDep
from pyslicer.api.metrics import ApiMetrics
from pyslicer.api.schemas import Healthz, Info

router = APIRouter()
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/info", summary="Daemon version, platform and accelerator")
async def info(daemon: DaemonDep) -> Info:
    about = daemon.info()
    return Info(
        version=about.version,
        git_commit=about.git_commit,
        platform=about.platform,
        arch=about.arch,
        hypervisor=about.hypervisor,
        accel=about.accel,
        accel_reason=about.accel_reason,
    )


@router.get("/healthz", summary="Liveness (no auth)")
async def healthz() -> Healthz:
    return Healthz(status="ok")


@router.head("/healthz", summary="Liveness, no body (no auth)", response_class=Response)
async def healthz_head() -> Response:
    return Response(status_code=200)


@router.get(
    "/metrics",
    summary="Prometheus metrics (Slicer's names)",
    response_class=Response,
    responses={200: {"content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}}, "description": "metrics"}},
)
async def metrics(request: Request, daemon: DaemonDep) -> Response:
    api_metrics: ApiMetrics = request.app.state.metrics
    vm_stats = await daemon.stats()  # every VM at once, each under a short timeout: a guest down is a 0 in up
    body = await asyncio.to_thread(api_metrics.render, vm_stats)
    return Response(body, media_type=PROMETHEUS_TEXT)
