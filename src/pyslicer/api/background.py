"""Background exec: ``POST /vm/{hostname}/exec?background=true`` (dispatched here by ``api/exec.py``) and
``/vm/{hostname}/exec[/{exec_id}[/logs|/kill|/wait-exit]]``.

The agent keeps the processes; the daemon asks it each time. Logs stream as NDJSON frames with ids (and ``gap``
frames where the ring dropped records), base64 when the exec was started with ``stdio=base64`` (as both SDKs do).
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response

from pyslicer.api.dependencies import DaemonDep, json_body_of, query_of, query_parameters
from pyslicer.api.errors import ERROR_RESPONSES
from pyslicer.api.schemas import (
    ErrorBody,
    ExecBackgroundDeleted,
    ExecBackgroundExit,
    ExecBackgroundInfo,
    ExecBackgroundKilled,
    ExecBackgroundStarted,
    ExecLogFrame,
)
from pyslicer.api.streaming import Emit, StreamedResponse
from pyslicer.daemon import Daemon, ExecRequest
from pyslicer.daemon.background import (
    DEFAULT_WAIT_SECONDS,
    MAX_WAIT_SECONDS,
    BackgroundInfo,
    BackgroundLogs,
    BackgroundRequest,
    KillRequest,
    LogExit,
    LogOutput,
    LogRecord,
    LogStarted,
)
from pyslicer.daemon.exec import Flag
from pyslicer.errors import InvalidArgument, SlicerError

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    404: {"model": ErrorBody, "description": "no such VM (code vm_not_found) or exec (code exec_not_found)"},
    409: {"model": ErrorBody, "description": "the VM is not running, or (delete) the exec still runs"},
    410: {"model": ErrorBody, "description": "the exec was deleted"},
}

router = APIRouter(responses=RESPONSES)


async def start(
    daemon: Daemon, hostname: str, query: ExecRequest, *, ring_bytes: int, use_base64: bool, buffered: bool
) -> Response:
    """The answer to ``POST exec?background=true``: 201 and the new exec."""
    if buffered:
        raise InvalidArgument("buffered=true is not supported with background=true", code="invalid_buffered")
    if query.stdin:
        raise InvalidArgument("stdin is not supported with background=true", code="invalid_stdin")
    request = BackgroundRequest.model_validate({**query.model_dump(), "ring_bytes": ring_bytes, "base64": use_base64})
    started = await daemon.background(hostname).start(request)
    body = ExecBackgroundStarted(
        exec_id=started.exec_id, pid=started.pid, started_at=started.started_at, ring_bytes=started.ring_bytes
    )
    return JSONResponse(body.model_dump(), status_code=201)


def info_model(info: BackgroundInfo) -> ExecBackgroundInfo:
    return ExecBackgroundInfo(
        exec_id=info.exec_id,
        pid=info.pid,
        command=info.command,
        args=info.args,
        cwd=info.cwd,
        uid=info.uid,
        started_at=info.started_at,
        running=info.running,
        exit_code=info.exit_code,
        signal=info.signal,
        ended_at=info.ended_at,
        bytes_written=info.bytes_written,
        bytes_dropped=info.bytes_dropped,
        next_id=info.next_id,
        ring_bytes=info.ring_bytes,
    )


@router.get("/vm/{hostname}/exec", summary="List the background execs the VM's agent tracks")
async def list_execs(daemon: DaemonDep, hostname: str) -> list[ExecBackgroundInfo]:
    return [info_model(info) for info in await daemon.background(hostname).list()]


@router.get("/vm/{hostname}/exec/{exec_id}", summary="One background exec")
async def exec_info(daemon: DaemonDep, hostname: str, exec_id: str) -> ExecBackgroundInfo:
    return info_model(await daemon.background(hostname).info(exec_id))


@router.delete(
    "/vm/{hostname}/exec/{exec_id}",
    summary="Forget an ended background exec and free its ring (409 while it runs; kill it first)",
)
async def delete_exec(daemon: DaemonDep, hostname: str, exec_id: str) -> ExecBackgroundDeleted:
    return ExecBackgroundDeleted(exec_id=await daemon.background(hostname).delete(exec_id), reaped=True)


@router.post(
    "/vm/{hostname}/exec/{exec_id}/kill",
    summary="Signal a background exec's process group (TERM, then KILL after grace_ms)",
)
async def kill_exec(
    daemon: DaemonDep, hostname: str, exec_id: str, body: Annotated[KillRequest, json_body_of(KillRequest)]
) -> ExecBackgroundKilled:
    result = await daemon.background(hostname).kill(exec_id, body)
    return ExecBackgroundKilled(
        exec_id=result.exec_id, pid=result.pid, running=result.running, signal_sent=result.signal_sent
    )


class WaitQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    timeout: float = Field(
        default=DEFAULT_WAIT_SECONDS, ge=0, le=MAX_WAIT_SECONDS, description="seconds (default 30, at most 600)"
    )


@router.get(
    "/vm/{hostname}/exec/{exec_id}/wait-exit",
    summary="Wait until a background exec ends, or timeout seconds (then timed_out)",
    openapi_extra={"parameters": query_parameters(WaitQuery)},
)
async def wait_exit(
    daemon: DaemonDep, hostname: str, exec_id: str, query: Annotated[WaitQuery, query_of(WaitQuery)]
) -> ExecBackgroundExit:
    status = await daemon.background(hostname).wait(exec_id, query.timeout)
    return ExecBackgroundExit(
        exec_id=status.exec_id,
        running=status.running,
        exit_code=status.exit_code,
        signal=status.signal,
        ended_at=status.ended_at,
        timed_out=status.timed_out,
    )


class LogsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    follow: Flag = Field(default=False, description="stay open for new frames until the exec ends")
    from_id: int = Field(default=0, ge=0, description="start at this frame id (0: the oldest kept)")


@router.get(
    "/vm/{hostname}/exec/{exec_id}/logs",
    summary="A background exec's output ring as NDJSON frames; with follow, live until it ends",
    response_class=Response,
    openapi_extra={"parameters": query_parameters(LogsQuery)},
    responses={
        200: {
            "description": "one frame a line",
            "content": {
                NDJSON: {"schema": ExecLogFrame.model_json_schema(ref_template="#/components/schemas/{model}")}
            },
        }
    },
)
async def logs(
    daemon: DaemonDep, hostname: str, exec_id: str, query: Annotated[LogsQuery, query_of(LogsQuery)]
) -> Response:
    reader = await daemon.background(hostname).logs(exec_id, follow=query.follow, from_id=query.from_id)
    return LogsResponse(reader)


def log_frame(record: LogRecord, use_base64: bool) -> dict[str, Any]:
    if isinstance(record, LogOutput):
        data = base64.b64encode(record.data).decode() if use_base64 else record.data.decode("utf-8", "replace")
        frame: dict[str, Any] = {"id": record.id, "type": record.stream, "data": data, record.stream: data}
        if use_base64:
            frame["encoding"] = "base64"
    elif isinstance(record, LogStarted):
        frame = {"id": record.id, "type": "started", "pid": record.pid, "started_at": record.started_at}
    elif isinstance(record, LogExit):
        frame = {"id": record.id, "type": "exit", "exit_code": record.exit_code, "ended_at": record.ended_at}
        if record.signal is not None:
            frame["signal"] = record.signal
    else:
        frame = {
            "type": "gap",
            "dropped_bytes": record.dropped_bytes,
            "dropped_frames": record.dropped_frames,
            "message": record.message,
        }
    frame["timestamp"] = record.timestamp
    return frame


class LogsResponse(StreamedResponse):
    media_type = NDJSON

    def __init__(self, reader: BackgroundLogs) -> None:
        self.reader = reader
        super().__init__()

    async def produce(self, emit: Emit) -> None:
        try:
            async for record in self.reader.records():
                await emit(json.dumps(log_frame(record, self.reader.base64), separators=(",", ":")).encode() + b"\n")
        except SlicerError as exc:  # the agent was lost midway: the stream ends; a client resumes with from_id
            log.warning("background exec logs: %s", exc)

    def stop(self) -> None:
        self.reader.cancel()
