"""``SocketExecClient``: ``exec`` alone, exactly as ``SlicerClient.exec`` does it, sent over ``_exchange`` (h11 on a
plain socket) instead of httpx.

The CLI's ``slicer vm exec`` runs on it: importing httpx costs more than the rest of the CLI's start-up together
(40-60 ms on the machines this was measured on; ``bench/bench_cli.py``), and a command line that runs one
command pays it on every call. Only the sending is its own: the query (``exec_params``), the headers, the frame
decoder and the error mapping are the clients'. Plain HTTP and unix sockets only; for https use ``SlicerClient``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator, Sequence
from types import TracebackType
from urllib.parse import urlencode

import h11

from pyslicer.errors import NotSupported

from ._calls import Call, EnvArg, exec_params, exec_stream_call
from ._config import DEFAULT_CONNECT_TIMEOUT, request_headers, resolve_endpoint
from ._exchange import Exchange, connect
from ._exec_output import ExecFrame, FrameDecoder
from ._responses import broken_connection, error_answer, unreachable
from ._stdin import Stdin, stdin_body


class SocketExecClient:
    """Runs commands like ``SlicerClient.exec``: same constructor arguments (but ``timeout``: exec has no read
    timeout, and ``connect_timeout`` is the connect one), same ``exec`` arguments, frames and errors.

    Raises ``NotSupported`` for an https ``url``. Each ``exec`` opens its own connection.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        token_file: str | None = None,
        *,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self._endpoint = resolve_endpoint(url)
        if self._endpoint.tls:
            raise NotSupported(f"{type(self).__name__} speaks plain HTTP and unix sockets; use SlicerClient for https")
        self._headers = request_headers(token, token_file)
        self._connect_timeout = connect_timeout

    @property
    def url(self) -> str:
        """The URL or socket path this client talks to, as configured."""
        return self._endpoint.url

    def close(self) -> None:
        """Nothing to release (each exec closes its connection); here so it can stand in for ``SlicerClient``."""

    def __enter__(self) -> SocketExecClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self._endpoint.url!r})"

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
        """``SlicerClient.exec``: arguments are checked now; the request is sent when iteration starts, and
        closing the iterator early closes the connection."""
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
        return self._frames(call, None if stdin is None else stdin_body(stdin))

    def _frames(self, call: Call[None], body: bytes | Iterable[bytes] | None) -> Generator[ExecFrame, None, None]:
        endpoint = self._endpoint
        target = f"{call.path}?{urlencode(call.params)}" if call.params else call.path
        headers = [(b"Host", self._host().encode()), (b"Accept", b"*/*")]
        headers += [(name.encode(), value.encode()) for name, value in self._headers.items()]
        if body is None:
            headers.append((b"Content-Length", b"0"))
        elif isinstance(body, bytes):
            headers.append((b"Content-Length", str(len(body)).encode()))
            body = (body,)
        else:
            headers.append((b"Transfer-Encoding", b"chunked"))
        try:
            sock = connect(endpoint.host, endpoint.port, endpoint.uds, self._connect_timeout)
        except TimeoutError as exc:
            raise unreachable(endpoint, "connection timed out") from exc
        except OSError as exc:
            raise unreachable(endpoint, str(exc) or type(exc).__name__) from exc
        sock.settimeout(None)  # a command runs as long as it runs
        exchange = Exchange(sock, call.method.encode(), target.encode(), headers, body)
        try:
            exchange.send_head()
            head = exchange.read_head()
            if head.status_code >= 400:
                content = b"".join(exchange.iter_body())
                reason = head.reason.decode("latin-1")
                raise error_answer(head.status_code, reason, content, call.method, endpoint.base_url + target)
            decoder = FrameDecoder()
            for line in _lines(exchange.iter_body()):
                yield from decoder.feed(line)
            yield from decoder.finish()
        except (OSError, h11.ProtocolError) as exc:
            raise broken_connection(endpoint, str(exc) or type(exc).__name__) from exc
        finally:
            exchange.close()

    def _host(self) -> str:
        endpoint = self._endpoint
        if endpoint.uds is not None:
            return endpoint.host
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        return host if endpoint.port == 80 else f"{host}:{endpoint.port}"


def _lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """The NDJSON lines of a body, however it was cut into chunks."""
    parts: list[bytes] = []
    for chunk in chunks:
        start = 0
        while (cut := chunk.find(b"\n", start)) >= 0:
            parts.append(chunk[start:cut])
            yield b"".join(parts).decode("utf-8", "replace")
            parts = []
            start = cut + 1
        if start < len(chunk):
            parts.append(chunk[start:])
    if parts:
        yield b"".join(parts).decode("utf-8", "replace")
