"""Copies: a validated request in; an upload fed chunk by chunk, or a download iterated chunk by chunk.

The guest's agent does the work (``copy_in``/``copy_out`` streams, docs/protocol.md): placement, temporary
files, tar. Bytes go to the guest under its credit (``AgentStream.write``) and come back under the credit
granted as the consumer asks for the next chunk, so memory stays bounded both ways. What the guest answers is
rebuilt from the fields we know.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from pyslicer.daemon.agent_link import AgentStream, Message, Output, OutputEnd
from pyslicer.daemon.exec import Flag, UserId
from pyslicer.daemon.guest_input import int_or, str_or
from pyslicer.errors import AgentError, InsufficientStorage, InvalidArgument, NotFound, PermissionDenied, SlicerError
from pyslicer.protocol import Event, Op

if TYPE_CHECKING:
    from pyslicer.protocol.messages import CopyInRequest as WireCopyIn
    from pyslicer.protocol.messages import CopyOutRequest as WireCopyOut

UPLOAD_MODES = ("binary", "tar", "cp-v1-binary", "cp-v1-tar")
DOWNLOAD_MODES = ("binary", "tar", "cp-v1-binary", "cp-v1-tar", "cp-v1-recursive")
SOURCE_TIMEOUT = 30.0  # the agent only stats the path before it answers
FILE_MODE = re.compile(r"0?[0-7]{3,4}")


def valid_source_name(name: str) -> bool:
    """The Go SDK's validCopySourceName (or "" for a contents-only path): a name the host can put under a
    local directory without leaving it."""
    if name == "":
        return True
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return name not in (".", "..") and not any(c in name for c in "/\\\0")


def _mode_in(allowed: tuple[str, ...]) -> Any:
    def check(value: Any) -> Any:
        if value in (None, ""):
            return "binary"  # absent means binary
        if value not in allowed:
            raise PydanticCustomError("invalid_mode", "invalid mode: {mode}", {"mode": value})
        return value

    return BeforeValidator(check)


def _octal(value: Any) -> Any:
    if value in (None, ""):
        return None
    text = str(value).strip()
    try:
        mode = int(text, 8)
    except ValueError:
        raise PydanticCustomError(
            "invalid_permissions", "{value} is not an octal mode like 0644", {"value": text}
        ) from None
    if not 0 <= mode <= 0o7777:
        raise PydanticCustomError("invalid_permissions", "{value} is not an octal mode like 0644", {"value": text})
    return mode


def _path(value: Any) -> Any:
    if value == "" or (isinstance(value, str) and "\0" in value):
        raise PydanticCustomError("invalid_path", "a guest path is required")
    return value


GuestPath = Annotated[str, BeforeValidator(_path), Field(description="absolute, ~/..., or relative to the home")]
Excludes = Annotated[list[str], Field(default_factory=list, description="patterns to leave out, repeated")]


class CopyInRequest(BaseModel):
    """An upload: where, what the bytes are (a file or a tar), and who owns the result."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    path: GuestPath
    mode: Annotated[str, _mode_in(UPLOAD_MODES), Field(description="binary, tar, cp-v1-binary or cp-v1-tar")] = "binary"
    copy_semantics: str | None = Field(default=None, description="cp-v1 (with the cp-v1-* modes)")
    source_name: str | None = Field(default=None, description="cp-v1: the name of what is copied")
    source_type: Literal["file", "directory"] | None = Field(default=None, description="cp-v1: file or directory")
    copy_contents: Flag = Field(default=False, description="cp-v1: copy a directory's contents, not itself")
    exclude: Excludes
    uid: UserId = None
    gid: UserId = None
    permissions: Annotated[int | None, BeforeValidator(_octal), Field(description="octal file mode, e.g. 0644")] = None
    unpacked_size: int | None = Field(default=None, ge=0, description="bytes the upload will take on disk")

    @field_validator("copy_semantics")
    @classmethod
    def _known_semantics(cls, value: str | None) -> str | None:
        if value not in (None, "", "cp-v1"):
            raise PydanticCustomError("invalid_semantics", "unknown copy_semantics {value}", {"value": value})
        return value

    @property
    def cp_v1(self) -> bool:
        return self.mode.startswith("cp-v1-")

    def to_wire(self) -> WireCopyIn:
        wire: WireCopyIn = {
            "op": Op.COPY_IN,
            "path": self.path,
            "mode": "tar" if self.mode.endswith("tar") else "binary",
            "cp_v1": self.cp_v1,
            "exclude": list(self.exclude),
            "uid": self.uid,
            "gid": self.gid,
            "permissions": self.permissions,
            "unpacked_size": self.unpacked_size,
        }
        if self.cp_v1:  # the source_* fields mean something only with the cp-v1 modes
            wire["source_name"] = self.source_name or ""
            wire["source_type"] = self.source_type or ("directory" if wire["mode"] == "tar" else "file")
            wire["copy_contents"] = self.copy_contents
        return wire


