# Generated from _async.py by scripts/unasync.py: edit that file, then run the script.
"""The client, written once, in ``_async.py``: ``scripts/unasync.py`` writes ``_sync.py`` from it, and
``scripts/unasync.py --check`` (run by the tests) fails when the two differ.

It only sends: each method builds a ``Call`` (``_calls``) and hands the answer to ``Call.finish``. What differs
between the blocking and the asyncio client by more than ``await`` lives in hand-written pairs of modules: the
stdin bodies and the full-duplex transports (``_stdin.py``, ``_duplex.py`` and their ``*_async.py`` twins).
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Literal, TypeVar

import httpx

from pyslicer.errors import SlicerError

from ._base_client import DEFAULT_TIMEOUT, BaseClient, TimeoutArg, ssl_context
from ._calls import (
    Call,
    EnvArg,
    create_node_call,
    delete_node_call,
    exec_buffered_call,
    exec_params,
    exec_stream_call,
    exists_call,
    group_nodes_call,
    health_call,
    healthz_call,
    host_groups_call,
    info_call,
    is_ready_call,
    logs_call,
    metrics_call,
    mkdir_call,
    nodes_call,
    readdir_call,
    remove_call,
    stat_call,
    watch_call,
)
from ._duplex import DuplexTransport
from ._exec_output import ExecFrame, ExecResult, FrameDecoder
from ._fs_watch import SseDecoder, WatchEvent
from ._readiness import ReadyPoll
from ._responses import api_error
from ._stdin import Stdin, stdin_body

if TYPE_CHECKING:
    from .models import AgentHealth, CreatedNode, DeleteResult, FsEntry, HostGroup, LogsResult, Node, ServerInfo

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
        wait: Literal["agent", "userdata"] | None = None,
        timeout: str | float | None = None,
    ) -> CreatedNode:
        """Launch a VM in ``group``. With ``wait`` the server answers once the agent (or userdata too)
        is ready, or with 408 after ``timeout`` (a Go duration like ``"30s"``, or seconds)."""
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
                wait=wait,
                timeout=timeout,
            )
        )

    def delete_node(self, group: str, hostname: str) -> DeleteResult:
        return self._send(delete_node_call(group, hostname))

    # -- one VM ------------------------------------------------------------------------------------

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
            return self._frames(self._http, call, None)
        return self._frames(self._stdin_http(), call, stdin_body(stdin))

    def _frames(
        self,
        http: httpx.Client,
        call: Call[None],
        content: bytes | Iterable[bytes] | None,
    ) -> Generator[ExecFrame, None, None]:
        request = self._build(http, call, content)
        try:
            response = http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._connection_error(exc) from exc
        try:
            if response.is_error:
                response.read()
                raise api_error(response)
            decoder = FrameDecoder()
            for line in response.iter_lines():
                for frame in decoder.feed(line):
                    yield frame
            for frame in decoder.finish():
                yield frame
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
        return self._watch_events(call)

    def _watch_events(self, call: Call[None]) -> Generator[WatchEvent, None, None]:
        request = self._build(self._http, call)
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._connection_error(exc) from exc
        try:
            if response.is_error:
                response.read()
                raise api_error(response)
            decoder = SseDecoder()
            for line in response.iter_lines():
                for event in decoder.feed(line):
                    yield event
            for event in decoder.finish():
                yield event
        except httpx.TransportError as exc:
            raise self._connection_error(exc) from exc
        finally:
            response.close()
