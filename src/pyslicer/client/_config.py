"""Where the client connects and as whom: the endpoint (URL or unix socket), the token, the timeouts.

Explicit arguments win over ``$SLICER_URL``, ``$SLICER_TOKEN`` and ``$SLICER_TOKEN_FILE``; nothing here does
network I/O (a token file is read once, when the client is made).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx

from pyslicer.errors import ConfigError

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
UDS_BASE_URL = "http://localhost"

TimeoutArg = float | httpx.Timeout | None


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    """What the caller configured, for messages."""
    base_url: str
    uds: str | None = None

    @property
    def tls(self) -> bool:
        return self.base_url.startswith("https:")

    def ssl_context(self) -> ssl.SSLContext | bool:
        """For the transport's ``verify``: httpx's default (its CA bundle) on https. Plain HTTP and unix sockets
        never speak TLS, so they get a context that trusts nothing instead of paying ~50 ms to load the bundle.
        """
        return True if self.tls else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def is_unix_socket(url: str) -> bool:
    """Whether ``url`` names a unix socket: a path (``/``, ``./``, ``../``, ``~/``), ``unix://`` or ``*.sock``."""
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