class CopyOutRequest(BaseModel):
    """A download: a file's bytes or a directory as tar, chosen by ``mode`` (absent: binary)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    path: GuestPath
    mode: Annotated[
        str,
        _mode_in(DOWNLOAD_MODES),
        Field(description="binary (default), tar, cp-v1-binary, cp-v1-tar or cp-v1-recursive"),
    ] = "binary"
    copy_semantics: str | None = Field(default=None, description="cp-v1 (with the cp-v1-* modes)")
    exclude: Excludes

    @property
    def cp_v1(self) -> bool:
        return self.mode.startswith("cp-v1-")

    def to_wire(self) -> WireCopyOut:
        mode: Literal["binary", "tar", "recursive"] = (
            "recursive" if self.mode.endswith("recursive") else "tar" if self.mode.endswith("tar") else "binary"
        )
        return {"op": Op.COPY_OUT, "path": self.path, "mode": mode, "cp_v1": self.cp_v1, "exclude": list(self.exclude)}


# -- answers ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CopyResult:
    path: str  # where the upload landed in the guest
    size: int  # bytes of file data written


@dataclass(frozen=True, slots=True)
class CopySource:
    source_type: Literal["file", "directory"]  # directory: the bytes are a tar of its contents
    name: str  # "" for a contents-only path (dir/., /)
    file_mode: str  # "0644"
    size: int  # a file's exact size; 0 for a tree


def copy_error(body: dict[str, Any]) -> SlicerError:
    """The agent's ``CopyError`` in the daemon's terms."""
    message = str_or(body.get("error"), "the copy failed")
    code = body.get("code")
    if code == "path_not_found":
        return NotFound(message, code="path_not_found")
    if code == "no_space":
        return InsufficientStorage(message)
    if code == "permission_denied":
        return PermissionDenied(message, code="permission_denied")
    if code in ("not_a_file", "not_a_directory", "invalid_path", "invalid_tar"):
        return InvalidArgument(message, code=code)
    if code == "unsafe_entry":
        return InvalidArgument(message, code="unsafe_tar_entry")
    return AgentError(message, code="copy_failed")


class CopyUpload:
    """Bytes going into the guest: ``write`` each chunk, then ``finish``; ``cancel`` leaves nothing behind.

    The guest may refuse before it has everything (no space, a bad path): ``refused`` turns true, later writes
    are dropped, and ``finish`` raises the reason."""

    def __init__(self, stream: AgentStream) -> None:
        self._stream = stream

    @property
    def refused(self) -> bool:
        return self._stream.closed

    async def write(self, data: bytes) -> None:
        await self._stream.write(data)

    async def finish(self) -> CopyResult:
        """No more bytes: wait until everything is in place. Raises the copy's error (InvalidArgument,
        NotFound, PermissionDenied, InsufficientStorage), or AgentError when the agent is lost."""
        self._stream.close_input()
        try:
            async for event in self._stream:
                if isinstance(event, Message):
                    kind = event.body.get("type")
                    if kind == Event.DONE:
                        return CopyResult(
                            path=str_or(event.body.get("path"), ""), size=max(0, int_or(event.body.get("size"), 0))
                        )
                    if kind == Event.ERROR:
                        raise copy_error(event.body)
        finally:
            self._stream.cancel()
        raise AgentError("the agent ended the copy without an answer", code="copy_failed")

    def cancel(self) -> None:
        self._stream.cancel()


class CopyDownload:
    """Bytes coming out of the guest: ``source`` says what they are; iterate ``chunks()`` once.

    Iteration raises the copy's error (or AgentError) when the guest cuts the stream short."""

    def __init__(self, stream: AgentStream, source: CopySource) -> None:
        self._stream = stream
        self.source = source

    @classmethod
    async def open(cls, stream: AgentStream) -> CopyDownload:
        """Wait for the guest to say what it sends. Raises NotFound for a missing path, InvalidArgument
        for one the mode cannot send, AgentError when the agent does not answer."""
        try:
            async with asyncio.timeout(SOURCE_TIMEOUT):
                async for event in stream:
                    if isinstance(event, Message):
                        body = event.body
                        if body.get("type") == Event.ERROR:
                            raise copy_error(body)
                        if body.get("type") == Event.SOURCE:
                            kind: Literal["file", "directory"] = (
                                "directory" if body.get("source_type") == "directory" else "file"
                            )
                            name = str_or(body.get("name"), "")
                            file_mode = str_or(body.get("file_mode"), "0644")
                            if not valid_source_name(name) or not FILE_MODE.fullmatch(file_mode):
                                raise AgentError(
                                    f"the guest named its source {name!r} with mode {file_mode!r}",
                                    code="invalid_guest_answer",
                                )
                            return cls(
                                stream,
                                CopySource(
                                    source_type=kind,
                                    name=name,
                                    file_mode=file_mode,
                                    size=max(0, int_or(body.get("size"), 0)),
                                ),
                            )
                    raise AgentError("the agent sent data before saying what it is", code="copy_failed")
        except TimeoutError:
            stream.cancel()
            raise AgentError("the agent did not answer the copy", code="copy_failed") from None
        except BaseException:
            stream.cancel()
            raise
        raise AgentError("the agent ended the copy without an answer", code="copy_failed")

    async def chunks(self) -> AsyncIterator[bytes]:
        ended = False
        try:
            async for event in self._stream:
                if isinstance(event, Output):
                    yield event.data
                    self._stream.consumed(len(event.data))  # delivered: the guest may send more
                elif isinstance(event, OutputEnd):
                    ended = True
                elif isinstance(event, Message):
                    if event.body.get("type") == Event.ERROR:
                        raise copy_error(event.body)
                    if event.body.get("type") == Event.DONE and ended:
                        return
        finally:
            self._stream.cancel()
        raise AgentError("the agent ended the copy before it was complete", code="copy_failed")

    def cancel(self) -> None:
        self._stream.cancel()
