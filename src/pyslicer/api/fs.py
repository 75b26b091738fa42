"""``/vm/{hostname}/fs/*``: the guest filesystem, and ``fs/watch`` as server-sent events.

A listing streams as one JSON array while the guest lists; a watch streams ``id:``/``event: watch``/``data:``
blocks, with a comment right away (so clients see the stream is open) and every ``HEARTBEAT_SECONDS`` while
idle. ``Last-Event-ID`` (or ``last_event_id``) is 0..2^53-1: the new stream's ids continue after it, so ids
never go back for a client that resumes (they wrap to 1 after 2^53-1, the most every SDK parses exactly);
events from between the two connections are not replayed. Both streams drive ASGI themselves, so a client
that leaves stops the guest's work at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Annotated, Any, ClassVar

from fastapi import APIRouter, Depends
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from pyslicer.api.dependencies import DaemonDep, json_body_of, query_of, query_parameters
from pyslicer.api.errors import ERROR_RESPONSES, describe_validation
from pyslicer.api.schemas import ErrorBody, FsEntryInfo, FsRemoved, FsWatchEventData
from pyslicer.api.streaming import Emit, StreamedResponse
from pyslicer.daemon.fs import (
    DirectoryListing,
    FsEntry,
    FsWatch,
    MkdirRequest,
    PathQuery,
    RemoveRequest,
    WatchEnded,
    WatchEvent,
    WatchRequest,
)
from pyslicer.errors import SlicerError

log = logging.getLogger(__name__)

EVENT_STREAM = "text/event-stream"
HEARTBEAT_SECONDS = 15.0
SSE_HEARTBEAT = b":\n\n"
RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    403: {"model": ErrorBody, "description": "the guest refused (permission denied)"},
    404: {"model": ErrorBody, "description": "no such VM (code vm_not_found) or path (code path_not_found)"},
    409: {"model": ErrorBody, "description": "the VM is not running, or the path is in the way (exists, not empty)"},
}


def _schema(model: Any) -> dict[str, Any]:
    schema: dict[str, Any] = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return schema


router = APIRouter(responses=RESPONSES)


def entry_json(entry: FsEntry) -> dict[str, Any]:
    return {"name": entry.name, "type": entry.type, "size": entry.size, "mtime": entry.mtime, "mode": entry.mode}


@router.get(
    "/vm/{hostname}/fs/readdir",
    summary="List a directory (sorted by name; entries as lstat sees them)",
    response_model=list[FsEntryInfo],
    response_class=Response,
    openapi_extra={"parameters": query_parameters(PathQuery)},
    responses={200: {"content": {"application/json": {"schema": {"type": "array", "items": _schema(FsEntryInfo)}}}}},
)
async def readdir(daemon: DaemonDep, hostname: str, query: Annotated[PathQuery, query_of(PathQuery)]) -> Response:
    listing = await daemon.filesystem(hostname).readdir(query.path)
    return ListingResponse(listing)


@router.get(
    "/vm/{hostname}/fs/stat",
    summary="Describe one path (404 with code path_not_found when it does not exist)",
    response_model=FsEntryInfo,
    openapi_extra={"parameters": query_parameters(PathQuery)},
)
async def stat(daemon: DaemonDep, hostname: str, query: Annotated[PathQuery, query_of(PathQuery)]) -> FsEntryInfo:
    entry = await daemon.filesystem(hostname).stat(query.path)
    return FsEntryInfo(**entry_json(entry))


@router.post(
    "/vm/{hostname}/fs/mkdir",
    summary="Create a directory (recursive: with its parents, and an existing one is fine)",
    response_model=FsEntryInfo,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": _schema(MkdirRequest)}}}
    },
)
async def mkdir(daemon: DaemonDep, hostname: str, body: Annotated[MkdirRequest, json_body_of(MkdirRequest)]) -> Any:
    entry = await daemon.filesystem(hostname).mkdir(body)
    return FsEntryInfo(**entry_json(entry))


@router.delete(
    "/vm/{hostname}/fs/remove",
    summary="Remove a file, symlink or empty directory (recursive: a whole tree)",
    response_model=FsRemoved,
    openapi_extra={"parameters": query_parameters(RemoveRequest)},
)
async def remove(
    daemon: DaemonDep, hostname: str, query: Annotated[RemoveRequest, query_of(RemoveRequest)]
) -> FsRemoved:
    path = await daemon.filesystem(hostname).remove(query)
    return FsRemoved(path=path, removed=True)


async def watch_request(request: Request) -> WatchRequest:
    """The watch's query, with ``Last-Event-ID`` from the header (or the ``last_event_id`` parameter)."""
    params = request.query_params
    lists = ("paths", "patterns", "events")
    data: dict[str, Any] = {name: params.getlist(name) for name in lists if name in params}
    for name in WatchRequest.model_fields:
        if name not in lists and name in params:
            data[name] = params[name]
    header = request.headers.get("last-event-id")
    if header is not None and header.strip():
        data["last_event_id"] = header.strip()
    try:
        return WatchRequest.model_validate(data)
    except ValidationError as exc:
        errors = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            if loc[:1] == ("last_event_id",) and header is not None:
                loc = ("Last-Event-ID",)
            errors.append({**error, "loc": ("query", *loc)})
        raise describe_validation(errors) from None


