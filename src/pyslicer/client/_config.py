"""Where the client connects and as whom: the endpoint (URL or unix socket) and the request headers (the
token). The timeouts, which are httpx's, are in ``_base_client``.

Explicit arguments win over ``$SLICER_URL``, ``$SLICER_TOKEN`` and ``$SLICER_TOKEN_FILE``. Nothing here does
network I/O (a token file is read once, when the client is made) or imports httpx.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from pyslicer import __version__
from pyslicer.errors import ConfigError

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_CONNECT_TIMEOUT = 10.0
UDS_BASE_URL = "http://localhost"


class Endpoint:
    """A resolved ``url``: the base URL requests go to, and the socket path when it is a unix socket."""

    __slots__ = ("base_url", "host", "port", "uds", "url")

    def __init__(self, url: str, base_url: str, host: str, port: int, uds: str | None = None) -> None:
        self.url = url
        """What the caller configured, for messages."""
        self.base_url = base_url
        self.host = host
        self.port = port
        self.uds = uds

    @property
    def tls(self) -> bool:
        return self.base_url.startswith("https:")

    def __repr__(self) -> str:
        return f"Endpoint({self.url!r})"


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
        return Endpoint(raw, UDS_BASE_URL, "localhost", 80, uds=os.path.expanduser(path))
    base = raw if "://" in raw else f"http://{raw}"
    try:
        parsed = urlsplit(base)
        port = parsed.port
    except ValueError as exc:
        raise ConfigError(f"invalid slicer URL {raw!r}: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"invalid slicer URL {raw!r}: use http(s)://host:port or a unix socket path")
    if port is None:
        port = 443 if parsed.scheme == "https" else 80
    return Endpoint(raw, base.rstrip("/"), parsed.hostname, port)


def read_token_file(path: str) -> str:
    file = os.path.expanduser(path)
    try:
        with open(file) as handle:
            token = handle.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {file!r}: {exc.strerror or exc}") from exc
    if not token:
        raise ConfigError(f"token file {file!r} is empty")
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


def request_headers(token: str | None, token_file: str | None) -> dict[str, str]:
    """What every request carries: the user agent and, when there is a token, the bearer token."""
    headers = {"User-Agent": f"pyslicer/{__version__}"}
    resolved = resolve_token(token, token_file)
    if resolved:
        headers["Authorization"] = f"Bearer {resolved}"
    return headers
