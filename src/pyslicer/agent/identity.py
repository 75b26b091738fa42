"""``identity``: a guest restored from another guest's snapshot becomes itself.

Everything a snapshot shares with its siblings and that anything could observe: the hostname, the machine-id,
eth0's MAC and address, the SSH host keys, and the kernel's RNG state (every restored guest would otherwise draw
the same "random" numbers). The clock is the link's job (CLOCK at READY). All of it in the agent's own process (a
spawn costs ~50-100 ms under TCG).
"""

from __future__ import annotations

import os
import sys

from pyslicer.agent.session import StreamSession
from pyslicer.protocol import Event

RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)
SIOCADDRT, SIOCGIFFLAGS, SIOCSIFFLAGS = 0x890B, 0x8913, 0x8914
SIOCSIFADDR, SIOCSIFNETMASK, SIOCSIFHWADDR = 0x8916, 0x891C, 0x8924
IFF_UP, RTF_UP, RTF_GATEWAY, ARPHRD_ETHER, AF_INET = 0x1, 0x1, 0x2, 1, 2
IFNAME = b"eth0"


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


SSH_DIR = "/etc/ssh"


def drop_ssh_host_keys() -> None:
    """Remove the host keys the snapshot carried and end its sshd: init starts rc.sshd again, which makes this
    guest a key of its own (after the reseed, so not the siblings' key either)."""
    for name in os.listdir(SSH_DIR) if os.path.isdir(SSH_DIR) else ():
        if name.startswith("ssh_host_"):
            os.unlink(f"{SSH_DIR}/{name}")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "sshd":
                    os.kill(int(pid), 15)
        except OSError:
            continue  # gone meanwhile


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


def configure_network(mac: str, address: str, gateway: str) -> None:
    """eth0 down, its new MAC, then (unless ``address`` is empty) its address, up, and the default route; by
    ioctl, not netlink: ``_socket``, ``fcntl`` and ``struct`` are C modules, cheap to import."""
    import _socket
    import fcntl
    import struct

    def ifreq(payload: bytes = b"") -> bytes:
        return struct.pack("16s", IFNAME) + payload.ljust(24, b"\0")

    def sockaddr_in(ip: str) -> bytes:
        return struct.pack("@H2s4s8x", AF_INET, b"", _socket.inet_aton(ip))

    hardware = bytes.fromhex(mac.replace(":", ""))
    if len(hardware) != 6:
        raise ValueError("mac: not six bytes")
    ip, _, prefix = address.partition("/")
    bits = int(prefix or "32")
    if not 0 <= bits <= 32:
        raise ValueError("ip: bad prefix length")
    netmask = _socket.inet_ntoa(struct.pack("!I", (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF))
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        fd = sock.fileno()
        (flags,) = struct.unpack_from("@h", fcntl.ioctl(fd, SIOCGIFFLAGS, ifreq()), 16)
        fcntl.ioctl(fd, SIOCSIFFLAGS, ifreq(struct.pack("@h", flags & ~IFF_UP)))
        fcntl.ioctl(fd, SIOCSIFHWADDR, ifreq(struct.pack("@H6s8x", ARPHRD_ETHER, hardware)))
        if not ip:
            return
        fcntl.ioctl(fd, SIOCSIFADDR, ifreq(sockaddr_in(ip)))
        fcntl.ioctl(fd, SIOCSIFNETMASK, ifreq(sockaddr_in(netmask)))
        fcntl.ioctl(fd, SIOCSIFFLAGS, ifreq(struct.pack("@h", flags | IFF_UP)))
        if gateway:
            # struct rtentry: pad1, dst, gateway, genmask, flags, pad2, pad3, pad4, metric, dev, mtu, window, irtt
            route = struct.pack(
                "@L16s16s16sHhLPhPLLH6x",
                0, sockaddr_in("0.0.0.0"), sockaddr_in(gateway), sockaddr_in("0.0.0.0"),
                RTF_UP | RTF_GATEWAY, 0, 0, 0, 0, 0, 0, 0, 0,
            )  # fmt: skip
            try:  # noqa: SIM105 (contextlib is an import the agent does not otherwise make)
                fcntl.ioctl(fd, SIOCADDRT, route)
            except FileExistsError:
                pass  # a default route is there already
    finally:
        sock.close()


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
            drop_ssh_host_keys()
        except OSError as exc:
            self._fail(f"cannot set the identity: {exc}")
            return
        try:
            configure_network(mac, ip, gateway)
        except (OSError, ValueError) as exc:
            self._fail(f"cannot configure eth0: {exc}")
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
