"""VM stats: ``GET /nodes/stats`` and ``GET /node/{hostname}/stats`` (an array of one, as the Go SDK decodes)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from pyslicer.api.dependencies import DaemonDep
from pyslicer.api.errors import ERROR_RESPONSES
from pyslicer.api.schemas import HostCounters, NodeStatsEntry, StatsSnapshot
from pyslicer.daemon import NodeStats

router = APIRouter(responses=ERROR_RESPONSES)


def stats_entry(stats: NodeStats) -> NodeStatsEntry:
    return NodeStatsEntry(
        hostname=stats.hostname,
        hostgroup=stats.host_group,
        ip=stats.ip,
        created_at=stats.created_at,
        status=stats.status,
        snapshot=StatsSnapshot(**asdict(stats.snapshot)) if stats.snapshot is not None else None,
        error=stats.error,
        host=HostCounters(**asdict(stats.host)),
    )


@router.get(
    "/nodes/stats",
    summary="Stats of every VM, its agent's snapshot and the host's counters",
    response_model_exclude_none=True,
)
async def all_stats(daemon: DaemonDep) -> list[NodeStatsEntry]:
    return [stats_entry(stats) for stats in await daemon.stats()]


@router.get(
    "/node/{hostname}/stats",
    summary="Stats of one VM, as an array of one",
    response_model_exclude_none=True,
)
async def node_stats(daemon: DaemonDep, hostname: str) -> list[NodeStatsEntry]:
    return [stats_entry(stats) for stats in await daemon.stats(hostname)]
