"""Every API call, described once and sans I/O: a ``Call`` holds the method, path, query, body, timeouts and the
parser of the answer; the sync and async clients only send it and hand the response to ``Call.finish``.

Arguments are checked here, when the call is built, so both clients raise the same errors before sending.
"""

from __future__ import annotations

import base64 as b64
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar
from urllib.parse import quote

from pyslicer.durations import format_go_duration

from . import _responses as responses

if TYPE_CHECKING:
    import httpx

    from ._exec_output import ExecResult
    from .models import (
        AgentHealth,
        BackgroundExec,
        BackgroundExecInfo,
        BackgroundExit,
        BackgroundKill,
        Commit,
        CommitDeleted,
        CommitInfo,
        CreatedNode,
        DeleteResult,
        ForkResult,
        FsEntry,
        HostGroup,
        LifecycleResult,
        LogsResult,
        Node,
        NodeDescription,
        NodeStats,
        Secret,
        ServerInfo,
        VMTags,
    )

T = TypeVar("T")

EnvArg = Mapping[str, str] | Sequence[str] | None
ExecParams = tuple[tuple[str, str], ...]


class Call(NamedTuple, Generic[T]):
    """One request and how to read its answer. (A named tuple, not a dataclass: it is made on every start of
    the CLI, where a dataclass costs a millisecond.)"""

    method: str
    path: str
    parse: responses.Parser[T]
    params: tuple[tuple[str, str], ...] = ()
    json: Any = None
    check: bool = True
    """Raise ``SlicerAPIError`` on non-2xx before parsing; off when the parser judges the status itself."""
    long_running: bool = False
    """No read timeout: the server holds the response as long as the work takes (exec, create with wait)."""
    read_timeout: float | None = None
    """Cap on the read timeout, for requests made under a deadline."""

    def finish(self, response: httpx.Response) -> T:
        """The result of a response whose body has been read, or the ``SlicerAPIError`` it stands for."""
        if self.check and response.is_error:
            raise responses.api_error(response)
        return self.parse(response)


def seg(value: str) -> str:
    """One path segment (a hostname or group name), escaped."""
    if not value:
        raise ValueError("empty path segment (hostname or group name)")
    return quote(value, safe="")


def _str_list(values: Sequence[str] | None, name: str) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of strings, not a string")
    return list(values)


def _list_params(tag: str | None, tag_prefix: str | None) -> tuple[tuple[str, str], ...]:
    params: list[tuple[str, str]] = []
    if tag:
        params.append(("tag", tag))
    if tag_prefix:
        params.append(("tag_prefix", tag_prefix))
    return tuple(params)


# -- the daemon ------------------------------------------------------------------------------------


def info_call() -> Call[ServerInfo]:
    return Call("GET", "/info", responses.resource("ServerInfo"))


def healthz_call() -> Call[str]:
    return Call("GET", "/healthz", responses.healthz)


def metrics_call() -> Call[str]:
    return Call("GET", "/metrics", responses.text)


# -- host groups and nodes -------------------------------------------------------------------------


def host_groups_call() -> Call[list[HostGroup]]:
    return Call("GET", "/hostgroup", responses.resource_list("HostGroup"))


def nodes_call(tag: str | None, tag_prefix: str | None) -> Call[list[Node]]:
    return Call("GET", "/nodes", responses.resource_list("Node"), params=_list_params(tag, tag_prefix))


def group_nodes_call(group: str, tag: str | None, tag_prefix: str | None) -> Call[list[Node]]:
    return Call(
        "GET", f"/hostgroup/{seg(group)}/nodes", responses.resource_list("Node"), params=_list_params(tag, tag_prefix)
    )


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
    ttl: str | float | None,
    wait: str | None,
    timeout: str | float | None,
) -> Call[CreatedNode]:
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
        "ttl": _duration_text(ttl, "ttl"),
    }
    body = {key: value for key, value in fields.items() if value is not None}
    return Call(
        "POST",
        f"/hostgroup/{seg(group)}/nodes",
        responses.resource("CreatedNode"),
        params=_wait_params(wait, timeout),
        json=body,
        long_running=wait is not None,
    )


