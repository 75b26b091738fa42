"""A VM's lifecycle: pause, resume, suspend, restore, shutdown and relaunch."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from pyslicer.api.dependencies import DaemonDep, body_schema, json_body_of
from pyslicer.api.errors import ERROR_RESPONSES
from pyslicer.api.nodes import WaitFor, WaitTimeout, created_node, wait_timeout
from pyslicer.api.schemas import CreatedNode, ErrorBody, LifecycleResult, ShutdownBody
from pyslicer.daemon import Node, NodeState
from pyslicer.errors import InvalidArgument

router = APIRouter(responses=ERROR_RESPONSES)
MAX_SHUTDOWN_SECONDS = 600.0

ShutdownAction = Annotated[
    str | None, Query(description="shutdown or reboot: both stop the VM cleanly (Slicer's graceful stop)")
]


def result(node: Node) -> LifecycleResult:
    removed = node.state is NodeState.DELETED
    return LifecycleResult(hostname=node.hostname, status=node.state.api_status, disk_removed=removed)


@router.post("/vm/{hostname}/pause", summary="Stop the VM's vCPUs; its processes and memory stay")
async def pause(daemon: DaemonDep, hostname: str) -> LifecycleResult:
    return result(await daemon.pause_node(hostname))


@router.post("/vm/{hostname}/resume", summary="Run a paused VM again")
async def resume(daemon: DaemonDep, hostname: str) -> LifecycleResult:
    return result(await daemon.resume_node(hostname))


@router.post(
    "/vm/{hostname}/suspend",
    summary="Save the VM's memory and devices in the data dir and end its VM process; `Suspended` until restored",
    description="The VM's disk stays; its memory is released. A persistent suspended VM stays so across daemon "
    "restarts. 413 (`no_space_for_state`) when the data dir has no room for the state: the VM keeps running.",
    responses={413: {"model": ErrorBody, "description": "no room in the data dir for the VM's state"}},
)
async def suspend(daemon: DaemonDep, hostname: str) -> LifecycleResult:
    return result(await daemon.suspend_node(hostname))


@router.post(
    "/vm/{hostname}/restore",
    summary="Bring a suspended VM back with its processes and memory",
    description="409 when it is not suspended, or (`state_unusable`) when its saved state is missing or damaged: "
    "the VM is then `Stopped` and can be relaunched from its disk.",
)
async def restore(
    daemon: DaemonDep,
    hostname: str,
    wait: WaitFor = None,
    timeout: WaitTimeout = None,
) -> LifecycleResult:
    seconds = wait_timeout(timeout)
    return result(await daemon.restore_node(hostname, wait=wait or None, timeout=seconds))


@router.post(
    "/vm/{hostname}/shutdown",
    summary="Stop the VM cleanly; answers once it has stopped",
    description="A persistent VM (or a service) ends `Stopped` and can be relaunched with its disk; an ephemeral "
    "sandbox is removed with its disk. `action` comes from the query or a JSON body.",
    openapi_extra=body_schema(ShutdownBody),
)
async def shutdown(
    daemon: DaemonDep,
    hostname: str,
    body: Annotated[ShutdownBody, json_body_of(ShutdownBody)],
    action: ShutdownAction = None,
    timeout: Annotated[
        str | None,
        Query(description="Go duration the guest has to stop before it is killed (default 20s, at most 10m)"),
    ] = None,
) -> LifecycleResult:
    chosen = action or body.action or "shutdown"
    if chosen not in ("shutdown", "reboot"):
        raise InvalidArgument(f"action: {chosen!r} is not one of shutdown, reboot", code="invalid_action")
    seconds = wait_timeout(timeout) if timeout else None
    if seconds is not None and seconds > MAX_SHUTDOWN_SECONDS:
        raise InvalidArgument(f"timeout: {timeout!r} is over {MAX_SHUTDOWN_SECONDS // 60:g}m", code="invalid_timeout")
    return result(await daemon.shut_down_node(hostname, timeout=seconds))


@router.post("/vm/{hostname}/relaunch", summary="Boot a stopped VM again from its disk")
async def relaunch(
    daemon: DaemonDep,
    hostname: str,
    wait: WaitFor = None,
    timeout: WaitTimeout = None,
) -> CreatedNode:
    seconds = wait_timeout(timeout)
    return created_node(await daemon.relaunch_node(hostname, wait=wait or None, timeout=seconds))
