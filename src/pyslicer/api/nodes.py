"""Host groups and nodes: list, create, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from starlette.requests import Request

from pyslicer.api.dependencies import DaemonDep, body_schema, json_body_of
from pyslicer.api.errors import ERROR_RESPONSES
from pyslicer.api.schemas import CreatedNode, CreateNodeBody, DeleteResult, ErrorBody, HostGroupInfo, NodeInfo
from pyslicer.daemon import Node, NodeRequest, machine_arch, refuse_import
from pyslicer.durations import parse_positive_duration
from pyslicer.errors import InvalidArgument

router = APIRouter(responses=ERROR_RESPONSES)
DEFAULT_WAIT_TIMEOUT = 300.0

TagFilter = Annotated[str | None, Query(description="only nodes with exactly this tag")]
TagPrefixFilter = Annotated[str | None, Query(description="only nodes with a tag starting with this")]


def node_info(node: Node) -> NodeInfo:
    record = node.record
    return NodeInfo(
        hostname=record.hostname,
        hostgroup=record.host_group,
        ip=record.ip,
        ram_bytes=record.ram_bytes,
        cpus=record.cpus,
        created_at=record.created_at,
        tags=record.tags,
        arch=machine_arch(),
        status=node.state.api_status,
        persistent=record.persistent,
    )


def node_request(body: CreateNodeBody) -> NodeRequest:
    if body.gpu_count:
        raise InvalidArgument("gpu_count: this host has no GPUs to pass through", code="gpu_count")
    if body.pci_devices:
        raise InvalidArgument("pci_devices: PCI passthrough is not supported on this build", code="pci_devices")
    refuse_import(body.github_user, body.import_user)
    if body.disk_image:
        raise InvalidArgument("disk_image: custom disk images are not supported on this build", code="disk_image")
    return NodeRequest(
        hostname=body.hostname or None,
        cpus=body.cpus or None,
        ram_bytes=body.ram_bytes or None,
        userdata=body.userdata,
        tags=tuple(body.tags),
        persistent=body.persistent,
        secrets=tuple(body.secrets) if body.secrets is not None else None,
        ttl=body.ttl,
        ip=body.ip.strip() or None,
        ssh_keys=tuple(body.ssh_keys),
        allow=tuple(body.network.allow) if body.network is not None and body.network.allow is not None else None,
        drop=tuple(body.network.drop) if body.network is not None and body.network.drop is not None else None,
    )


WaitFor = Annotated[
    Literal["agent", "userdata", ""] | None, Query(description="return once the agent (or userdata) is ready")
]
WaitTimeout = Annotated[str | None, Query(description="Go duration for the wait (30s, 5m, 1m30s); default 5m")]


def wait_timeout(raw: str | None) -> float:
    """The ``timeout`` query (a Go duration) in seconds. Raises InvalidArgument naming it."""
    return parse_positive_duration(raw, "timeout") if raw else DEFAULT_WAIT_TIMEOUT


@router.get("/hostgroup", summary="Host groups and their per-VM ceilings")
async def list_host_groups(daemon: DaemonDep) -> list[HostGroupInfo]:
    return [
        HostGroupInfo(
            name=group.name,
            count=group.config.count,
            ram_bytes=group.config.ram_bytes,
            cpus=group.config.vcpu,
            gpu_count=0,
            arch=machine_arch(),
        )
        for group in daemon.groups.values()
    ]


@router.get("/hostgroup/{name}/nodes", summary="Nodes of one host group")
async def list_group_nodes(
    daemon: DaemonDep, name: str, tag: TagFilter = None, tag_prefix: TagPrefixFilter = None
) -> list[NodeInfo]:
    return [node_info(node) for node in daemon.list_nodes(name, tag=tag, tag_prefix=tag_prefix)]


@router.get("/nodes", summary="Nodes of every host group")
async def list_nodes(daemon: DaemonDep, tag: TagFilter = None, tag_prefix: TagPrefixFilter = None) -> list[NodeInfo]:
    return [node_info(node) for node in daemon.list_nodes(None, tag=tag, tag_prefix=tag_prefix)]


@router.post(
    "/hostgroup/{name}/nodes",
    status_code=201,
    summary="Launch a node",
    openapi_extra=body_schema(CreateNodeBody),
    responses={408: {"model": ErrorBody, "description": "the wait timed out; the VM is removed"}},
)
async def create_node(
    request: Request,
    daemon: DaemonDep,
    name: str,
    body: Annotated[CreateNodeBody, json_body_of(CreateNodeBody)],
    wait: WaitFor = None,
    timeout: WaitTimeout = None,
) -> CreatedNode:
    daemon.group(name)
    if "ttl" in request.query_params:  # the query says how to answer; what the VM is goes in the body
        raise InvalidArgument('ttl: give it in the JSON body ({"ttl": "10m"}), not the query', code="invalid_ttl")
    seconds = wait_timeout(timeout)
    return created_node(await daemon.create_node(name, node_request(body), wait=wait or None, timeout=seconds))


def created_node(node: Node) -> CreatedNode:
    record = node.record
    return CreatedNode(
        hostname=record.hostname,
        hostgroup=record.host_group,
        ip=record.ip,
        created_at=record.created_at,
        arch=machine_arch(),
        persistent=record.persistent,
    )


@router.delete("/hostgroup/{name}/nodes/{hostname}", summary="Stop a node and remove its disk")
async def delete_node(daemon: DaemonDep, name: str, hostname: str) -> DeleteResult:
    await daemon.delete_node(name, hostname)
    return DeleteResult(message="Node deleted", disk_removed="true")
