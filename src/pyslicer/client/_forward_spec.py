"""What both forwarders share (stdlib only, so the blocking one never imports asyncio), and the ``-L`` specs for
``slicer vm forward``, in the Go SDK's formats (``forward.ParseAddressMapping``)::

    127.0.0.1:9000                         listen on 127.0.0.1:9000, forward to 127.0.0.1:9000
    9001:127.0.0.1:9000                    listen on 127.0.0.1:9001, forward to 127.0.0.1:9000
    0:127.0.0.1:9000                       a free local port
    0.0.0.0:9000:127.0.0.1:9000            fully explicit
    127.0.0.1:9000:/var/run/docker.sock    TCP locally, a unix socket in the guest
    9000:/var/run/docker.sock              the same on 127.0.0.1:9000
    /tmp/docker.sock:/var/run/docker.sock  unix socket to unix socket (a relative local path is made absolute)

Where no local address is given this listens on loopback, as ``ssh -L`` does (the Go SDK's code takes the
guest's host for the three-part form and 0.0.0.0 for a port to a socket; exposing a guest's docker socket to
the network by default is not a choice to copy). Stdlib only.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class ForwardSpec:
    """One local listener (TCP ``listen_host:listen_port``, or the unix socket ``listen_path``) and the
    target the guest connects to (``upstream``: ``host:port`` or ``unix:/path``, as X-Inlets-Upstream)."""

    spec: str
    upstream: str
    listen_host: str = ""
    listen_port: int = 0
    listen_path: str = ""

    @property
    def local(self) -> str:
        return self.listen_path or f"{self.listen_host}:{self.listen_port}"


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../")) or "/" in text


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"invalid port {text!r} in forward spec {spec!r}")
    return int(text)


def parse_forward_spec(spec: str) -> ForwardSpec:
    """Raises ValueError naming the spec."""
    text = spec.strip()
    if not text:
        raise ValueError("empty forward spec")
    local_part, sep, remote_part = text.rpartition(":")
    if sep and local_part and _looks_like_path(local_part) and _looks_like_path(remote_part):
        return ForwardSpec(text, f"unix:{remote_part}", listen_path=os.path.abspath(local_part))
    boundary = text.find(":/")
    if boundary != -1:
        listen, socket_path = text[:boundary], text[boundary + 1 :]
        host, sep, port = listen.rpartition(":")
        return ForwardSpec(
            text, f"unix:{socket_path}", listen_host=host if sep else LOOPBACK, listen_port=_port(port, text)
        )
    parts = text.split(":")
    if len(parts) == 2:
        listen_port = _port(parts[1], text)
        return ForwardSpec(text, f"{parts[0]}:{listen_port}", listen_host=parts[0], listen_port=listen_port)
    if len(parts) == 3:
        return ForwardSpec(
            text, f"{parts[1]}:{_port(parts[2], text)}", listen_host=LOOPBACK, listen_port=_port(parts[0], text)
        )
    if len(parts) == 4:
        return ForwardSpec(
            text, f"{parts[2]}:{_port(parts[3], text)}", listen_host=parts[0], listen_port=_port(parts[1], text)
        )
    raise ValueError(f"invalid forward spec {spec!r}: expected [LOCAL_ADDR:]LOCAL_PORT:HOST:PORT or socket paths")


CHUNK = 64 * 1024


def remove_stale_socket(path: str) -> None:
    """Remove a socket file left at ``path``; anything else there is not ours (FileExistsError)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    os.unlink(path)


def forward_headers(upstream: str) -> dict[str, str]:
    return {
        "X-Inlets-Upstream": upstream,
        "X-Inlets-Mode": "local",
        "X-Inlets-Client-ID": socket.gethostname(),
        "X-Slicer-Half-Close": "true",
    }


@dataclass(frozen=True, slots=True)
class Listener:
    spec: str
    local: str  # 127.0.0.1:8080 or a socket path
    upstream: str
    port: int  # the bound TCP port (0 for a unix socket)


ErrorCallback = Callable[[ForwardSpec, Exception], None]
