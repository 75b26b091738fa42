"""Host groups and nodes: list, create, delete."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from pyslicer.api.params import json_body
from pyslicer.daemon import Daemon, Node, NodeRequest
from pyslicer.daemon.daemon import machine_arch
from pyslicer.durations import parse_go_duration
from pyslicer.errors import InvalidArgument

DEFAULT_WAIT_TIMEOUT = 300.0


class CreateNodeBody(BaseModel):
    """Slicer's create request. Fields this build cannot honour are accepted when empty."""

    model_config = ConfigDict(extra="ignore")

    hostname: str | None = None
    ip: str = ""
    ram_bytes: StrictInt | None = Field(default=None, ge=0)
    cpus: StrictInt | None = Field(default=None, ge=0)
    gpu_count: StrictInt = Field(default=0, ge=0)
    persistent: StrictBool | None = None
    disk_image: str = ""
    import_user: str = ""
    github_user: str = ""
    ssh_keys: list[str] = Field(default_factory=list)
    protected: StrictBool = False
    userdata: str | None = None
    tags: list[str] = Field(default_factory=list)
    secrets: list[str] = Field(default_factory=list)
    pci_devices: list[str] = Field(default_factory=list)


def parse_create_body(data: dict[str, Any]) -> NodeRequest:
    try:
        body = CreateNodeBody.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise InvalidArgument(problems, code="invalid_body") from None
    if body.gpu_count:
        raise InvalidArgument("gpu_count: this host has no GPUs to pass through", code="gpu_count")
    if body.pci_devices:
        raise InvalidArgument("pci_devices: PCI passthrough is not supported on this build", code="pci_devices")
    if body.ip:
        raise InvalidArgument("ip: static addresses are not supported on this build", code="ip")
    if body.disk_image:
        raise InvalidArgument("disk_image: custom disk images are not supported on this build", code="disk_image")
    return NodeRequest(
        hostname=body.hostname or None,
        cpus=body.cpus or None,
        ram_bytes=body.ram_bytes or None,
        userdata=body.userdata,
        tags=tuple(body.tags),
        persistent=body.persistent,
    )


def node_json(node: Node) -> dict[str, Any]:
    record = node.record
    return {
        "hostname": record.hostname,
        "hostgroup": record.host_group,
        "ip": record.ip,
        "ram_bytes": record.ram_bytes,
        "cpus": record.cpus,
        "created_at": record.created_at,
        "tags": record.tags,
        "arch": machine_arch(),
        "status": node.state.api_status,
    }


def daemon(request: Request) -> Daemon:
    value: Daemon = request.app.state.daemon
    return value


async def list_host_groups(request: Request) -> JSONResponse:
    return JSONResponse(
        [
            {
                "name": group.name,
                "count": group.config.count,
                "ram_bytes": group.config.ram_bytes,
                "cpus": group.config.vcpu,
                "gpu_count": 0,
                "arch": machine_arch(),
            }
            for group in daemon(request).groups.values()
        ]
    )


async def list_nodes(request: Request) -> JSONResponse:
    group = request.path_params.get("name")
    if group is not None:
        daemon(request).group(group)
    nodes = daemon(request).list_nodes(
        group, tag=request.query_params.get("tag"), tag_prefix=request.query_params.get("tag_prefix")
    )
    return JSONResponse([node_json(node) for node in nodes])


async def create_node(request: Request) -> JSONResponse:
    group = request.path_params["name"]
    daemon(request).group(group)
    wait = request.query_params.get("wait") or None
    if wait not in (None, "agent", "userdata"):
        raise InvalidArgument(f"wait: {wait!r} is not one of agent, userdata", code="invalid_wait")
    timeout = DEFAULT_WAIT_TIMEOUT
    if raw_timeout := request.query_params.get("timeout"):
        try:
            timeout = parse_go_duration(raw_timeout)
        except InvalidArgument as exc:
            raise InvalidArgument(f"timeout: {exc.message}", code="invalid_timeout") from None
        if timeout <= 0:
            raise InvalidArgument(f"timeout: {raw_timeout!r} must be positive", code="invalid_timeout")
    node_request = parse_create_body(await json_body(request))
    node = await daemon(request).create_node(group, node_request, wait=wait, timeout=timeout)
    record = node.record
    return JSONResponse(
        {
            "hostname": record.hostname,
            "hostgroup": record.host_group,
            "ip": record.ip,
            "created_at": record.created_at,
            "arch": machine_arch(),
        },
        status_code=201,
    )


async def delete_node(request: Request) -> JSONResponse:
    await daemon(request).delete_node(request.path_params["name"], request.path_params["hostname"])
    return JSONResponse({"message": "Node deleted", "disk_removed": "true"})
