"""Per-VM endpoints that are not exec: agent health and the serial console log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from pyslicer.api.dependencies import DaemonDep
from pyslicer.api.errors import ERROR_RESPONSES, status_of
from pyslicer.api.schemas import AgentHealth, ConsoleLog
from pyslicer.errors import SlicerError

router = APIRouter(responses=ERROR_RESPONSES)
DEFAULT_LOG_LINES = 20


@router.head(
    "/vm/{hostname}/health",
    summary="200 once the agent is up; the error's status, with no body, otherwise",
    response_class=Response,
)
async def health_head(daemon: DaemonDep, hostname: str) -> Response:
    try:
        daemon.check_agent(hostname)
    except SlicerError as exc:
        return Response(status_code=status_of(exc))
    return Response(status_code=200)


@router.get("/vm/{hostname}/health", summary="The agent's health", response_model_exclude_none=True)
async def health(daemon: DaemonDep, hostname: str) -> AgentHealth:
    answer = await daemon.agent_health(hostname)
    return AgentHealth(
        hostname=answer.hostname,
        agent_uptime=answer.agent_uptime,
        agent_version=answer.agent_version,
        system_uptime=answer.system_uptime,
        userdata_ran=answer.userdata_ran,
        userdata_exit_code=answer.userdata_exit_code,
        ip=daemon.node(hostname).record.ip or None,
    )


@router.get("/vm/{hostname}/logs", summary="The tail of the VM's serial console")
async def logs(
    daemon: DaemonDep,
    hostname: str,
    lines: Annotated[int | None, Query(ge=0, le=10_000_000, description="how many lines (0: all, capped)")] = None,
) -> ConsoleLog:
    count = DEFAULT_LOG_LINES if lines is None else lines
    return ConsoleLog(hostname=hostname, lines=count, content=await daemon.console_log(hostname, count))
