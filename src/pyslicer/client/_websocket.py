"""What the shell and forward clients share: the WebSocket URL and headers for an endpoint, the options every
connection takes, and how a refused handshake or a close becomes one of the client's errors. Stdlib only; the
``websockets`` library is imported by the modules that connect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from ._responses import error_answer
from .errors import SlicerConnectionError, SlicerUpstreamError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ._config import Endpoint

BAD_GATEWAY = 1014
# one frame of guest output (64 KiB) plus the shell header, with room to spare; nothing larger is expected
MAX_MESSAGE = 1024 * 1024
# what a connection needs from ``websockets``: no compression (terminal bytes are small and latency matters),
# keepalive pings (the server's WebSocket layer answers them), and no proxy from the environment: the daemon
# is reached as httpx reaches it for every other call (a unix socket or the URL given)
CONNECT_OPTIONS: dict[str, Any] = {"compression": None, "max_size": MAX_MESSAGE, "ping_interval": 20, "proxy": None}
# The daemon answers the upgrade once the guest has acted (dialled the forward's target: up to 15 s; started the
# shell: up to 30 s), so the handshake gets that on top of the connect timeout. With only the connect timeout,
# forwards opened many at once on a busy guest timed out while the guest was still dialling.
GUEST_ANSWER_TIMEOUT = 30.0


def connect_options(
    headers: Mapping[str, str], extra: Mapping[str, str] | None, open_timeout: float | None
) -> dict[str, Any]:
    """The keyword arguments of a ``websockets`` connect for a daemon's WebSocket; ``open_timeout`` is the
    client's connect timeout."""
    return {
        **CONNECT_OPTIONS,
        "additional_headers": headers_for(headers, extra),
        "user_agent_header": user_agent(headers),
        "open_timeout": None if open_timeout is None else open_timeout + GUEST_ANSWER_TIMEOUT,
    }


def websocket_url(endpoint: Endpoint, path: str, params: Sequence[tuple[str, str]] = ()) -> str:
    base = endpoint.base_url
    scheme = "wss" if base.startswith("https:") else "ws"
    query = f"?{urlencode(list(params))}" if params else ""
    return f"{scheme}://{base.split('://', 1)[1]}{path}{query}"


def vm_path(hostname: str, what: str) -> str:
    return f"/vm/{quote(hostname, safe='')}/{what}"


def headers_for(base: Mapping[str, str], extra: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Every header but the user agent, which ``websockets`` takes apart."""
    merged = {**base, **(extra or {})}
    return [(k, v) for k, v in merged.items() if k.lower() != "user-agent"]


def user_agent(base: Mapping[str, str]) -> str | None:
    return next((v for k, v in base.items() if k.lower() == "user-agent"), None)


def handshake_error(exc: Exception, url: str, endpoint: Endpoint) -> Exception:
    """The client's error for a failed WebSocket handshake: the daemon's JSON error (a SlicerAPIError with its
    status and code) when it refused, a SlicerConnectionError when it could not be reached."""
    from websockets.exceptions import InvalidStatus

    if isinstance(exc, InvalidStatus):
        response = exc.response
        return error_answer(response.status_code, response.reason_phrase, bytes(response.body or b""), "GET", url)
    reason = str(exc) or type(exc).__name__
    return SlicerConnectionError(f"cannot reach the slicer daemon at {endpoint.url}: {reason}")


def close_error(code: int | None, reason: str) -> Exception | None:
    """The error a close frame reports, or None for a normal end (1000, 1001, or none at all)."""
    if code in (None, 1000, 1001, 1005):
        return None
    if code == BAD_GATEWAY:
        return SlicerUpstreamError(reason or "the forward's target refused the connection")
    return SlicerConnectionError(f"the daemon closed the session ({code}): {reason or 'no reason given'}")


def shell_params(
    uid: int | None, gid: int | None, shell: str | None, cwd: str | None, term: str | None
) -> list[tuple[str, str]]:
    params = [("uid", uid), ("gid", gid), ("shell", shell), ("cwd", cwd), ("term", term)]
    return [(name, str(value)) for name, value in params if value is not None and value != ""]


def closed_error(exc: Exception) -> Exception:
    """What a send on a closed forward or shell raises: the close's own error, else "closed"."""
    rcvd = getattr(exc, "rcvd", None)
    error = close_error(rcvd.code if rcvd else None, rcvd.reason if rcvd else "")
    return error or SlicerConnectionError("the daemon closed the connection")
