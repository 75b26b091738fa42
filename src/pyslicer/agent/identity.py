"""``identity``: a guest restored from another guest's snapshot becomes itself.

Everything a snapshot shares with its siblings and that anything could observe: the hostname, the machine-id,
eth0's MAC and address, and the kernel's RNG state (every restored guest would otherwise draw the same
"random" numbers). The clock is the link's job (CLOCK at READY). Files and /proc are written directly; the
network needs one busybox run (no netlink without the socket module, which costs an import under TCG).
"""

from __future__ import annotations

import os
import sys

from pyslicer.agent.session import StreamSession
from pyslicer.protocol import Event

BUSYBOX = "/usr/local/sbin/busybox"
# $1 MAC, $2 address/prefix ("" leaves eth0 down), $3 gateway ("" for none)
NETWORK_SCRIPT = """set -e
ip link set eth0 down
ip link set eth0 address "$1"
ip addr flush dev eth0
if [ -n "$2" ]; then
    ip addr add "$2" dev eth0
    ip link set eth0 up
    if [ -n "$3" ]; then ip route replace default via "$3"; fi
fi
"""
RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)


def _write(path: str, text: str) -> None:
    staging = f"{path}.slicer-tmp"
    with open(staging, "w") as f:
        f.write(text)
    os.replace(staging, path)


def set_names(hostname: str, machine_id: str) -> None:
    with open("/proc/sys/kernel/hostname", "w") as f:
        f.write(hostname)
    _write("/etc/hostname", hostname + "\n")
    _write(
        "/etc/hosts",
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )
    _write("/etc/machine-id", machine_id + "\n")


def reseed(seed: bytes) -> None:
    import fcntl  # C modules, cheap; only a restored guest needs them
    import struct

    fd = os.open("/dev/random", os.O_WRONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, RNDADDENTROPY, struct.pack("ii", len(seed) * 8, len(seed)) + seed)
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)
    random = sys.modules.get("random")
    if random is not None:
        random.seed()


def _text(request: dict[str, object], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or "\0" in value or "\n" in value:
        raise ValueError(f"{key}: not a one-line string")
    return value


class IdentitySession(StreamSession):
    """Answers ``identity`` with ``done`` once every part is in place, or an error naming the part."""

    def start(self) -> None:
        request = self._request
        try:
            hostname = _text(request, "hostname")
            machine_id = _text(request, "machine_id")
            mac, ip, gateway = _text(request, "mac"), _text(request, "ip"), _text(request, "gateway")
            seed = bytes.fromhex(_text(request, "seed"))
            if not hostname or len(hostname) > 64 or "/" in hostname:
                raise ValueError("hostname: not a hostname")
            if len(machine_id) != 32 or machine_id.strip("0123456789abcdef"):
                raise ValueError("machine_id: not 32 hex digits")
        except ValueError as exc:
            self._fail(str(exc))
            return
        try:
            reseed(seed)
            set_names(hostname, machine_id)
        except OSError as exc:
            self._fail(f"cannot set the identity: {exc}")
            return
        from pyslicer.agent.spawn import DEFAULT_PATH, spawn, watch_exit

        try:
            pid = spawn(
                [BUSYBOX, "sh", "-c", NETWORK_SCRIPT, "identity", mac, ip, gateway],
                {"PATH": DEFAULT_PATH},
                "/",
                (None, 2, 2),
            )
        except (OSError, ValueError) as exc:
            self._fail(f"cannot configure eth0: {exc}")
            return
        watch_exit(self._loop, pid, self._network_done)

    def _network_done(self, code: int) -> None:
        if self._cancelled:
            return
        if code != 0:
            self._fail(f"configuring eth0 failed (exit {code}; see the console)")
            return
        self._send_event({"type": Event.DONE})
        self._on_finish(self)

    def _fail(self, error: str) -> None:
        self._send_event({"type": Event.ERROR, "error": error})
        self._on_finish(self)

    def on_data(self, channel: int, data: bytes) -> None:
        pass

    def on_eof(self, channel: int) -> None:
        pass

    def on_window(self, increment: int) -> None:
        pass

    def cancel(self) -> None:
        self._cancelled = True