def node_stats_call() -> Call[list[NodeStats]]:
    return Call("GET", "/nodes/stats", responses.resource_list("NodeStats"))


def _wait_params(wait: str | None, timeout: str | float | None) -> tuple[tuple[str, str], ...]:
    if wait not in (None, "agent", "userdata"):
        raise ValueError(f"wait must be 'agent', 'userdata' or None, not {wait!r}")
    params: list[tuple[str, str]] = []
    if wait:
        params.append(("wait", wait))
    if timeout is not None:
        params.append(("timeout", timeout if isinstance(timeout, str) else format_go_duration(timeout)))
    return tuple(params)


def delete_node_call(group: str, hostname: str) -> Call[DeleteResult]:
    return Call("DELETE", f"/hostgroup/{seg(group)}/nodes/{seg(hostname)}", responses.resource("DeleteResult"))


# -- one VM's lifecycle ----------------------------------------------------------------------------


def lifecycle_call(hostname: str, action: str) -> Call[LifecycleResult]:
    """``pause``, ``resume``, ``suspend`` or ``shutdown`` (answered once the VM has stopped, or its state is
    saved: no read timeout)."""
    return Call(
        "POST",
        f"/vm/{seg(hostname)}/{action}",
        responses.lifecycle_result,
        params=(("action", "shutdown"),) if action == "shutdown" else (),
        long_running=action in ("shutdown", "suspend"),
    )


def restore_call(hostname: str, wait: str | None, timeout: str | float | None) -> Call[LifecycleResult]:
    return Call(
        "POST",
        f"/vm/{seg(hostname)}/restore",
        responses.lifecycle_result,
        params=_wait_params(wait, timeout),
        long_running=True,
    )


def relaunch_call(hostname: str, wait: str | None, timeout: str | float | None) -> Call[CreatedNode]:
    return Call(
        "POST",
        f"/vm/{seg(hostname)}/relaunch",
        responses.resource("CreatedNode"),
        params=_wait_params(wait, timeout),
        long_running=True,
    )


# -- commits and forks -----------------------------------------------------------------------------

FIXUPS = ("hostname", "machine-id", "ssh-host-keys")


def commit_id_seg(commit_id: str) -> str:
    """A commit id as a path segment; Slicer's rule: never empty, never with ``/``, ``\\``, ``..`` or NUL."""
    commit_id = commit_id.strip()
    if not commit_id or any(bad in commit_id for bad in ("/", "\\", "..", "\x00")):
        raise ValueError(f"invalid commit id {commit_id!r}")
    return seg(commit_id)


def commit_call(
    hostname: str, tags: Sequence[str] | None, labels: Mapping[str, str] | None, cache_key: str | None
) -> Call[Commit]:
    body: dict[str, Any] = {}
    if tags:
        body["tags"] = _str_list(tags, "tags")
    if labels:
        body["labels"] = dict(labels)
    if cache_key and cache_key.strip():
        body["cache_key"] = cache_key.strip()
    return Call("POST", f"/vm/{seg(hostname)}/commit", responses.resource("Commit"), json=body or None)


def commits_call(
    tags: Sequence[str] | None, cache_key: str | None, source: str | None, mode: str | None
) -> Call[list[CommitInfo]]:
    params = [("tag", tag.strip()) for tag in _str_list(tags, "tags") or () if tag.strip()]
    for name, value in (("cache_key", cache_key), ("source", source), ("mode", mode)):
        if value and value.strip():
            params.append((name, value.strip()))
    return Call("GET", "/vm/commits", responses.resource_list("CommitInfo"), params=tuple(params))


def delete_commit_call(commit_id: str) -> Call[CommitDeleted]:
    return Call("DELETE", f"/vm/commits/{commit_id_seg(commit_id)}", responses.resource("CommitDeleted"))


