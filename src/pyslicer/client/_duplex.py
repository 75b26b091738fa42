"""The full-duplex httpx transports for exec with stdin: the blocking one, and what it shares with the asyncio
one (``_duplex_async``).

Both speak HTTP/1.1 with h11 over one connection per request, a writer (a thread here, a task there) sending the
body while the caller reads the answer (``_exchange`` says why). They are written by hand, not generated like
the clients: the blocking one is ``_exchange.Exchange`` with httpx's errors, and only the asyncio one speaks TLS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import h11
import httpx

from ._exchange import Exchange, connect


def request_head(request: httpx.Request) -> h11.Request:
    return h11.Request(method=request.method, target=request.url.raw_path, headers=request.headers.raw)


def response_for(head: h11.Response, stream: httpx.SyncByteStream | httpx.AsyncByteStream) -> httpx.Response:
    return httpx.Response(
        head.status_code,
        headers=head.headers.raw_items(),
        stream=stream,
        extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
    )


@contextlib.contextmanager
def connect_errors(request: httpx.Request) -> Iterator[None]:
    """Socket errors while connecting, as httpx names them (the sync and async transports share this)."""
    try:
        yield
    except TimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "timed out", request=request) from exc
    except OSError as exc:
        raise httpx.ConnectError(str(exc), request=request) from exc


@contextlib.contextmanager
def write_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except TimeoutError as exc:
        raise httpx.WriteTimeout(str(exc) or "timed out", request=request) from exc
    except OSError as exc:
        raise httpx.WriteError(str(exc), request=request) from exc


@contextlib.contextmanager
def read_errors(request: httpx.Request) -> Iterator[None]:
    """Socket and HTTP errors while reading the response, as httpx names them."""
    try:
        yield
    except TimeoutError as exc:
        raise httpx.ReadTimeout(str(exc) or "timed out", request=request) from exc
    except OSError as exc:
        raise httpx.ReadError(str(exc), request=request) from exc
    except h11.RemoteProtocolError as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc


def timeouts(request: httpx.Request) -> tuple[float | None, float | None]:
    timeout = request.extensions.get("timeout", {})
    return timeout.get("connect"), timeout.get("read")


class DuplexTransport(httpx.BaseTransport):
    """Plain HTTP over TCP or a unix socket (no TLS: see ``_exchange``)."""

    speaks_tls = False

    def __init__(self, uds: str | None = None) -> None:
        self._uds = uds

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(
                f"full-duplex exec supports http and unix sockets, not {url.scheme}", request=request
            )
        if not isinstance(request.stream, httpx.SyncByteStream):
            raise TypeError("the blocking duplex transport needs a blocking request body")
        connect_timeout, read_timeout = timeouts(request)
        with connect_errors(request):
            sock = connect(url.host, url.port or 80, self._uds, connect_timeout)
        sock.settimeout(read_timeout)
        exchange = Exchange(sock, request.method.encode(), url.raw_path, request.headers.raw, request.stream)
        try:
            with write_errors(request):
                exchange.send_head()
            with read_errors(request):
                head = exchange.read_head()
        except BaseException:
            exchange.close()
            raise
        return response_for(head, _Body(exchange, request))


class _Body(httpx.SyncByteStream):
    def __init__(self, exchange: Exchange, request: httpx.Request) -> None:
        self._exchange = exchange
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        with read_errors(self._request):
            yield from self._exchange.iter_body()

    def close(self) -> None:
        self._exchange.close()
