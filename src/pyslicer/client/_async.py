from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import IO, Literal, TypeVar, cast

import httpx

from pyslicer.errors import SlicerError

from ._base import (
    DEFAULT_TIMEOUT,
    BaseClient,
    Call,
    EnvArg,
    FrameDecoder,
    ReadyPoll,
    TimeoutArg,
    api_error,
    create_node_call,
    delete_node_call,
    exec_buffered_call,
    exec_params,
    exec_stream_call,
    finish,
    group_nodes_call,
    health_call,
    healthz_call,
    host_groups_call,
    info_call,
    is_ready_call,
    logs_call,
    metrics_call,
    nodes_call,
)
from ._duplex import AsyncDuplexTransport
from ._sync import _read_chunks
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

AsyncStdin = bytes | Iterable[bytes] | AsyncIterable[bytes]


def _stdin_content(stdin: AsyncStdin) -> bytes | AsyncIterable[bytes]:
    if isinstance(stdin, (bytes, bytearray, memoryview)):
        return bytes(stdin)
    if isinstance(stdin, AsyncIterable):
        return stdin
    if isinstance(stdin, (list, tuple)):
        return _from_sequence(stdin)
    if hasattr(stdin, "read"):
        return _from_thread(_read_chunks(cast(IO[bytes], stdin)))
    return _from_thread(iter(stdin))


async def _from_sequence(chunks: Sequence[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _from_thread(source: Iterator[bytes]) -> AsyncIterator[bytes]:
    # A blocking source (a pipe, a file) must not stall the event loop. A daemon thread reads it, so a read
    # that never returns can't hold up interpreter exit; the bounded queue keeps memory flat.
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=4)
    stopped = threading.Event()

    def put(item: bytes | BaseException | None) -> bool:
        try:
            future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        except RuntimeError:  # the loop is gone
            return False
        while True:
            try:
                future.result(timeout=0.5)
                return True
            except TimeoutError:
                if stopped.is_set():
                    future.cancel()
                    return False

    def produce() -> None:
        try:
            for chunk in source:
                if not put(chunk):
                    return
        except BaseException as exc:
            put(exc)
        else:
            put(None)

    threading.Thread(target=produce, name="slicer-exec-stdin", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stopped.set()


class AsyncSlicerClient(BaseClient):
    """The asyncio twin of ``SlicerClient``: same constructor, same methods, awaited."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        token_file: str | None = None,
        timeout: TimeoutArg = DEFAULT_TIMEOUT,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, token, token_file, timeout)
        self._custom_transport = transport is not None
        self._http = self._client(transport or httpx.AsyncHTTPTransport(uds=self._endpoint.uds))
        self._duplex: httpx.AsyncClient | None = None

    def _client(self, transport: httpx.AsyncBaseTransport) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self._endpoint.base_url, headers=self._headers, timeout=self._timeout, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._duplex is not None:
            await self._duplex.aclose()

    async def __aenter__(self) -> AsyncSlicerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, call: Call[T]) -> T:
        request = self._build(self._http, call)
        try:
            response = await self._http.send(request)
        except httpx.TransportError as exc:
            raise self._connection_error(exc) from exc
        return finish(call, response)

    def _stdin_http(self) -> httpx.AsyncClient:
        if self._custom_transport:
            return self._http
        if self._duplex is None:
            self._duplex = self._client(AsyncDuplexTransport(uds=self._endpoint.uds))
        return self._duplex

    # -- daemon ------------------------------------------------------------------------------------

    async def info(self) -> ServerInfo:
        return await self._send(info_call())

    async def healthz(self) -> str:
        return await self._send(healthz_call())

    async def metrics(self) -> str:
        return await self._send(metrics_call())

    # -- host groups and nodes -----------------------------------------------------------------------

    async def host_groups(self) -> list[HostGroup]:
        return await self._send(host_groups_call())

    async def nodes(self, tag: str | None = None, tag_prefix: str | None = None) -> list[Node]:
        return await self._send(nodes_call(tag, tag_prefix))

    async def group_nodes(self, group: str, tag: str | None = None, tag_prefix: str | None = None) -> list[Node]:
        return await self._send(group_nodes_call(group, tag, tag_prefix))

    async def create_node(
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
        return await self._send(
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

    async def delete_node(self, group: str, hostname: str) -> DeleteResult:
        return await self._send(delete_node_call(group, hostname))

    # -- one VM --------------------------------------------------------------------------------------

    async def health(self, hostname: str) -> AgentHealth:
        return await self._send(health_call(hostname))

    async def is_ready(self, hostname: str) -> bool:
        return await self._send(is_ready_call(hostname))

    async def wait_ready(
        self, hostname: str, timeout: float, userdata: bool = False, *, interval: float = 0.1
    ) -> AgentHealth:
        poll = ReadyPoll(hostname, timeout, userdata, interval)
        while True:
            try:
                health = await self._send(health_call(hostname, read_timeout=max(poll.remaining(), 1.0)))
            except SlicerError as exc:
                poll.failed(exc)
            else:
                if poll.ready(health):
                    return health
            await asyncio.sleep(poll.next_delay())

    async def logs(self, hostname: str, lines: int | None = None) -> LogsResult:
        return await self._send(logs_call(hostname, lines))

    async def exec(
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
        stdin: AsyncStdin | None = None,
        base64: bool = False,
    ) -> AsyncGenerator[ExecFrame, None]:
        """Like ``SlicerClient.exec``; a blocking sync ``stdin`` iterable is read on a helper thread."""
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
        http = self._http if stdin is None else self._stdin_http()
        content = None if stdin is None else _stdin_content(stdin)
        request = self._build(http, call, content)
        try:
            response = await http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._connection_error(exc) from exc
        try:
            if response.is_error:
                await response.aread()
                raise api_error(response)
            decoder = FrameDecoder()
            async for line in response.aiter_lines():
                for frame in decoder.feed(line):
                    yield frame
            for frame in decoder.finish():
                yield frame
        except httpx.TransportError as exc:
            raise self._connection_error(exc) from exc
        finally:
            await response.aclose()

    async def exec_buffered(
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
        return await self._send(exec_buffered_call(hostname, params))