def fork_call(
    commit_id: str,
    *,
    wait: str | None,
    timeout: str | float | None,
    allow: Sequence[str] | None,
    drop: Sequence[str] | None,
    tags: Sequence[str] | None,
    replace_tags: bool,
    secrets: Sequence[str] | None,
    persistent: bool | None,
    fixups: Sequence[str] | None,
    vcpu: int | None,
    ram_bytes: int | None,
) -> Call[ForkResult]:
    if wait not in (None, "agent", "none"):
        raise ValueError(f"wait must be 'agent', 'none' or None (agent), not {wait!r}")
    params: list[tuple[str, str]] = [("wait", wait or "agent")]
    if timeout is not None:
        params.append(("timeout", timeout if isinstance(timeout, str) else format_go_duration(timeout)))
    body: dict[str, Any] = {}
    network = {
        name: _str_list(values, name) for name, values in (("allow", allow), ("drop", drop)) if values is not None
    }
    if network:
        body["network"] = network
    if tags is not None:
        body["tags"] = _str_list(tags, "tags")
    if replace_tags:
        body["tag_mode"] = "replace"
    if secrets is not None:
        body["secrets"] = _str_list(secrets, "secrets")
    if persistent is not None:
        body["persistent"] = persistent
    if fixups is not None:
        chosen = _str_list(fixups, "fixups") or []
        unknown = [fixup for fixup in chosen if fixup not in FIXUPS]
        if unknown:
            raise ValueError(f"fixups: {', '.join(unknown)} not among {', '.join(FIXUPS)}")
        body["fixups"] = chosen
    if vcpu:
        body["vcpu"] = vcpu
    if ram_bytes:
        body["ram_bytes"] = ram_bytes
    return Call(
        "POST",
        f"/vm/commits/{commit_id_seg(commit_id)}/fork",
        responses.resource("ForkResult"),
        params=tuple(params),
        json=body or None,
        long_running=wait != "none",
    )


# -- one VM ----------------------------------------------------------------------------------------


def describe_call(hostname: str) -> Call[NodeDescription]:
    return Call("GET", f"/vm/{seg(hostname)}", responses.resource("NodeDescription"))


def tags_call(hostname: str) -> Call[VMTags]:
    return Call("GET", f"/vm/{seg(hostname)}/tags", responses.resource("VMTags"))


def update_tags_call(
    hostname: str, add: Sequence[str] | None, remove: Sequence[str] | None, replace: Sequence[str] | None
) -> Call[VMTags]:
    given = {
        "add": _str_list(add, "add"),
        "remove": _str_list(remove, "remove"),
        "replace": _str_list(replace, "replace"),
    }
    body = {key: value for key, value in given.items() if value is not None}
    if len(body) != 1:
        raise ValueError("give exactly one of add, remove and replace (replace=[] clears the tags)")
    return Call("PATCH", f"/vm/{seg(hostname)}/tags", responses.resource("VMTags"), json=body)


def health_call(hostname: str, read_timeout: float | None = None) -> Call[AgentHealth]:
    return Call("GET", f"/vm/{seg(hostname)}/health", responses.resource("AgentHealth"), read_timeout=read_timeout)


def vm_stats_call(hostname: str) -> Call[NodeStats]:
    return Call("GET", f"/node/{seg(hostname)}/stats", responses.only_item("NodeStats"))


def is_ready_call(hostname: str) -> Call[bool]:
    return Call("HEAD", f"/vm/{seg(hostname)}/health", responses.ready, check=False)


def logs_call(hostname: str, lines: int | None) -> Call[LogsResult]:
    params = (("lines", str(lines)),) if lines is not None else ()
    return Call("GET", f"/vm/{seg(hostname)}/logs", responses.resource("LogsResult"), params=params)


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
) -> ExecParams:
    """The exec query; ``None`` leaves a parameter out (``uid``/``gid``: the guest's default user)."""
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


