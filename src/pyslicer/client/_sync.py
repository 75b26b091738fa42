# Generated from _async.py by scripts/unasync.py: edit that file, then run the script.
"""The client, written once, in ``_async.py``: ``scripts/unasync.py`` writes ``_sync.py`` from it, and
``scripts/unasync.py --check`` (run by the tests) fails when the two differ.

It only sends: each method builds a ``Call`` (``_calls``) and hands the answer to ``Call.finish``. What differs
between the blocking and the asyncio client by more than ``await`` lives in hand-written pairs of modules: the
stdin bodies and the full-duplex transports (``_stdin.py``, ``_duplex.py`` and their ``*_async.py`` twins).
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Literal, TypeVar

import httpx

from pyslicer.errors import SlicerError

from ._background_logs import LogFrame, LogFrameDecoder
from ._base_client import DEFAULT_TIMEOUT, BaseClient, TimeoutArg, ssl_context
from ._calls import (
    Call,
    EnvArg,
    SecretValue,
    background_delete_call,
    background_exec_call,
    background_info_call,
    background_kill_call,
    background_list_call,
    background_logs_call,
    background_wait_call,
    commit_call,
    commits_call,
    copy_call,
    copy_in_params,
    copy_out_params,
    create_node_call,
    create_secret_call,
    delete_commit_call,
    delete_node_call,
    delete_secret_call,
    describe_call,
    exec_buffered_call,
    exec_params,
    exec_stream_call,
    exists_call,
    fork_call,
    group_nodes_call,
    health_call,
    healthz_call,
    host_groups_call,
    info_call,
    is_ready_call,
    lifecycle_call,
    logs_call,
    metrics_call,
    mkdir_call,
    node_stats_call,
    nodes_call,
    readdir_call,
    relaunch_call,
    remove_call,
    restore_call,
    secrets_call,
    stat_call,
    tags_call,
    update_secret_call,
    update_tags_call,
    vm_stats_call,
    watch_call,
)
from ._duplex import DuplexTransport
from ._exec_output import ExecFrame, ExecResult, FrameDecoder, LineDecoder
from ._forward import Forwarder, ForwardStream
from ._fs_watch import SseDecoder, WatchEvent
from ._readiness import ReadyPoll
from ._responses import api_error
from ._shell import Shell
from ._stdin import Stdin, stdin_body
from ._websocket import shell_params

if TYPE_CHECKING:
    import os
    from collections.abc import Callable

    from ._copy import CopySource
    from ._forward_spec import ForwardSpec
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


class SlicerClient(BaseClient):
    """A client for a Slicer daemon.

    ``url`` defaults to ``$SLICER_URL`` or ``http://127.0.0.1:8080``; a path (``/``, ``./``, ``../``, ``~/``,
    ``unix://`` or ``*.sock``) means a unix socket. The token comes from ``token``, ``token_file``,
    ``$SLICER_TOKEN`` or ``$SLICER_TOKEN_FILE``, in that order. ``transport`` replaces the network
    (for tests: ``httpx.MockTransport``).

    Every call raises ``SlicerAPIError`` when the daemon answers with an error (``status``, ``code``,
    ``message``), ``SlicerConnectionError`` when it cannot be reached or the connection breaks, and
    ``SlicerResponseError`` for an answer the client cannot read; all are ``pyslicer.errors.SlicerError``.
    Bad arguments raise ``ValueError`` or ``TypeError`` before anything is sent.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        token_file: str | None = None,
        timeout: TimeoutArg = DEFAULT_TIMEOUT,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, token, token_file, timeout)
        self._transport = transport
        self._pooled: httpx.Client | None = None
        self._duplex: httpx.Client | None = None

    def _client(self, transport: httpx.BaseTransport) -> httpx.Client:
        return httpx.Client(
            base_url=self._endpoint.base_url,
            headers=self._headers,
            timeout=self._timeout,
            transport=transport,
        )

    @property
    def _http(self) -> httpx.Client:
        """The client (and connection pool) for everything but an exec with stdin. Made on first use, so a
        client that only streams stdin never builds a pool (nor imports httpcore)."""
        if self._pooled is None:
            transport = self._transport or httpx.HTTPTransport(
                uds=self._endpoint.uds, verify=ssl_context(self._endpoint)
            )
            self._pooled = self._client(transport)
        return self._pooled

    def close(self) -> None:
        if self._pooled is not None:
            self._pooled.close()
        if self._duplex is not None:
            self._duplex.close()

    def __enter__(self) -> SlicerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: Call[T]) -> T:
        request = self._build(self._http, call)
        try:
            response = self._http.send(request)
        except httpx.TransportError as exc:
            raise self._connection_error(exc) from exc
        return call.finish(response)

    def _stdin_http(self) -> httpx.Client:
        """The client for an exec with stdin: full duplex, unless the transport was replaced (or the endpoint
        speaks TLS and the duplex transport doesn't)."""
        if self._transport is not None or (self._endpoint.tls and not DuplexTransport.speaks_tls):
            return self._http
        if self._duplex is None:
            self._duplex = self._client(DuplexTransport(uds=self._endpoint.uds))
        return self._duplex

    # -- the daemon --------------------------------------------------------------------------------

    def info(self) -> ServerInfo:
        """The daemon's version and platform."""
        return self._send(info_call())

    def healthz(self) -> str:
        """The daemon's liveness status (``"ok"``); raises when it is unreachable or unhealthy."""
        return self._send(healthz_call())

    def metrics(self) -> str:
        """Prometheus metrics, as text."""
        return self._send(metrics_call())

    # -- host groups and nodes ---------------------------------------------------------------------

    def host_groups(self) -> list[HostGroup]:
        return self._send(host_groups_call())

    def nodes(self, tag: str | None = None, tag_prefix: str | None = None) -> list[Node]:
        """Every VM, or those with the tag ``tag`` or a tag starting with ``tag_prefix``."""
        return self._send(nodes_call(tag, tag_prefix))

    def group_nodes(self, group: str, tag: str | None = None, tag_prefix: str | None = None) -> list[Node]:
        """The VMs of one host group, filtered like ``nodes``."""
        return self._send(group_nodes_call(group, tag, tag_prefix))

    def create_node(
        self,
        group: str,
        *,
        cpus: int | None = None,
        ram_bytes: int | None = None,
        userdata: str | None = None,
        tags: Sequence[str] | None = None,
        persistent: bool | None = None,
        hostname: str | None = None,
        ip: str | None = None,
        ssh_keys: Sequence[str] | None = None,
        import_user: str | None = None,
        secrets: Sequence[str] | None = None,
        ttl: str | float | None = None,
        wait: Literal["agent", "userdata"] | None = None,
        timeout: str | float | None = None,
    ) -> CreatedNode:
        """Launch a VM in ``group``. With ``wait`` the server answers once the agent (or userdata too)
        is ready, or with 408 after ``timeout`` (a Go duration like ``"30s"``, or seconds). With ``ttl``
        (pyslicer's; a Go duration or seconds) the VM is removed that long after it was created."""
        return self._send(
            create_node_call(
                group,
                cpus=cpus,
                ram_bytes=ram_bytes,
                userdata=userdata,
                tags=tags,
                persistent=persistent,
                hostname=hostname,
                ip=ip,
                ssh_keys=ssh_keys,
                import_user=import_user,
                secrets=secrets,
                ttl=ttl,
                wait=wait,
                timeout=timeout,
            )
        )

    def delete_node(self, group: str, hostname: str) -> DeleteResult:
        return self._send(delete_node_call(group, hostname))

    def node_stats(self) -> list[NodeStats]:
        """Stats of every VM (``GET /nodes/stats``); a VM whose agent could not answer has ``error`` set."""
        return self._send(node_stats_call())

    def vm_stats(self, hostname: str) -> NodeStats:
        """Stats of one VM (``GET /node/{hostname}/stats``)."""
        return self._send(vm_stats_call(hostname))

    # -- one VM's lifecycle ------------------------------------------------------------------------

    def pause(self, hostname: str) -> LifecycleResult:
        """Stop the VM's vCPUs; its processes and memory stay. 409 unless it is running."""
        return self._send(lifecycle_call(hostname, "pause"))

    def resume(self, hostname: str) -> LifecycleResult:
        """Run a paused VM again. 409 unless it is paused."""
        return self._send(lifecycle_call(hostname, "resume"))

    def suspend(self, hostname: str) -> LifecycleResult:
        """Save the VM's memory and devices in the daemon's data dir and end its VM process: it is Suspended
        until restored. 409 unless it is running; 413 (``no_space_for_state``) when there is no room (it runs on)."""
        return self._send(lifecycle_call(hostname, "suspend"))

    def restore(
        self,
        hostname: str,
        *,
        wait: Literal["agent", "userdata"] | None = None,
        timeout: str | float | None = None,
    ) -> LifecycleResult:
        """Bring a suspended VM back with its processes and memory; with ``wait``, return once its agent is ready.
        409 unless it is suspended, or (``state_unusable``) when its saved state is damaged: it is Stopped then."""
        return self._send(restore_call(hostname, wait, timeout))

    def shutdown(self, hostname: str) -> LifecycleResult:
        """Stop the VM cleanly, returning once it has stopped: a persistent VM is then Stopped (relaunch it),
        an ephemeral sandbox is removed with its disk."""
        return self._send(lifecycle_call(hostname, "shutdown"))

    def relaunch(
        self,
        hostname: str,
        *,
        wait: Literal["agent", "userdata"] | None = None,
        timeout: str | float | None = None,
    ) -> CreatedNode:
        """Boot a stopped VM again from its disk; with ``wait``, return once its agent (or userdata) is ready."""
        return self._send(relaunch_call(hostname, wait, timeout))

    # -- commits and forks -------------------------------------------------------------------------

    def commit(
        self,
        hostname: str,
        *,
        tags: Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
        cache_key: str | None = None,
    ) -> Commit:
        """Commit a stopped persistent VM's disk (``mode`` cold); the VM goes on from the commit. A running VM,
        or one already being committed, is a ``SlicerAPIError`` 409."""
        return self._send(commit_call(hostname, tags, labels, cache_key))

    def commits(
        self,
        *,
        tags: Sequence[str] | None = None,
        cache_key: str | None = None,
        source: str | None = None,
        mode: str | None = None,
    ) -> list[CommitInfo]:
        """The commits with every one of ``tags`` and the given cache key, source hostname and mode."""
        return self._send(commits_call(tags, cache_key, source, mode))

    def delete_commit(self, commit_id: str) -> CommitDeleted:
        """Remove a commit; a ``SlicerAPIError`` 409 while a VM (its source too) or another commit stands on it."""
        return self._send(delete_commit_call(commit_id))

    def fork(
        self,
        commit_id: str,
        *,
        wait: Literal["agent", "none"] | None = None,
        timeout: str | float | None = None,
        allow: Sequence[str] | None = None,
        drop: Sequence[str] | None = None,
        tags: Sequence[str] | None = None,
        replace_tags: bool = False,
        secrets: Sequence[str] | None = None,
        persistent: bool | None = None,
        fixups: Sequence[str] | None = None,
        vcpu: int | None = None,
        ram_bytes: int | None = None,
    ) -> ForkResult:
        """A new VM from a commit, named by the daemon, with a fresh hostname, MAC and IP and the ``fixups`` (None:
        all of hostname, machine-id, ssh-host-keys; []: none). ``wait`` None or "agent" returns once its agent is
        ready, "none" once it is launched. ``tags`` add to the source's (``replace_tags``: instead of them);
        ``allow``/``drop`` None inherit the host group's lists, [] means none."""
        call = fork_call(
            commit_id,
            wait=wait,
            timeout=timeout,
            allow=allow,
            drop=drop,
            tags=tags,
            replace_tags=replace_tags,
            secrets=secrets,
            persistent=persistent,
            fixups=fixups,
            vcpu=vcpu,
            ram_bytes=ram_bytes,
        )
        return self._send(call)

    # -- one VM ------------------------------------------------------------------------------------

    def describe(self, hostname: str) -> NodeDescription:
        """The VM's listing fields plus its image, storage, lineage and network policy."""
        return self._send(describe_call(hostname))

    def tags(self, hostname: str) -> VMTags:
        return self._send(tags_call(hostname))

    def update_tags(
        self,
        hostname: str,
        *,
        add: Sequence[str] | None = None,
        remove: Sequence[str] | None = None,
        replace: Sequence[str] | None = None,
    ) -> VMTags:
        """Apply exactly one of ``add``, ``remove`` or ``replace`` (``replace=[]`` clears) and return the tags.

        A ``name=`` tag cannot be removed or changed (``SlicerAPIError`` 409) and survives a replace; an added
        ``expires_at=<RFC 3339>`` replaces the one there. Raises ``ValueError`` before sending for none or several."""
        return self._send(update_tags_call(hostname, add, remove, replace))

    def health(self, hostname: str) -> AgentHealth:
        return self._send(health_call(hostname))

    def is_ready(self, hostname: str) -> bool:
        """Whether the VM's agent answers (``HEAD /vm/{hostname}/health``); raises for an unknown VM."""
        return self._send(is_ready_call(hostname))

    def wait_ready(
        self, hostname: str, timeout: float, userdata: bool = False, *, interval: float = 0.1
    ) -> AgentHealth:
        """Poll the agent's health until it is up (and userdata has run, with ``userdata=True``).

        Raises ``SlicerTimeoutError`` after ``timeout`` seconds, and at once for errors waiting can't fix
        (unknown VM, bad token, daemon unreachable).
        """
        poll = ReadyPoll(hostname, timeout, userdata, interval)
        while True:
            try:
                health = self._send(health_call(hostname, read_timeout=poll.request_timeout()))
            except SlicerError as exc:
                poll.failed(exc)
            else:
                if poll.ready(health):
                    return health
            time.sleep(poll.next_delay())

    def logs(self, hostname: str, lines: int | None = None) -> LogsResult:
        """The VM's serial console log: the last 20 lines by default, everything with ``lines=0``."""
        return self._send(logs_call(hostname, lines))

    def exec(
        self,
        hostname: str,
        cmd: str,
        args: Sequence[str] = (),
        *,
        env: EnvArg = None,
        uid: int | None = None,
        gid: int | None = None,
        cwd: str | None = None,
        shell: str | None = None,
        stdin: Stdin | None = None,
        base64: bool = False,
    ) -> Generator[ExecFrame, None, None]:
        """Run a command and stream its frames as they arrive.

        ``uid``/``gid`` None leave the user to the guest's default. ``stdin`` (bytes, an iterable of chunks,
        or a binary file; for the asyncio client also an async iterable, and blocking sources are read on a
        helper thread) is streamed as the request body while output streams back. ``base64=True`` asks for
        base64 stdio, which is binary-safe; frames carry decoded bytes either way. Arguments are checked
        now; the request is sent when iteration starts, and closing the iterator early closes the connection.
        """
        params = exec_params(
            cmd,
            args,
            env=env,
            uid=uid,
            gid=gid,
            cwd=cwd,
            shell=shell,
            stdin=stdin is not None,
            base64=base64,
            buffered=False,
        )
        call = exec_stream_call(hostname, params)
        if stdin is None:
            return self._decoded(self._http, call, None, FrameDecoder())
        return self._decoded(self._stdin_http(), call, stdin_body(stdin), FrameDecoder())

    def _decoded(
        self,
        http: httpx.Client,
        call: Call[None],
        content: bytes | Iterable[bytes] | None,
        decoder: LineDecoder[T],
    ) -> Generator[T, None, None]:
        """A streamed answer, line by line through ``decoder`` (NDJSON exec frames, server-sent events)."""
        request = self._build(http, call, content)
        try:
            response = http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._connection_error(exc) from exc
        try:
            if response.is_error:
                response.read()
                raise api_error(response)
            for line in response.iter_lines():
                for item in decoder.feed(line):
                    yield item
            for item in decoder.finish():
                yield item
        except httpx.TransportError as exc:
            raise self._connection_error(exc) from exc
        finally:
            response.close()

    def exec_buffered(
        self,
        hostname: str,
        cmd: str,
        args: Sequence[str] = (),
        *,
        env: EnvArg = None,
        uid: int | None = None,
        gid: int | None = None,
        cwd: str | None = None,
        shell: str | None = None,
        base64: bool = False,
    ) -> ExecResult:
        """Run a command and return its collected output (``buffered=true``; no stdin)."""
        params = exec_params(
            cmd,
            args,
            env=env,
            uid=uid,
            gid=gid,
            cwd=cwd,
            shell=shell,
            stdin=False,
            base64=base64,
            buffered=True,
        )
        return self._send(exec_buffered_call(hostname, params))

    # -- background exec -----------------------------------------------------------------------------

    def exec_background(
        self,
        hostname: str,
        cmd: str,
        args: Sequence[str] = (),
        *,
        env: EnvArg = None,
        uid: int | None = None,
        gid: int | None = None,
        cwd: str | None = None,
        shell: str | None = None,
        ring_bytes: int | None = None,
    ) -> BackgroundExec:
        """Start a command that the VM's agent keeps running after this call (and this client) is gone; its
        output goes into a ring of ``ring_bytes`` (default 1 MiB) read with ``background_logs``. Raises
        ``SlicerAPIError``: 503 when the VM's ring budget is used up (delete ended execs to free it)."""
        params = exec_params(
            cmd, args, env=env, uid=uid, gid=gid, cwd=cwd, shell=shell, stdin=False, base64=True, buffered=False
        )
        return self._send(background_exec_call(hostname, params, ring_bytes))

    def background_execs(self, hostname: str) -> list[BackgroundExecInfo]:
        """Every background exec the VM's agent tracks: running, or ended and not deleted."""
        return self._send(background_list_call(hostname))

    def background_exec(self, hostname: str, exec_id: str) -> BackgroundExecInfo:
        """One background exec (404 never existed, 410 deleted)."""
        return self._send(background_info_call(hostname, exec_id))

    def background_logs(
        self, hostname: str, exec_id: str, *, follow: bool = False, from_id: int | None = None
    ) -> Generator[LogFrame, None, None]:
        """The exec's output ring as frames with ids, from ``from_id`` (default: the oldest kept); ``gap``
        frames say what left the ring unread. With ``follow`` it goes on until the exec ends (or a ``from_id``
        past the newest frame waits for it). Closing the iterator early closes the connection."""
        call = background_logs_call(hostname, exec_id, follow, from_id)
        return self._decoded(self._http, call, None, LogFrameDecoder())

    def kill_background(
        self, hostname: str, exec_id: str, *, signal: str | None = None, grace_ms: int | None = None
    ) -> BackgroundKill:
        """Signal the exec's process group: ``signal`` TERM (the default, then KILL after ``grace_ms``, default
        5000), KILL, INT, HUP, QUIT, USR1 or USR2. An ended exec is left alone (``signal_sent`` empty)."""
        return self._send(background_kill_call(hostname, exec_id, signal, grace_ms))

    def wait_background(self, hostname: str, exec_id: str, timeout: float | None = None) -> BackgroundExit:
        """Wait until the exec ends, or ``timeout`` seconds (server default 30, at most 600): then
        ``timed_out``."""
        return self._send(background_wait_call(hostname, exec_id, timeout))

    def delete_background(self, hostname: str, exec_id: str) -> None:
        """Forget an ended exec and free its ring (409 while it runs: kill it first)."""
        self._send(background_delete_call(hostname, exec_id))

    # -- secrets -----------------------------------------------------------------------------------

    def secrets(self) -> list[Secret]:
        """The stored secrets' names, sizes, owners and modes (never their values)."""
        return self._send(secrets_call())

    def create_secret(
        self,
        name: str,
        data: SecretValue,
        *,
        permissions: str | int | None = None,
        uid: int | None = None,
        gid: int | None = None,
    ) -> Secret | None:
        """Store a secret (at most 1 MiB; text is sent as UTF-8); running VMs granted it see it at
        ``/run/slicer/secrets/<name>``. ``permissions`` is octal text (``"0600"``, the default) or an int
        (``0o600``); ``uid``/``gid`` default to root. Raises ``SlicerAPIError`` with status 409 when it exists.
        Returns what the server says of it (None from a server that answers with no body)."""
        return self._send(create_secret_call(name, data, permissions, uid, gid))

    def update_secret(
        self,
        name: str,
        data: SecretValue | None = None,
        *,
        permissions: str | int | None = None,
        uid: int | None = None,
        gid: int | None = None,
    ) -> Secret | None:
        """Change a secret's value, mode or owner; what is None stays as it is. Raises ``SlicerAPIError``
        with status 404 when there is no such secret."""
        return self._send(update_secret_call(name, data, permissions, uid, gid))

    def delete_secret(self, name: str) -> None:
        """Remove a secret from the store and from the VMs. Raises ``SlicerAPIError`` (404) when missing."""
        self._send(delete_secret_call(name))

    # -- copies ------------------------------------------------------------------------------------

    def cp_to_vm(
        self,
        hostname: str,
        path: str,
        data: Stdin,
        *,
        mode: str = "binary",
        uid: int | None = None,
        gid: int | None = None,
        permissions: str | int | None = None,
        source_name: str | None = None,
        source_type: str | None = None,
        copy_contents: bool = False,
        exclude: Sequence[str] = (),
        unpacked_size: int | None = None,
    ) -> None:
        """Stream ``data`` (bytes, an iterable or async iterable of chunks, or a binary file) to ``path`` in the
        VM: a file's bytes (``binary``, ``cp-v1-binary``) or an uncompressed tar (``tar``, ``cp-v1-tar``). It
        lands atomically. The cp-v1 modes place it like ``cp`` (``source_name`` into an existing directory).
        ``uid``/``gid`` None: the guest's default user. ``unpacked_size`` lets the guest refuse at once (413)
        when it lacks the space (413, code ``no_space``)."""
        params = copy_in_params(
            path,
            mode,
            uid=uid,
            gid=gid,
            permissions=permissions,
            source_name=source_name,
            source_type=source_type,
            copy_contents=copy_contents,
            exclude=exclude,
        )
        call = copy_call("POST", hostname, params)
        request = self._build(self._http, call, stdin_body(data))
        request.headers["content-type"] = "application/x-tar" if mode.endswith("tar") else "application/octet-stream"
        if unpacked_size is not None:
            request.headers["x-slicer-unpacked-size"] = str(unpacked_size)
        try:
            response = self._http.send(request)
        except httpx.TransportError as exc:
            raise self._connection_error(exc) from exc
        call.finish(response)

    def upload_file(
        self,
        hostname: str,
        local_path: str | os.PathLike[str],
        remote_path: str,
        *,
        uid: int | None = None,
        gid: int | None = None,
        permissions: str | int | None = None,
    ) -> None:
        """Copy a local file into the VM like ``cp``: into ``remote_path`` if it is a directory (or ends in
        ``/``), else as ``remote_path``. Streamed from the file, never read whole."""
        import os

        local = os.fspath(local_path)
        with open(local, "rb") as file:
            self.cp_to_vm(
                hostname,
                remote_path,
                file,
                mode="cp-v1-binary",
                uid=uid,
                gid=gid,
                permissions=permissions,
                source_name=os.path.basename(os.path.abspath(local)),
                source_type="file",
                unpacked_size=os.fstat(file.fileno()).st_size,
            )

    def upload_tree(
        self,
        hostname: str,
        local_dir: str | os.PathLike[str],
        remote_path: str,
        *,
        exclude: Sequence[str] = (),
        uid: int | None = None,
        gid: int | None = None,
    ) -> None:
        """Copy a local directory into the VM like ``cp -r`` (``dir/.``: its contents), as a tar made while it
        is sent. ``exclude`` takes the Go SDK's patterns (``*.log``, ``node_modules``, ``a/**/b``)."""
        import os

        from ._copy import tar_chunks, tree_size

        local = os.fspath(local_dir)
        if not os.path.isdir(local):
            raise ValueError(f"{local} is not a directory")
        contents = local.rstrip("/").endswith("/.") or local.rstrip("/") in (".", "")
        name = os.path.basename(os.path.abspath(local))
        self.cp_to_vm(
            hostname,
            remote_path,
            tar_chunks(local, exclude),
            mode="cp-v1-tar",
            uid=uid,
            gid=gid,
            source_name="" if contents and name in ("", "/") else name,
            source_type="directory",
            copy_contents=contents,
            exclude=exclude,
            unpacked_size=tree_size(local, exclude),
        )

    def cp_from_vm(
        self,
        hostname: str,
        path: str,
        *,
        mode: str = "cp-v1-binary",
        exclude: Sequence[str] = (),
        on_source: Callable[[CopySource], None] | None = None,
    ) -> Generator[bytes, None, None]:
        """Stream ``path`` out of the VM: a file's bytes, or a tar of a directory's contents (``cp-v1-tar``;
        ``cp-v1-recursive`` sends either). ``on_source`` is called with what it is (``source_type``, ``name``,
        ``file_mode``, ``size``) before the first chunk. A transfer the guest cuts short raises
        ``SlicerConnectionError``: never a short file taken for whole."""
        from ._copy import source_of

        call = copy_call("GET", hostname, copy_out_params(path, mode, exclude))
        request = self._build(self._http, call)
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._connection_error(exc) from exc
        try:
            if response.is_error:
                response.read()
                raise api_error(response)
            if on_source is not None:
                on_source(source_of(response.headers))
            for chunk in response.iter_bytes():
                if chunk:
                    yield chunk
        except httpx.TransportError as exc:
            raise self._connection_error(exc) from exc
        finally:
            response.close()

    # -- the guest filesystem ----------------------------------------------------------------------
    # Paths are absolute in the VM, or start with ~/ (root's home). A missing path is a SlicerAPIError with
    # status 404 and code "path_not_found" (an unknown VM: "vm_not_found").

    def readdir(self, hostname: str, path: str) -> list[FsEntry]:
        """The entries of a directory, sorted by name (a symlink is listed as one, not followed)."""
        return self._send(readdir_call(hostname, path))

    def stat(self, hostname: str, path: str) -> FsEntry:
        """One path's entry (a symlink itself, not its target)."""
        return self._send(stat_call(hostname, path))

    def exists(self, hostname: str, path: str) -> bool:
        return self._send(exists_call(hostname, path))

    def mkdir(
        self,
        hostname: str,
        path: str,
        *,
        recursive: bool = False,
        mode: str | int | None = None,
    ) -> FsEntry:
        """Create a directory (with ``recursive``, its parents too, and an existing one is fine); ``mode`` is
        ``"0755"`` or ``0o755`` (the default 0755), given to every directory made. 409 when it exists."""
        return self._send(mkdir_call(hostname, path, recursive, mode))

    def remove(self, hostname: str, path: str, *, recursive: bool = False) -> None:
        """Remove a file, a symlink, an empty directory, or with ``recursive`` a whole tree."""
        self._send(remove_call(hostname, path, recursive))

    def watch(
        self,
        hostname: str,
        paths: Sequence[str],
        *,
        patterns: Sequence[str] | None = None,
        events: Sequence[str] | None = None,
        recursive: bool = False,
        one_shot: bool = False,
        debounce: str | float | None = None,
        timeout: str | float | None = None,
        max_events: int | None = None,
        uid: int | None = None,
        last_event_id: int | None = None,
    ) -> Generator[WatchEvent, None, None]:
        """Stream filesystem changes under ``paths`` as they happen (inotify in the guest).

        ``patterns`` are Go globs matched against the full path or the base name; ``events`` picks types
        (create, write, remove, rename, chmod). ``debounce`` (default 200 ms) coalesces events of one type
        and path; ``timeout`` (a Go duration or seconds), ``max_events`` or ``one_shot`` end the stream, as
        does closing the iterator. ``uid`` says whose home ``~`` is; ``last_event_id`` makes the ids
        continue after it. Arguments are checked now; the request is sent when iteration starts.
        """
        call = watch_call(
            hostname,
            paths,
            patterns=patterns,
            events=events,
            recursive=recursive,
            one_shot=one_shot,
            debounce=debounce,
            timeout=timeout,
            max_events=max_events,
            uid=uid,
            last_event_id=last_event_id,
        )
        return self._decoded(self._http, call, None, SseDecoder())

    # -- interactive sessions ----------------------------------------------------------------------

    def shell(
        self,
        hostname: str,
        *,
        uid: int | None = None,
        gid: int | None = None,
        shell: str | None = None,
        cwd: str | None = None,
        term: str | None = None,
        cols: int = 80,
        rows: int = 24,
    ) -> Shell:
        """A login shell on a terminal in the VM (``uid``/``gid`` default to the guest's default user, ``shell``
        to that user's login shell, ``cwd`` to its home). Read, write, ``resize`` and ``close`` it; after the
        last ``read`` (``b""``) its ``exit_code`` says how the shell ended. Raises SlicerAPIError when the
        daemon refuses (an unknown VM: 404; a missing shell: 404 ``shell_not_found``)."""
        params = shell_params(uid, gid, shell, cwd, term)
        endpoint, connect_timeout = self._endpoint, self._timeout.connect
        return Shell.connect(endpoint, self._headers, hostname, params, (cols, rows), connect_timeout)

    def forward_connection(self, hostname: str, upstream: str) -> ForwardStream:
        """One connection from inside the VM to ``upstream`` (``host:port`` or ``unix:/path``), as a stream of
        bytes both ways; ``close_write`` half-closes it. A target that refuses shows at the first ``read``
        (SlicerUpstreamError, its message the guest's reason)."""
        endpoint, connect_timeout = self._endpoint, self._timeout.connect
        return ForwardStream.connect(endpoint, self._headers, hostname, upstream, connect_timeout)

    def forward(
        self,
        hostname: str,
        specs: Sequence[str],
        *,
        on_error: Callable[[ForwardSpec, Exception], None] | None = None,
    ) -> Forwarder:
        """Listen locally as ``specs`` say (``slicer vm forward -L`` specs: ``[LOCAL_ADDR:]LOCAL_PORT:HOST:PORT``
        or unix socket paths on either side) and forward every connection into the VM until ``close``.
        ``listeners`` gives the bound addresses; ``on_error`` hears about each connection that failed.
        Raises ValueError for a bad spec, OSError when a listener cannot be bound."""
        return Forwarder.start(lambda upstream: self.forward_connection(hostname, upstream), specs, on_error)
