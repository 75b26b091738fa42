"""Commits and forks: commit a stopped VM's disk, list and delete commits, fork new VMs from one."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from pyslicer.api.dependencies import DaemonDep, body_schema, json_body_of
from pyslicer.api.errors import ERROR_RESPONSES
from pyslicer.api.nodes import WaitTimeout, wait_timeout
from pyslicer.api.schemas import CommitAnswer, CommitDeleted, CommitListing, ErrorBody, ForkAnswer
from pyslicer.daemon import CommitFilter, CommitInfo, CommitRequest, ForkRequest, NodeState

router = APIRouter(responses=ERROR_RESPONSES)


@router.get("/vm/commits", summary="Commits, filtered by every tag given, cache key, source VM and mode")
async def list_commits(
    daemon: DaemonDep,
    tag: Annotated[list[str] | None, Query(description="only commits with this tag (repeat: all of them)")] = None,
    cache_key: Annotated[str | None, Query()] = None,
    source: Annotated[str | None, Query(description="the hostname it was committed from")] = None,
    mode: Annotated[str | None, Query(description="disk (a cold commit) or hot")] = None,
) -> list[CommitListing]:
    where = CommitFilter(
        tags=tuple(t.strip() for t in tag or () if t.strip()),
        cache_key=(cache_key or "").strip() or None,
        source=(source or "").strip() or None,
        mode=(mode or "").strip() or None,
    )
    return [listing(info) for info in daemon.list_commits(where)]


def listing(info: CommitInfo) -> CommitListing:
    c = info.commit
    return CommitListing(
        commit_id=c.commit_id,
        source_hostname=c.source_hostname,
        source_host_group=c.source_host_group,
        created_at=c.created_at,
        mode=c.mode,
        tags=c.tags,
        labels=c.labels,
        cache_key=c.cache_key,
        parent_commit_id=c.parent_commit_id,
        size_bytes=c.size_bytes,
        used_by=list(info.used_by),
    )


@router.delete(
    "/vm/commits/{commit_id}",
    summary="Delete a commit and its files",
    responses={409: {"model": ErrorBody, "description": "a VM (its source too) or another commit stands on it"}},
)
async def delete_commit(daemon: DaemonDep, commit_id: str) -> CommitDeleted:
    commit = await daemon.delete_commit(commit_id)
    return CommitDeleted(commit_id=commit.commit_id, status="deleted")


@router.post(
    "/vm/commits/{commit_id}/fork",
    summary="A new VM from a commit, with a fresh identity",
    description="The child is in the source's host group, named by the daemon, with its own overlay over the "
    "commit, hostname, MAC and IP, and (per `fixups`) machine-id and SSH host keys. No `wait` means `agent`.",
    openapi_extra=body_schema(ForkRequest),
    responses={
        408: {"model": ErrorBody, "description": "the wait timed out; the child is removed"},
        413: {"model": ErrorBody, "description": "the data dir's disk is (nearly) full"},
    },
)
async def fork(
    daemon: DaemonDep,
    commit_id: str,
    body: Annotated[ForkRequest, json_body_of(ForkRequest)],
    wait: Annotated[
        Literal["agent", "none", ""] | None, Query(description="agent (the default): return once it is ready")
    ] = None,
    timeout: WaitTimeout = None,
) -> ForkAnswer:
    seconds = wait_timeout(timeout)
    forked = await daemon.fork(commit_id, body, wait=wait != "none", timeout=seconds)
    node = forked.node
    return ForkAnswer(
        hostname=node.hostname,
        source_hostname=forked.commit.source_hostname,
        commit_id=forked.commit.commit_id,
        status="forked",
        parent_status=forked.source_status.lower(),
        child_status="running" if node.state is NodeState.RUNNING else "starting",
        mode=forked.commit.mode,
        persistent=node.record.persistent,
    )


@router.post(
    "/vm/{hostname}/commit",
    summary="Commit a stopped persistent VM's disk; it goes on from the commit",
    openapi_extra=body_schema(CommitRequest),
    responses={
        409: {"model": ErrorBody, "description": "the VM is not stopped, or a commit of it is in progress"},
        413: {"model": ErrorBody, "description": "the data dir's disk is (nearly) full; nothing was made"},
    },
)
async def commit(
    daemon: DaemonDep, hostname: str, body: Annotated[CommitRequest, json_body_of(CommitRequest)]
) -> CommitAnswer:
    committed = await daemon.commit_node(hostname, body)
    c = committed.commit
    return CommitAnswer(
        hostname=hostname,
        commit_id=c.commit_id,
        status="committed",
        parent_status=committed.source_status.lower(),
        mode=c.mode,
        tags=c.tags,
        labels=c.labels,
        cache_key=c.cache_key,
    )
