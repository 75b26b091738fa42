"""``BaseClient``: what ``SlicerClient`` and ``AsyncSlicerClient`` both hold (endpoint, timeouts, headers) and how
they turn a ``Call`` into an ``httpx.Request``."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, Iterable
from typing import Any

import httpx

from ._calls import Call
from ._config import DEFAULT_CONNECT_TIMEOUT, Endpoint, request_headers, resolve_endpoint
from ._responses import connection_error
from .errors import SlicerConnectionError

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=DEFAULT_CONNECT_TIMEOUT)

TimeoutArg = float | httpx.Timeout | None


def to_timeout(timeout: TimeoutArg) -> httpx.Timeout:
    return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)


def ssl_context(endpoint: Endpoint) -> ssl.SSLContext | bool:
    """For the transport's ``verify``: httpx's default (its CA bundle) on https. Plain HTTP and unix sockets
    never speak TLS, so they get a context that trusts nothing instead of paying ~50 ms to load the bundle."""
    return True if endpoint.tls else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class BaseClient:
    def __init__(
        self,
        url: str | None,
        token: str | None,
        token_file: str | None,
        timeout: TimeoutArg,
    ) -> None:
        self._endpoint = resolve_endpoint(url)
        self._timeout = to_timeout(timeout)
        self._headers = request_headers(token, token_file)

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
