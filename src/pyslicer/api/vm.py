"""Per-VM endpoints that are not exec: agent health, the serial console log, describe and tags."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from pyslicer.api.dependencies import DaemonDep, body_schema, json_body_of
from pyslicer.api.errors import ERROR_RESPONSES, status_of
from pyslicer.api.nodes import node_info
from pyslicer.api.schemas import (
    AgentHealth,
    ConsoleLog,
    ErrorBody,
    NetworkDescriptionBody,
    NetworkOverrideBody,
    NetworkPolicyBody,
    NodeDescriptionBody,
    TagPatchBody,
    VMTags,
)
from pyslicer.daemon import TagChange, TagOperation, format_expires_at
from pyslicer.errors import InvalidArgument, SlicerError

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


@router.get("/vm/{hostname}", summary="Describe a VM: its listing fields, image, storage and network policy")
async def describe(daemon: DaemonDep, hostname: str) -> NodeDescriptionBody:
    found = daemon.describe(hostname)
    network = found.network
    return NodeDescriptionBody(
        **node_info(found.node).model_dump(),
        storage=found.storage,
        image=found.image,
        commit_id=found.commit_id,
        parent_commit_id=found.parent_commit_id,
        network=NetworkDescriptionBody(
            mode=network.mode,
            policy_source=network.policy_source,
            host_group=NetworkPolicyBody(allow=list(network.host_group.allow), drop=list(network.host_group.drop)),
            override=None
            if network.override is None
            else NetworkOverrideBody(
                allow=None if network.override.allow is None else list(network.override.allow),
                drop=None if network.override.drop is None else list(network.override.drop),
            ),
            effective=NetworkPolicyBody(allow=list(network.effective.allow), drop=list(network.effective.drop)),
            namespace=network.namespace,
        ),
        expires_at=format_expires_at(found.expires_at) if found.expires_at is not None else None,
        disk_bytes=found.disk_bytes,
        protected=found.node.record.protected,
    )


@router.get("/vm/{hostname}/tags", summary="A VM's tags")
async def get_tags(daemon: DaemonDep, hostname: str) -> VMTags:
    return VMTags(hostname=hostname, tags=daemon.tags(hostname))


@router.patch(
    "/vm/{hostname}/tags",
    summary="Add, remove or replace a VM's tags (one of them a request)",
    openapi_extra=body_schema(TagPatchBody),
    responses={409: {"model": ErrorBody, "description": "the name= tag would change, or another VM has that name"}},
)
async def patch_tags(
    daemon: DaemonDep, hostname: str, body: Annotated[TagPatchBody, json_body_of(TagPatchBody)]
) -> VMTags:
    daemon.node(hostname)  # an unknown VM is a 404 whatever the body
    asked: dict[TagOperation, list[str] | None] = {"add": body.add, "remove": body.remove, "replace": body.replace}
    present = {operation: tags for operation, tags in asked.items() if tags is not None}
    if len(present) != 1:
        got = ", ".join(present) or "none"
        raise InvalidArgument(f"body: exactly one of add, remove, replace is needed (got {got})", code="invalid_body")
    [(operation, tags)] = present.items()
    return VMTags(hostname=hostname, tags=await daemon.change_tags(hostname, TagChange(operation, tuple(tags))))