def exec_stream_call(hostname: str, params: ExecParams) -> Call[None]:
    """The request half of a streaming exec; the clients read the NDJSON body themselves."""
    return Call("POST", f"/vm/{seg(hostname)}/exec", responses.nothing, params=params, long_running=True)


def exec_buffered_call(hostname: str, params: ExecParams) -> Call[ExecResult]:
    return Call("POST", f"/vm/{seg(hostname)}/exec", responses.buffered_exec, params=params, long_running=True)


# -- background exec -------------------------------------------------------------------------------

MAX_WAIT_SECONDS = 600
"""The longest ``wait-exit`` the daemon takes."""


def _exec_path(hostname: str, exec_id: str, action: str = "") -> str:
    path = f"/vm/{seg(hostname)}/exec/{seg(exec_id)}"
    return f"{path}/{action}" if action else path


def background_exec_call(hostname: str, params: ExecParams, ring_bytes: int | None) -> Call[BackgroundExec]:
    extra: list[tuple[str, str]] = [("background", "true")]
    if ring_bytes is not None:
        if isinstance(ring_bytes, bool) or not isinstance(ring_bytes, int) or ring_bytes < 0:
            raise ValueError(f"ring_bytes must be a non-negative int, not {ring_bytes!r}")
        extra.append(("ring_bytes", str(ring_bytes)))
    return Call("POST", f"/vm/{seg(hostname)}/exec", responses.resource("BackgroundExec"), params=(*params, *extra))


def background_list_call(hostname: str) -> Call[list[BackgroundExecInfo]]:
    return Call("GET", f"/vm/{seg(hostname)}/exec", responses.resource_list("BackgroundExecInfo"))


def background_info_call(hostname: str, exec_id: str) -> Call[BackgroundExecInfo]:
    return Call("GET", _exec_path(hostname, exec_id), responses.resource("BackgroundExecInfo"))


def background_logs_call(hostname: str, exec_id: str, follow: bool, from_id: int | None) -> Call[None]:
    """The request half of a log read; the clients read the NDJSON body themselves."""
    params: list[tuple[str, str]] = []
    if follow:
        params.append(("follow", "true"))
    if from_id is not None:
        if isinstance(from_id, bool) or not isinstance(from_id, int) or from_id < 0:
            raise ValueError(f"from_id must be a non-negative int, not {from_id!r}")
        params.append(("from_id", str(from_id)))
    return Call(
        "GET", _exec_path(hostname, exec_id, "logs"), responses.nothing, params=tuple(params), long_running=True
    )


def background_kill_call(hostname: str, exec_id: str, signal: str | None, grace_ms: int | None) -> Call[BackgroundKill]:
    body: dict[str, Any] = {}
    if signal is not None:
        body["signal"] = signal
    if grace_ms is not None:
        if isinstance(grace_ms, bool) or not isinstance(grace_ms, int) or grace_ms < 0:
            raise ValueError(f"grace_ms must be a non-negative int, not {grace_ms!r}")
        body["grace_ms"] = grace_ms
    return Call("POST", _exec_path(hostname, exec_id, "kill"), responses.resource("BackgroundKill"), json=body)


def background_wait_call(hostname: str, exec_id: str, timeout: float | None) -> Call[BackgroundExit]:
    params: tuple[tuple[str, str], ...] = ()
    if timeout is not None:
        if isinstance(timeout, bool) or not 0 <= timeout <= MAX_WAIT_SECONDS:
            raise ValueError(f"timeout must be 0 to {MAX_WAIT_SECONDS} seconds, not {timeout!r}")
        params = (("timeout", f"{timeout:g}"),)
    return Call(
        "GET",
        _exec_path(hostname, exec_id, "wait-exit"),
        responses.resource("BackgroundExit"),
        params=params,
        long_running=True,
    )


def background_delete_call(hostname: str, exec_id: str) -> Call[None]:
    return Call("DELETE", _exec_path(hostname, exec_id), responses.nothing)


