"""Python client for the Slicer REST API (``SlicerClient``, and ``AsyncSlicerClient`` for asyncio)."""

from ._async import AsyncSlicerClient
from ._base import DEFAULT_TIMEOUT, DEFAULT_URL, is_unix_socket
from ._sync import SlicerClient
from .errors import SlicerAPIError, SlicerConnectionError, SlicerResponseError, SlicerTimeoutError
from .models import (
    AgentHealth,
    CreatedNode,
    DeleteResult,
    ExecFrame,
    ExecResult,
    FrameType,
    HostGroup,
    LogsResult,
    Node,
    ServerInfo,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "AgentHealth",
    "AsyncSlicerClient",
    "CreatedNode",
    "DeleteResult",
    "ExecFrame",
    "ExecResult",
    "FrameType",
    "HostGroup",
    "LogsResult",
    "Node",
    "ServerInfo",
    "SlicerAPIError",
    "SlicerClient",
    "SlicerConnectionError",
    "SlicerResponseError",
    "SlicerTimeoutError",
    "is_unix_socket",
]
