"""Everything the sync and async clients share: configuration, request building, response parsing.

Nothing here does I/O. Each API call is described once as a ``Call`` (method, path, query, body and a parser);
the two clients only send it and hand the response back to the parser.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from pyslicer import __version__
from pyslicer.durations import format_go_duration
from pyslicer.errors import ConfigError, SlicerError

from .errors import SlicerAPIError, SlicerConnectionError, SlicerResponseError, SlicerTimeoutError
from .models import (
    AgentHealth,
    CreatedNode,
    DeleteResult,
    ExecFrame,
    ExecResult,
    HostGroup,
    LogsResult,
    Node,
    ServerInfo,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
UDS_BASE_URL = "http://localhost"

TimeoutArg = float | httpx.Timeout | None
EnvArg = Mapping[str, str] | Sequence[str] | None

# The daemon's codes for each status, for answers that carry none.
_STATUS_CODES = {
    400: "invalid_argument",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    408: "timeout",
    409: "conflict",
    410: "gone",
    500: "internal_error",
    501: "not_supported",
    503: "unavailable",
}
# Statuses that mean "this VM will never become ready by waiting"; anything else is worth polling through.
_FATAL_READY_STATUSES = frozenset({401, 403, 404})
_MAX_ERROR_TEXT = 500


# -- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    """What the caller configured, for messages."""
    base_url: str
    uds: str | None = None


def is_unix_socket(url: str) -> bool:
    url = url.strip()
    return url.startswith(("/", "./", "../", "~/", "unix://")) or url.endswith(".sock")


def resolve_endpoint(url: str | None) -> Endpoint:
    raw = (url if url is not None else os.environ.get("SLICER_URL", "")).strip() or DEFAULT_URL
    if is_unix_socket(raw):
        path = raw.removeprefix("unix://")
        if not path:
            raise ConfigError(f"invalid slicer URL {raw!r}: no socket path")
        return Endpoint(url=raw, base_url=UDS_BASE_URL, uds=os.path.expanduser(path))
    base = raw if "://" in raw else f"http://{raw}"
    try:
        parsed = httpx.URL(base)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"invalid slicer URL {raw!r}: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"invalid slicer URL {raw!r}: use http(s)://host:port or a unix socket path")
    return Endpoint(url=raw, base_url=base.rstrip("/"))


def read_token_file(path: str) -> str:
    file = Path(path).expanduser()
    try:
        token = file.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {str(file)!r}: {exc.strerror or exc}") from exc
    if not token:
        raise ConfigError(f"token file {str(file)!r} is empty")
    return token


def resolve_token(token: str | None, token_file: str | None) -> str | None:
    """Explicit arguments win over the environment; a token wins over a token file."""
    if token:
        return token.strip()
    if token_file:
        return read_token_file(token_file)
    env_token = os.environ.get("SLICER_TOKEN", "").strip()
    if env_token:
        return env_token
    env_file = os.environ.get("SLICER_TOKEN_FILE", "").strip()
    if env_file:
        return read_token_file(env_file)
    return None


def to_timeout(timeout: TimeoutArg) -> httpx.Timeout:
    return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)


# -- calls -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: tuple[tuple[str, str], ...] = ()
    json: Any = None
    check: bool = True
    """Raise ``SlicerAPIError`` on non-2xx before parsing; off when the parser judges the status itself."""
    long_running: bool = False
    """No read timeout: the server holds the response as long as the work takes (exec, create with wait)."""
    read_timeout: float | None = None
    """Cap on the read timeout, for requests made under a deadline."""


def seg(value: str) -> str:
    if not value:
        raise ValueError("empty path segment (hostname or group name)")
    return quote(value, safe="")


def _describe(response: httpx.Response) -> str:
    return f"{response.request.method} {response.request.url.path}"


def _json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content) if response.content else None
    except ValueError as exc:
        raise SlicerResponseError(f"{_describe(response)} answered with invalid JSON: {exc}") from exc


def _model(cls: type[M]) -> Callable[[httpx.Response], M]:
    def parse(response: httpx.Response) -> M:
        try:
            return cls.model_validate(_json(response))
        except ValidationError as exc:
            raise SlicerResponseError(f"unexpected answer to {_describe(response)}: {exc}") from exc

    return parse


def _model_list(cls: type[M]) -> Callable[[httpx.Response], list[M]]:
    adapter = TypeAdapter(list[cls])  # type: ignore[valid-type]

    def parse(response: httpx.Response) -> list[M]:
        body = _json(response)
        try:
            items: list[M] = adapter.validate_python([] if body is None else body)
        except ValidationError as exc:
            raise SlicerResponseError(f"unexpected answer to {_describe(response)}: {exc}") from exc
        return items

    return parse


def _text(response: httpx.Response) -> str:
    return response.text


def _healthz(response: httpx.Response) -> str:
    # The spec says text "OK", the reference page JSON {"status": "ok"}: accept both.
    try:
        body = json.loads(response.content)
    except ValueError:
        return response.text.strip().lower() or "ok"
    if isinstance(body, dict) and isinstance(body.get("status"), str):
        return str(body["status"])
    return "ok"


def _is_ready(response: httpx.Response) -> bool:
    if response.is_success:
        return True
    if response.status_code in _FATAL_READY_STATUSES:
        raise api_error(response)
    return False


def _list_params(tag: str | None, tag_prefix: str | None) -> tuple[tuple[str, str], ...]:
    params: list[tuple[str, str]] = []
    if tag:
        params.append(("tag", tag))
    if tag_prefix:
        params.append(("tag_prefix", tag_prefix))
    return tuple(params)


def info_call() -> Call[ServerInfo]:
    return Call("GET", "/info", _model(ServerInfo))


def healthz_call() -> Call[str]:
    return Call("GET", "/healthz", _healthz)


def host_groups_call() -> Call[list[HostGroup]]:
    return Call("GET", "/hostgroup", _model_list(HostGroup))


def nodes_call(tag: str | None, tag_prefix: str | None) -> Call[list[Node]]:
    return Call("GET", "/nodes", _model_list(Node), params=_list_params(tag, tag_prefix))


def group_nodes_call(group: str, tag: str | None, tag_prefix: str | None) -> Call[list[Node]]:
    return Call("GET", f"/hostgroup/{seg(group)}/nodes", _model_list(Node), params=_list_params(tag, tag_prefix))


def create_node_call(
    group: str,
    *,
    cpus: int | None,
    ram_bytes: int | None,
    userdata: str | None,
    tags: Sequence[str] | None,
    persistent: bool | None,
    hostname: str | None,
    ip: str | None,
    ssh_keys: Sequence[str] | None,
    import_user: str | None,
    secrets: Sequence[str] | None,
    wait: str | None,
    timeout: str | float | None,
) -> Call[CreatedNode]:
    if wait not in (None, "agent", "userdata"):
        raise ValueError(f"wait must be 'agent', 'userdata' or None, not {wait!r}")
    fields: dict[str, Any] = {
        "hostname": hostname,
        "ip": ip,
        "cpus": cpus,
        "ram_bytes": ram_bytes,
        "persistent": persistent,
        "userdata": userdata,
        "import_user": import_user,
        "tags": _str_list(tags, "tags"),
        "ssh_keys": _str_list(ssh_keys, "ssh_keys"),
        "secrets": _str_list(secrets, "secrets"),
    }
    body = {key: value for key, value in fields.items() if value is not None}
    params: list[tuple[str, str]] = []
    if wait:
        params.append(("wait", wait))
    if timeout is not None:
        params.append(("timeout", timeout if isinstance(timeout, str) else format_go_duration(timeout)))
    return Call(
        "POST",
        f"/hostgroup/{seg(group)}/nodes",
        _model(CreatedNode),
        params=tuple(params),
        json=body,
        long_running=wait is not None,
    )


def delete_node_call(group: str, hostname: str) -> Call[DeleteResult]:
    return Call("DELETE", f"/hostgroup/{seg(group)}/nodes/{seg(hostname)}", _model(DeleteResult))


def health_call(hostname: str, read_timeout: float | None = None) -> Call[AgentHealth]:
    return Call("GET", f"/vm/{seg(hostname)}/health", _model(AgentHealth), read_timeout=read_timeout)


def is_ready_call(hostname: str) -> Call[bool]:
    return Call("HEAD", f"/vm/{seg(hostname)}/health", _is_ready, check=False)


def logs_call(hostname: str, lines: int | None) -> Call[LogsResult]:
    params = (("lines", str(lines)),) if lines is not None else ()
    return Call("GET", f"/vm/{seg(hostname)}/logs", _model(LogsResult), params=params)


def metrics_call() -> Call[str]:
    return Call("GET", "/metrics", _text)


def _str_list(values: Sequence[str] | None, name: str) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of strings, not a string")
    return list(values)


def exec_params(
    cmd: str,
    args: Sequence[str],
    *,
    env: EnvArg,
    uid: int | None,
    gid: int | None,
    cwd: str | None,
    shell: str | None,
    stdin: bool,
    base64: bool,
    buffered: bool,
) -> tuple[tuple[str, str], ...]:
    if not cmd:
        raise ValueError("cmd must not be empty")
    params: list[tuple[str, str]] = [("cmd", cmd)]
    params += [("args", arg) for arg in _str_list(args, "args") or ()]
    if env is not None:
        pairs = (
            [f"{key}={value}" for key, value in env.items()]
            if isinstance(env, Mapping)
            else _str_list(env, "env") or []
        )
        params += [("env", pair) for pair in pairs]
    if uid is not None:
        params.append(("uid", str(uid)))
    if gid is not None:
        params.append(("gid", str(gid)))
    if cwd is not None:
        params.append(("cwd", cwd))
    if shell is not None:
        params.append(("shell", shell))
    if stdin:
        params.append(("stdin", "true"))
    params += [("stdout", "true"), ("stderr", "true")]
    if buffered:
        params.append(("buffered", "true"))
    if base64:
        params.append(("stdio", "base64"))
    return tuple(params)


def _no_parse(response: httpx.Response) -> None:
    return None


def exec_stream_call(hostname: str, params: tuple[tuple[str, str], ...]) -> Call[None]:
    """The request half of a streaming exec; the clients read the NDJSON body themselves."""
    return Call("POST", f"/vm/{seg(hostname)}/exec", _no_parse, params=params, long_running=True)


def exec_buffered_call(hostname: str, params: tuple[tuple[str, str], ...]) -> Call[ExecResult]:
    return Call("POST", f"/vm/{seg(hostname)}/exec", parse_exec_result, params=params, long_running=True)


# -- responses -------------------------------------------------------------------------------------


def api_error(response: httpx.Response) -> SlicerAPIError:
    """The error for a non-2xx response whose body has been read."""
    status = response.status_code
    message = ""
    code: str | None = None
    try:
        body = json.loads(response.content) if response.content else None
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]:
        message = body["error"]
        if isinstance(body.get("code"), str) and body["code"]:
            code = body["code"]
    else:
        message = response.text.strip()
        if len(message) > _MAX_ERROR_TEXT:
            message = message[:_MAX_ERROR_TEXT] + "..."
    if not message:
        message = f"HTTP {status} {response.reason_phrase}".strip()
    return SlicerAPIError(
        message,
        status=status,
        code=code or _STATUS_CODES.get(status, "http_error"),
        method=response.request.method,
        url=str(response.request.url),
    )


def finish(call: Call[T], response: httpx.Response) -> T:
    if call.check and response.is_error:
        raise api_error(response)
    return call.parse(response)


def connection_error(endpoint: Endpoint, exc: httpx.TransportError) -> SlicerConnectionError:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        return SlicerConnectionError(f"cannot reach slicer at {endpoint.url}: connection timed out")
    if isinstance(exc, (httpx.ConnectError, httpx.UnsupportedProtocol)):
        return SlicerConnectionError(f"cannot reach slicer at {endpoint.url}: {reason}")
    if isinstance(exc, httpx.TimeoutException):
        return SlicerConnectionError(f"slicer at {endpoint.url} did not answer in time ({type(exc).__name__})")
    return SlicerConnectionError(f"connection to slicer at {endpoint.url} failed: {reason}")


def _decode_output(value: Any, encoding: Any, what: str) -> bytes:
    if value is None or value == "":
        return b""
    if not isinstance(value, str):
        raise SlicerResponseError(f"exec {what} is not a string: {value!r}")
    if encoding == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SlicerResponseError(f"exec {what} is not valid base64: {exc}") from exc
    return value.encode("utf-8", "replace")


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_exec_result(response: httpx.Response) -> ExecResult:
    body = _json(response)
    if not isinstance(body, dict):
        raise SlicerResponseError(f"unexpected answer to {_describe(response)}: {body!r}")
    encoding = body.get("encoding")
    return ExecResult(
        stdout=_decode_output(body.get("stdout"), encoding, "stdout"),
        stderr=_decode_output(body.get("stderr"), encoding, "stderr"),
        exit_code=_int(body.get("exit_code")) or 0,
        error=str(body["error"]) if body.get("error") else None,
    )


class FrameDecoder:
    """Turns NDJSON exec lines into ``ExecFrame``s, typed or legacy.

    Legacy (untyped) frames mix stdout, stderr and exit_code on one object; the exit code is whatever the
    last frame said, so the decoder emits the ``exit`` frame itself when the stream ends.
    """

    __slots__ = ("_ended", "_legacy", "_legacy_exit", "_seen_any")

    def __init__(self) -> None:
        self._ended = False
        self._legacy = False
        self._legacy_exit = 0
        self._seen_any = False

    def feed(self, line: str) -> list[ExecFrame]:
        line = line.strip()
        if not line:
            return []
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise SlicerResponseError(f"invalid exec frame {line[:200]!r}: {exc}") from exc
        if not isinstance(obj, dict):
            raise SlicerResponseError(f"invalid exec frame {line[:200]!r}")
        self._seen_any = True
        kind = obj.get("type")
        if isinstance(kind, str) and kind:
            return self._typed(kind, obj)
        return self._untyped(obj)

    def finish(self) -> list[ExecFrame]:
        if self._ended:
            return []
        self._ended = True
        if self._legacy:
            return [ExecFrame("exit", exit_code=self._legacy_exit)]
        what = "without an exit frame" if self._seen_any else "without any frames"
        return [ExecFrame("error", error=f"exec stream ended {what}")]

    def _typed(self, kind: str, obj: dict[str, Any]) -> list[ExecFrame]:
        encoding = obj.get("encoding")
        stamp = _timestamp(obj.get("timestamp"))
        if obj.get("error"):
            self._ended = True
            return [
                ExecFrame(
                    "error",
                    error=str(obj["error"]),
                    exit_code=_int(obj.get("exit_code")),
                    pid=_int(obj.get("pid")),
                    ended_at=_timestamp(obj.get("ended_at")),
                    timestamp=stamp,
                )
            ]
        if kind in ("stdout", "stderr"):
            raw = obj.get("data")
            if raw is None:
                raw = obj.get(kind)
            data = _decode_output(raw, encoding, kind)
            return [ExecFrame("stdout" if kind == "stdout" else "stderr", data=data, timestamp=stamp)]
        if kind == "started":
            return [
                ExecFrame(
                    "started",
                    pid=_int(obj.get("pid")),
                    started_at=_timestamp(obj.get("started_at")),
                    timestamp=stamp,
                )
            ]
        if kind == "exit":
            self._ended = True
            return [
                ExecFrame(
                    "exit",
                    exit_code=_int(obj.get("exit_code")) or 0,
                    signal=str(obj["signal"]) if obj.get("signal") else None,
                    pid=_int(obj.get("pid")),
                    ended_at=_timestamp(obj.get("ended_at")),
                    timestamp=stamp,
                )
            ]
        return []  # a frame type this client doesn't know yet

    def _untyped(self, obj: dict[str, Any]) -> list[ExecFrame]:
        self._legacy = True
        encoding = obj.get("encoding")
        stamp = _timestamp(obj.get("timestamp"))
        frames: list[ExecFrame] = []
        stdout = _decode_output(obj.get("stdout"), encoding, "stdout")
        if stdout:
            frames.append(ExecFrame("stdout", data=stdout, timestamp=stamp))
        stderr = _decode_output(obj.get("stderr"), encoding, "stderr")
        if stderr:
            frames.append(ExecFrame("stderr", data=stderr, timestamp=stamp))
        code = _int(obj.get("exit_code"))
        if obj.get("error"):
            self._ended = True
            frames.append(ExecFrame("error", error=str(obj["error"]), exit_code=code, timestamp=stamp))
        elif code is not None:
            self._legacy_exit = code
        return frames


# -- readiness polling -----------------------------------------------------------------------------


@dataclass(slots=True)
class ReadyPoll:
    """The clock and verdicts of ``wait_ready``; the clients supply the requests and the sleeping."""

    hostname: str
    timeout: float
    userdata: bool
    interval: float = 0.1
    max_interval: float = 1.0
    deadline: float = 0.0
    last: str | None = None

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.timeout

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def ready(self, health: AgentHealth) -> bool:
        if not health.agent_up:
            self.last = "agent not up yet"
            return False
        if self.userdata and not health.userdata_ran:
            self.last = "userdata has not finished"
            return False
        return True

    def failed(self, exc: SlicerError) -> None:
        """Re-raise errors that waiting cannot fix; remember the rest for the timeout message."""
        if isinstance(exc, SlicerAPIError) and exc.status in _FATAL_READY_STATUSES:
            raise exc
        if isinstance(exc, SlicerConnectionError):
            raise exc
        self.last = exc.message

    def next_delay(self) -> float:
        remaining = self.remaining()
        if remaining <= 0:
            detail = f" ({self.last})" if self.last else ""
            what = "agent and userdata" if self.userdata else "agent"
            raise SlicerTimeoutError(
                f"{self.hostname}: {what} not ready after {format_go_duration(self.timeout)}{detail}"
            )
        delay = min(self.interval, remaining)
        self.interval = min(self.interval * 2, self.max_interval)
        return delay


# -- the shared client state -----------------------------------------------------------------------


class BaseClient:
    """Configuration and request building common to ``SlicerClient`` and ``AsyncSlicerClient``."""

    def __init__(
        self,
        url: str | None,
        token: str | None,
        token_file: str | None,
        timeout: TimeoutArg,
    ) -> None:
        self._endpoint = resolve_endpoint(url)
        self._timeout = to_timeout(timeout)
        self._headers = {"User-Agent": f"pyslicer/{__version__}"}
        resolved = resolve_token(token, token_file)
        if resolved:
            self._headers["Authorization"] = f"Bearer {resolved}"

    @property
    def url(self) -> str:
        """The URL or socket path this client talks to, as configured."""
        return self._endpoint.url

    @property
    def base_url(self) -> str:
        return self._endpoint.base_url

    @property
    def socket_path(self) -> str | None:
        return self._endpoint.uds

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self._endpoint.url!r})"

    def _timeout_for(self, call: Call[Any]) -> httpx.Timeout:
        base = self._timeout
        if call.long_running:
            return httpx.Timeout(connect=base.connect, read=None, write=None, pool=base.pool)
        if call.read_timeout is not None:
            read = call.read_timeout if base.read is None else min(base.read, call.read_timeout)
            return httpx.Timeout(connect=base.connect, read=read, write=base.write, pool=base.pool)
        return base

    def _build(
        self,
        http: httpx.Client | httpx.AsyncClient,
        call: Call[Any],
        content: bytes | Iterable[bytes] | AsyncIterable[bytes] | None = None,
    ) -> httpx.Request:
        return http.build_request(
            call.method,
            call.path,
            params=list(call.params) or None,
            json=call.json,
            content=content,
            timeout=self._timeout_for(call),
        )

    def _connection_error(self, exc: httpx.TransportError) -> SlicerConnectionError:
        return connection_error(self._endpoint, exc)