# -- secrets ---------------------------------------------------------------------------------------

MAX_SECRET_BYTES = 1024 * 1024
"""What the daemon stores per secret; a larger value is refused here, before it is sent."""


SecretValue = bytes | str
"""A secret's value: bytes, or text (sent as UTF-8)."""


def _secret_fields(
    data: SecretValue | None, permissions: str | int | None, uid: int | None, gid: int | None
) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if data is not None:
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("a secret's value must be bytes or str")
        if len(data) > MAX_SECRET_BYTES:
            raise ValueError(f"a secret holds at most {MAX_SECRET_BYTES // 1024} KiB")
        fields["data"] = b64.b64encode(data).decode("ascii")
    if permissions is not None:
        fields["permissions"] = f"{permissions:04o}" if isinstance(permissions, int) else permissions
    for key, value in (("uid", uid), ("gid", gid)):
        if value is not None:
            if value < 0:
                raise ValueError(f"{key} must not be negative")
            fields[key] = value
    return fields


def secrets_call() -> Call[list[Secret]]:
    return Call("GET", "/secrets", responses.resource_list("Secret"))


def create_secret_call(
    name: str, data: SecretValue, permissions: str | int | None, uid: int | None, gid: int | None
) -> Call[Secret | None]:
    return Call(
        "POST", "/secrets", responses.secret, json={"name": name, **_secret_fields(data, permissions, uid, gid)}
    )


def update_secret_call(
    name: str, data: SecretValue | None, permissions: str | int | None, uid: int | None, gid: int | None
) -> Call[Secret | None]:
    if data is not None and not data:
        raise ValueError("an update cannot empty a secret (an empty value means 'unchanged'): delete and create it")
    return Call("PATCH", f"/secrets/{seg(name)}", responses.secret, json=_secret_fields(data, permissions, uid, gid))


def delete_secret_call(name: str) -> Call[None]:
    return Call("DELETE", f"/secrets/{seg(name)}", responses.nothing)


# -- copies ----------------------------------------------------------------------------------------

UPLOAD_MODES = ("binary", "tar", "cp-v1-binary", "cp-v1-tar")
DOWNLOAD_MODES = ("binary", "tar", "cp-v1-binary", "cp-v1-tar", "cp-v1-recursive")


def copy_in_params(
    path: str,
    mode: str,
    *,
    uid: int | None,
    gid: int | None,
    permissions: str | int | None,
    source_name: str | None,
    source_type: str | None,
    copy_contents: bool,
    exclude: Sequence[str],
) -> tuple[tuple[str, str], ...]:
    """The upload query; the ``source_*`` fields go only with the cp-v1 modes (the Go SDK's rule)."""
    if not path:
        raise ValueError("path must not be empty")
    if mode not in UPLOAD_MODES:
        raise ValueError(f"invalid mode: {mode}")
    params: list[tuple[str, str]] = [("path", path), ("mode", mode)]
    if mode.startswith("cp-v1-"):
        params.append(("copy_semantics", "cp-v1"))
        params.append(("source_name", source_name or ""))
        params.append(("source_type", source_type or ("directory" if mode.endswith("tar") else "file")))
        if copy_contents:
            params.append(("copy_contents", "true"))
    if uid is not None:
        params.append(("uid", str(uid)))
    if gid is not None:
        params.append(("gid", str(gid)))
    if permissions is not None:
        params.append(("permissions", permissions if isinstance(permissions, str) else format(permissions, "04o")))
    params += [("exclude", pattern) for pattern in _str_list(exclude, "exclude") or () if pattern.strip()]
    return tuple(params)


