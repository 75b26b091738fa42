"""POST|GET /vm/{hostname}/cp: a file or a tree into the guest (the request body, streamed), or out of it (the
answer, streamed). The guest's agent does the placing; this module turns HTTP into the daemon's copy requests.

Both answers drive ASGI themselves: the upload reads the body message by message, so nothing is held whole and
a client that leaves cancels the copy (the guest keeps nothing of it); the download sends chunks as the guest
sends them, under the credit the daemon grants as they go out.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from typing import Annotated, Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from pyslicer.api.dependencies import DaemonDep, query_of, query_parameters
from pyslicer.api.errors import ERROR_RESPONSES, error_response
from pyslicer.api.schemas import ErrorBody
from pyslicer.api.streaming import call_on_disconnect
from pyslicer.daemon.copy import CopyDownload, CopyInRequest, CopyOutRequest, CopyUpload
from pyslicer.errors import InvalidArgument, SlicerError

OCTET = "application/octet-stream"
TAR = "application/x-tar"
UNPACKED_SIZE = "x-slicer-unpacked-size"
SOURCE_TYPE = "X-Slicer-Source-Type"
SOURCE_NAME = "X-Slicer-Source-Name-Base64"
FILE_MODE = "X-Slicer-File-Mode"

router = APIRouter(responses=ERROR_RESPONSES)

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_COPY_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (
            400,
            "a bad mode (`invalid mode: <mode>`), a directory asked as a file (`must specify a file not a "
            "directory`), an unsafe or invalid tar; nothing was written",
        ),
        (403, "the guest refused the write (`permission_denied`)"),
        (404, "no such VM (`vm_not_found`) or guest path (`path_not_found`)"),
        (413, "the guest's disk cannot hold the upload (`no_space`); nothing was written"),
    )
}


def encode_name(name: str) -> str:
    """base64url without padding, as the Go SDK reads it."""
    return base64.urlsafe_b64encode(name.encode()).rstrip(b"=").decode()


def _unpacked_size(request: Request, query: CopyInRequest) -> int | None:
    text = request.headers.get(UNPACKED_SIZE)
    if text is not None:
        if not text.strip().isdigit():
            raise InvalidArgument(f"X-Slicer-Unpacked-Size: {text!r} is not a byte count", code="invalid_unpacked_size")
        return int(text)
    if query.unpacked_size is not None:
        return query.unpacked_size
    length = request.headers.get("content-length", "")
    return int(length) if length.isdigit() and not query.mode.endswith("tar") else None


@router.post(
    "/vm/{hostname}/cp",
    summary="Copy a file (binary) or a tar of a tree into the VM; it lands atomically",
    response_class=Response,
    openapi_extra={
        "parameters": [
            *query_parameters(CopyInRequest),
            {
                "name": "X-Slicer-Unpacked-Size",
                "in": "header",
                "required": False,
                "description": "bytes of file data the upload holds; refused (413) up front when the guest lacks them",
                "schema": {"type": "integer", "minimum": 0},
            },
        ],
        "requestBody": {
            "required": True,
            "description": "the file's bytes, or an uncompressed tar whose names are relative to the tree",
            "content": {OCTET: _BINARY, TAR: _BINARY},
        },
    },
    responses={
        200: {
            "description": "everything is in place",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"path": {"type": "string"}, "size": {"type": "integer"}},
                        "required": ["path", "size"],
                    }
                }
            },
        },
        **_COPY_ERRORS,
    },
)
async def copy_to_vm(
    daemon: DaemonDep, hostname: str, request: Request, query: Annotated[CopyInRequest, query_of(CopyInRequest)]
) -> Response:
    if "mode" not in request.query_params and request.headers.get("content-type", "").startswith(TAR):
        query = query.model_copy(update={"mode": "tar"})
    query = query.model_copy(update={"unpacked_size": _unpacked_size(request, query)})
    return CopyUploadResponse(daemon.copy_in(hostname, query))


@router.get(
    "/vm/{hostname}/cp",
    summary="Copy a file (its bytes) or a directory (a tar of its contents) out of the VM",
    response_class=Response,
    openapi_extra={"parameters": query_parameters(CopyOutRequest)},
    responses={
        200: {
            "description": "the file's bytes, or a tar (names relative to the directory, no `.` entry)",
            "content": {OCTET: _BINARY, TAR: _BINARY},
            "headers": {
                SOURCE_TYPE: {"description": "file or directory", "schema": {"type": "string"}},
                SOURCE_NAME: {
                    "description": "the source's name, base64url without padding (absent for `dir/.` and `/`)",
                    "schema": {"type": "string"},
                },
                FILE_MODE: {
                    "description": "the source's permission bits, octal (`0644`)",
                    "schema": {"type": "string"},
                },
            },
        },
        **_COPY_ERRORS,
    },
)
async def copy_from_vm(
    daemon: DaemonDep, hostname: str, query: Annotated[CopyOutRequest, query_of(CopyOutRequest)]
) -> Response:
    download = await daemon.copy_out(hostname, query)
    return CopyDownloadResponse(download, tar=download.source.source_type == "directory" or query.mode == "tar")


class CopyUploadResponse(Response):
    """Feeds the request body to the guest as it arrives, then answers with where it landed."""

    def __init__(self, upload: CopyUpload) -> None:
        self.upload = upload
        self.status_code = 200
        self.background = None
        self.init_headers({})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    self.upload.cancel()  # the guest removes what it wrote aside
                    return
                if body := message.get("body", b""):
                    await self.upload.write(body)
                if self.upload.refused or not message.get("more_body", False):
                    break
            result = await self.upload.finish()
        except SlicerError as exc:
            await error_response(exc)(scope, receive, send)
            return
        finally:
            self.upload.cancel()
        await JSONResponse({"path": result.path, "size": result.size})(scope, receive, send)


class CopyDownloadResponse(Response):
    """Sends the guest's bytes as they come; a client that leaves stops the copy. A copy the guest cuts short
    ends the response without its last chunk, so the client sees a broken transfer, never a short file."""

    def __init__(self, download: CopyDownload, *, tar: bool) -> None:
        self.download = download
        self.status_code = 200
        self.background = None
        source = download.source
        headers = {"cache-control": "no-store", FILE_MODE: source.file_mode}
        if not tar or source.source_type == "directory":  # a legacy tar of one file is no "directory"
            headers[SOURCE_TYPE] = source.source_type
            if source.name:
                headers[SOURCE_NAME] = encode_name(source.name)
        if not tar:
            headers["content-length"] = str(source.size)
        self.media_type = TAR if tar else OCTET
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        listener = asyncio.get_running_loop().create_task(call_on_disconnect(receive, self.download.cancel))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            try:
                async for chunk in self.download.chunks():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except SlicerError:
                return  # the status is out: leave the body unfinished, and the client knows it is broken
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            return  # the client went away
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            self.download.cancel()
