"""Python client for the Slicer REST API: ``SlicerClient``, and ``AsyncSlicerClient`` for asyncio.

Both have the same constructor and methods (the blocking one is generated from the asyncio one), return the
types of ``pyslicer.client.models`` and raise the errors of ``pyslicer.client.errors``.

The names below are imported on first use, so that ``import pyslicer.client`` costs nothing, a blocking client
never imports asyncio, and running commands never imports pydantic; ``from pyslicer.client import SlicerClient``
works as usual.

Modules (all private but ``models`` and ``errors``)::

    _async.py          AsyncSlicerClient: builds each Call, sends it, hands the answer back (the source)
    _sync.py           SlicerClient: generated from _async.py by scripts/unasync.py
    _base_client.py    BaseClient: what both hold (endpoint, timeouts, headers); Call -> httpx.Request
    _config.py         the endpoint (URL or unix socket) and the token: no httpx
    _calls.py          every API call as a sans-IO Call: method, path, query, body, parser
    _responses.py      parsers and the error mapping: an answer -> a result or a SlicerAPIError
    _exec_output.py    ExecFrame, ExecResult and the NDJSON exec frame decoder (stdlib only)
    _fs_watch.py       WatchEvent and the server-sent-events decoder of fs/watch (stdlib only)
    _websocket.py      what the WebSocket sessions share: URLs, headers, handshake and close errors
    _shell_async.py    AsyncShell over /vm/{h}/shell (websockets)     (_shell.py: its blocking twin)
    _forward_spec.py   -L specs for forward (stdlib only)
    _forward_async.py  AsyncForwardStream, AsyncForwarder over /vm/{h}/forward (_forward.py: its twin)
    _readiness.py      wait_ready's clock and verdicts
    _stdin.py          what a blocking exec sends as stdin      (_stdin_async.py: its asyncio twin)
    _exchange.py       one full-duplex HTTP/1.1 exchange on a socket, with h11 and no httpx
    _duplex.py         the full-duplex httpx transport for stdin (_duplex_async.py: its asyncio twin)
    _socket_exec.py    SocketExecClient: exec alone over _exchange, without httpx (the CLI's vm exec)
    models.py          the API's resources (pydantic), and the exec types again
    errors.py          SlicerAPIError, SlicerConnectionError, SlicerResponseError, SlicerTimeoutError

Imports go one way, down this list's dependencies: the clients -> _base_client, _calls -> _responses ->
_exec_output -> errors; nothing imports a client, and only the clients, _base_client and the duplex transports
import httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._async import AsyncSlicerClient
    from ._background_logs import LogFrame
    from ._base_client import DEFAULT_TIMEOUT
    from ._config import DEFAULT_URL, is_unix_socket
    from ._exec_output import ExecFrame, ExecResult, FrameType
    from ._forward import Forwarder, ForwardStream
    from ._forward_async import AsyncForwarder, AsyncForwardStream
    from ._forward_spec import ForwardSpec, Listener, parse_forward_spec
    from ._fs_watch import WatchEvent
    from ._shell import Shell
    from ._shell_async import AsyncShell
    from ._sync import SlicerClient
    from .errors import (
        SlicerAPIError,
        SlicerConnectionError,
        SlicerResponseError,
        SlicerTimeoutError,
        SlicerUpstreamError,
    )
    from .models import (
        AgentHealth,
        BackgroundExec,
        BackgroundExecInfo,
        BackgroundExit,
        BackgroundKill,
        CreatedNode,
        DeleteResult,
        FsEntry,
        HostGroup,
        HostStats,
        LifecycleResult,
        LogsResult,
        NetworkDescription,
        NetworkPolicy,
        Node,
        NodeDescription,
        NodeStats,
        Secret,
        ServerInfo,
        StatsSnapshot,
        VMTags,
    )

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "AgentHealth",
    "AsyncForwardStream",
    "AsyncForwarder",
    "AsyncShell",
    "AsyncSlicerClient",
    "BackgroundExec",
    "BackgroundExecInfo",
    "BackgroundExit",
    "BackgroundKill",
    "Commit",
    "CommitDeleted",
    "CommitInfo",
    "CreatedNode",
    "DeleteResult",
    "ExecFrame",
    "ExecResult",
    "ForkResult",
    "ForwardSpec",
    "ForwardStream",
    "Forwarder",
    "FrameType",
    "FsEntry",
    "HostGroup",
    "HostStats",
    "LifecycleResult",
    "Listener",
    "LogFrame",
    "LogsResult",
    "NetworkDescription",
    "NetworkPolicy",
    "Node",
    "NodeDescription",
    "NodeStats",
    "Secret",
    "ServerInfo",
    "Shell",
    "SlicerAPIError",
    "SlicerClient",
    "SlicerConnectionError",
    "SlicerResponseError",
    "SlicerTimeoutError",
    "SlicerUpstreamError",
    "StatsSnapshot",
    "VMTags",
    "WatchEvent",
    "is_unix_socket",
    "parse_forward_spec",
]

_MODULES = {
    "AsyncSlicerClient": "._async",
    "SlicerClient": "._sync",
    "DEFAULT_TIMEOUT": "._base_client",
    "DEFAULT_URL": "._config",
    "is_unix_socket": "._config",
    "ExecFrame": "._exec_output",
    "ExecResult": "._exec_output",
    "FrameType": "._exec_output",
    "WatchEvent": "._fs_watch",
    "Shell": "._shell",
    "AsyncShell": "._shell_async",
    "ForwardStream": "._forward",
    "Forwarder": "._forward",
    "AsyncForwardStream": "._forward_async",
    "AsyncForwarder": "._forward_async",
    "Listener": "._forward_spec",
    "ForwardSpec": "._forward_spec",
    "parse_forward_spec": "._forward_spec",
    "SlicerAPIError": ".errors",
    "SlicerConnectionError": ".errors",
    "SlicerResponseError": ".errors",
    "SlicerTimeoutError": ".errors",
    "SlicerUpstreamError": ".errors",
    "AgentHealth": ".models",
    "BackgroundExec": ".models",
    "BackgroundExecInfo": ".models",
    "BackgroundExit": ".models",
    "BackgroundKill": ".models",
    "Commit": ".models",
    "CommitDeleted": ".models",
    "CommitInfo": ".models",
    "ForkResult": ".models",
    "LogFrame": "._background_logs",
    "CreatedNode": ".models",
    "DeleteResult": ".models",
    "LifecycleResult": ".models",
    "FsEntry": ".models",
    "HostGroup": ".models",
    "HostStats": ".models",
    "LogsResult": ".models",
    "NetworkDescription": ".models",
    "NetworkPolicy": ".models",
    "Node": ".models",
    "NodeStats": ".models",
    "StatsSnapshot": ".models",
    "NodeDescription": ".models",
    "Secret": ".models",
    "ServerInfo": ".models",
    "VMTags": ".models",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