def copy_out_params(path: str, mode: str, exclude: Sequence[str]) -> tuple[tuple[str, str], ...]:
    if not path:
        raise ValueError("path must not be empty")
    if mode not in DOWNLOAD_MODES:
        raise ValueError(f"invalid mode: {mode}")
    params: list[tuple[str, str]] = [("path", path), ("mode", mode)]
    if mode.startswith("cp-v1-"):
        params.append(("copy_semantics", "cp-v1"))
    params += [("exclude", pattern) for pattern in _str_list(exclude, "exclude") or () if pattern.strip()]
    return tuple(params)


def copy_call(method: str, hostname: str, params: tuple[tuple[str, str], ...]) -> Call[None]:
    """The request half of a copy; the clients send the body or read the answer themselves."""
    return Call(method, f"/vm/{seg(hostname)}/cp", responses.nothing, params=params, long_running=True)


# -- the guest filesystem --------------------------------------------------------------------------


def _path(path: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(path, str) or not path:
        raise ValueError("path must be a non-empty string")
    return (("path", path),)


def readdir_call(hostname: str, path: str) -> Call[list[FsEntry]]:
    return Call("GET", f"/vm/{seg(hostname)}/fs/readdir", responses.resource_list("FsEntry"), params=_path(path))


def stat_call(hostname: str, path: str) -> Call[FsEntry]:
    return Call("GET", f"/vm/{seg(hostname)}/fs/stat", responses.resource("FsEntry"), params=_path(path))


def exists_call(hostname: str, path: str) -> Call[bool]:
    return Call("GET", f"/vm/{seg(hostname)}/fs/stat", responses.exists, params=_path(path), check=False)


def _mode_text(mode: str | int | None) -> str | None:
    if mode is None or isinstance(mode, str):
        return mode
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise ValueError(f"mode must be permission bits (0o755) or octal text ('0755'), not {mode!r}")
    return f"{mode:04o}"


def mkdir_call(hostname: str, path: str, recursive: bool, mode: str | int | None) -> Call[FsEntry]:
    _path(path)
    body: dict[str, Any] = {"path": path, "recursive": bool(recursive)}
    if (text := _mode_text(mode)) is not None:
        body["mode"] = text
    return Call("POST", f"/vm/{seg(hostname)}/fs/mkdir", responses.resource("FsEntry"), json=body, long_running=True)


def remove_call(hostname: str, path: str, recursive: bool) -> Call[None]:
    params = (*_path(path), ("recursive", "true" if recursive else "false"))
    return Call("DELETE", f"/vm/{seg(hostname)}/fs/remove", responses.nothing, params=params, long_running=True)


def _duration_text(value: str | float | None, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a Go duration or non-negative seconds, not {value!r}")
    return format_go_duration(value)


def watch_call(
    hostname: str,
    paths: Sequence[str],
    *,
    patterns: Sequence[str] | None,
    events: Sequence[str] | None,
    recursive: bool,
    one_shot: bool,
    debounce: str | float | None,
    timeout: str | float | None,
    max_events: int | None,
    uid: int | None,
    last_event_id: int | None,
) -> Call[None]:
    """The request half of a watch; the clients read the event stream themselves."""
    chosen = _str_list(paths, "paths") or []
    if not chosen or not all(isinstance(p, str) and p for p in chosen):
        raise ValueError("paths must hold at least one non-empty path")
    params: list[tuple[str, str]] = [("paths", p) for p in chosen]
    params += [("patterns", p) for p in _str_list(patterns, "patterns") or ()]
    params += [("events", e) for e in _str_list(events, "events") or ()]
    if recursive:
        params.append(("recursive", "true"))
    if one_shot:
        params.append(("one_shot", "true"))
    for name, value in (("debounce", debounce), ("timeout", timeout)):
        if (text := _duration_text(value, name)) is not None:
            params.append((name, text))
    for name, number in (("max_events", max_events), ("uid", uid), ("last_event_id", last_event_id)):
        if number is not None:
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                raise ValueError(f"{name} must be a non-negative int, not {number!r}")
            params.append((name, str(number)))
    return Call("GET", f"/vm/{seg(hostname)}/fs/watch", responses.nothing, params=tuple(params), long_running=True)