WATCH_PARAMETERS = [
    *query_parameters(WatchRequest),
    {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "description": "0..2^53-1: the stream's ids continue after it (nothing is replayed)",
        "schema": {"type": "string"},
    },
]


@router.get(
    "/vm/{hostname}/fs/watch",
    summary="Watch paths for changes (server-sent events; inotify in the guest)",
    response_class=Response,
    openapi_extra={"parameters": WATCH_PARAMETERS},
    responses={
        200: {
            "description": "Blocks of `id: N`, `event: watch`, `data: <JSON>` and a blank line; comments (`:`) "
            "when the stream opens, every 15 s while idle, and when it ends (`: end: <reason>`: one_shot, "
            "max_events, timeout, or the guest's reason). Each data is one FsWatchEventData.",
            "content": {EVENT_STREAM: {"schema": _schema(FsWatchEventData)}},
        }
    },
)
async def watch(daemon: DaemonDep, hostname: str, request: Annotated[WatchRequest, Depends(watch_request)]) -> Response:
    started = await daemon.filesystem(hostname).watch(request)
    return WatchResponse(started)


# -- server-sent events -----------------------------------------------------------------------------


def sse_event(event: WatchEvent) -> bytes:
    """One ``event: watch`` block. The JSON is ASCII-escaped, so it is always one ``data:`` line."""
    data: dict[str, Any] = {
        "id": event.id,
        "type": event.type,
        "path": event.path,
        "timestamp": event.timestamp,
        "size": event.size,
        "isDir": event.is_dir,
    }
    if event.message is not None:
        data["message"] = event.message
    return f"id: {event.id}\nevent: watch\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def sse_comment(text: str) -> bytes:
    """A comment block; each line of ``text`` its own comment line."""
    return "".join(f": {line}\n" for line in text.splitlines() or [""]).encode() + b"\n"


class ListingResponse(StreamedResponse):
    """``[entry, ...]`` written as the guest lists; cut short (invalid JSON) if the agent is lost midway."""

    media_type = "application/json"

    def __init__(self, listing: DirectoryListing) -> None:
        self.listing = listing
        super().__init__()

    async def produce(self, emit: Emit) -> None:
        pieces: list[bytes] = []
        size = 0
        first = True
        try:
            async for entry in self.listing.entries():
                pieces.append((b"[" if first else b",") + json.dumps(entry_json(entry)).encode())
                first = False
                size += len(pieces[-1])
                if size >= 64 * 1024:
                    await emit(b"".join(pieces))
                    pieces, size = [], 0
        except SlicerError as exc:
            log.warning("readdir %s: %s", self.listing.path, exc)
            return  # the array stays open: the client sees a broken answer, not a short listing
        pieces.append(b"[]" if first else b"]")
        await emit(b"".join(pieces))

    def stop(self) -> None:
        self.listing.cancel()


class WatchResponse(StreamedResponse):
    media_type = EVENT_STREAM
    headers_to_send: ClassVar[dict[str, str]] = {"cache-control": "no-store", "x-accel-buffering": "no"}

    def __init__(self, watch: FsWatch, heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self.watch = watch
        self.heartbeat = heartbeat
        super().__init__()

    async def produce(self, emit: Emit) -> None:
        await emit(sse_comment(f"watching {' '.join(self.watch.paths)}"))
        beating = asyncio.get_running_loop().create_task(self._beat(emit))
        try:
            async for item in self.watch.events():
                if isinstance(item, WatchEnded):
                    await emit(sse_comment(f"end: {item.reason}"))
                    return
                await emit(sse_event(item))
        except SlicerError as exc:  # the agent was lost, or the guest failed mid-watch
            await emit(sse_comment(f"end: error: {exc.message}"))
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await beating

    async def _beat(self, emit: Emit) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            await emit(SSE_HEARTBEAT)

    def stop(self) -> None:
        self.watch.cancel()
