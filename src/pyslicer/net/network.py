"""Namespace, bridges, taps, the uplink and address leases, driven over netlink (pyroute2)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import hashlib
import ipaddress
import os
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pyslicer.config import DaemonNetworkConfig, HostGroupConfig
from pyslicer.errors import ConfigError, Conflict, InvalidArgument, NetworkError

UPLINK = "uplink0"  # the daemon's end of the uplink, inside its namespace


@dataclass(frozen=True)
class Lease:
    """A VM's place on its group's network."""

    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address
    tap: str
    mac: str
    netns: str  # "" when the taps are in the daemon's own namespace
    dns: tuple[ipaddress.IPv4Address, ...] = ()

    @property
    def kernel_args(self) -> dict[str, str]:
        args = {"slicer.ip": str(self.address), "slicer.gw": str(self.gateway)}
        if self.dns:
            args["slicer.dns"] = ",".join(map(str, self.dns))
        return args


class NetworkNamespace:
    """The daemon's network namespace (``pyslicer-<hash of the data dir>``), or, with ``host``, the namespace
    the daemon runs in (then only what the daemon made there is its own)."""

    def __init__(self, data_dir: Path, *, host: bool = False) -> None:
        self.tag = hashlib.sha256(str(data_dir).encode()).hexdigest()[:10]
        self.host = host
        self.name = "" if host else "pyslicer-" + self.tag

    @property
    def exists(self) -> bool:
        return self.host or Path("/run/netns", self.name).exists()

    @contextlib.asynccontextmanager
    async def netlink(self, netns: str | None = None) -> AsyncIterator[Netlink]:
        """A netlink socket in this namespace (or in ``netns``). Raises NetworkError when it cannot be opened
        or a call fails."""
        target = self.name if netns is None else netns
        try:
            async with Netlink.open(target) as ipr:
                yield ipr
        except (NetlinkError, OSError) as exc:
            raise NetworkError(f"netlink in namespace {target or '(host)'}: {exc}") from None

    async def nsexec(self, *argv: str, stdin: bytes | None = None) -> bytes:
        """Run a command inside this namespace; its stdout. Raises NetworkError when it fails."""
        prefix = ["nsenter", f"--net=/run/netns/{self.name}"] if self.name else []
        try:
            process = await asyncio.create_subprocess_exec(
                *prefix,
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise NetworkError(f"{argv[0]}: {exc.strerror or exc}") from None
        stdout, stderr = await process.communicate(stdin)
        if process.returncode != 0:
            raise NetworkError(f"{' '.join(argv)}: {stderr.decode(errors='replace').strip()[:500]}")
        return stdout

    async def create(self) -> None:
        """Make the namespace; one left by an earlier daemon is kept, with the taps of the VMs still running."""
        if not self.exists:
            process = await asyncio.create_subprocess_exec(
                "ip", "netns", "add", self.name, stderr=asyncio.subprocess.PIPE
            )
            _, stderr = await process.communicate()
            if process.returncode != 0:
                raise NetworkError(f"ip netns add {self.name}: {stderr.decode(errors='replace').strip()}")
        if not self.host:
            async with self.netlink() as ipr:
                await ipr.link("set", index=1, state="up")
            # Forwarding is safe to turn on here: the policy's forward chain drops what no VM's rules accept.
            await self.nsexec("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")

    async def links(self, kind: str | None = None) -> set[str]:
        """The names of the links in it (of one kind, e.g. ``"tun"``, when given); none when it does not exist."""
        if not self.exists:
            return set()
        found: set[str] = set()
        async with self.netlink() as ipr:
            for link in await ipr.link("dump"):
                info = link.get_attr("IFLA_LINKINFO")
                if kind is None or (info is not None and info.get_attr("IFLA_INFO_KIND") == kind):
                    found.add(str(link.get_attr("IFLA_IFNAME")))
        return found

    async def taps(self) -> set[str]:
        return await self.links("tun")

    async def index_of(self, ipr: Netlink, name: str) -> int | None:
        found = await ipr.link_lookup(ifname=name)
        return int(found[0]) if found else None

    async def remove_link(self, name: str) -> None:
        """Delete a link; nothing happens when it (or the namespace) is already gone."""
        if not self.exists:
            return
        with contextlib.suppress(NetworkError, NetlinkError):
            async with self.netlink() as ipr:
                index = await self.index_of(ipr, name)
                if index is not None:
                    await ipr.link("del", index=index)

    async def delete(self) -> None:
        if not self.host and self.exists:
            process = await asyncio.create_subprocess_exec(
                "ip", "netns", "delete", self.name, stderr=asyncio.subprocess.PIPE
            )
            _, stderr = await process.communicate()
            if process.returncode != 0:
                raise NetworkError(f"ip netns delete {self.name}: {stderr.decode(errors='replace').strip()}")


CLONE_NEWNET = 0x40000000


def _enter_netns(name: str) -> None:
    """Move the calling thread (only it) into the named network namespace."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {name}: {os.strerror(errno)}")
    finally:
        os.close(fd)


class Netlink:
    """pyroute2's blocking ``IPRoute``, its calls run on a thread of its own (pyroute2's asyncio socket does not
    run on uvloop, which has no AF_NETLINK datagram transport). The thread enters the namespace itself: pyroute2's
    ``netns=`` forks a helper, and a child sharing uvloop's signal wakeup fd makes the daemon see signals it never
    got. Dumps come back as lists."""

    def __init__(self, executor: concurrent.futures.ThreadPoolExecutor, ipr: Any) -> None:
        self._executor = executor
        self._ipr = ipr

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, netns: str) -> AsyncIterator[Netlink]:
        loop = asyncio.get_running_loop()
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink") as executor:

            def connect() -> Any:
                if netns:
                    _enter_netns(netns)
                return IPRoute()

            ipr = await loop.run_in_executor(executor, connect)
            try:
                yield cls(executor, ipr)
            finally:
                await loop.run_in_executor(executor, ipr.close)

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        def call() -> Any:
            answer = getattr(self._ipr, method)(*args, **kwargs)
            return list(answer) if args and args[0] == "dump" else answer

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def link(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("link", *args, **kwargs)

    async def addr(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("addr", *args, **kwargs)

    async def route(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("route", *args, **kwargs)

    async def link_lookup(self, **kwargs: Any) -> list[int]:
        found = await self._call("link_lookup", **kwargs)
        return [int(index) for index in found]


async def ensure_address(ipr: Netlink, index: int, address: ipaddress.IPv4Interface) -> None:
    present = {(str(a.get_attr("IFA_ADDRESS")), int(a["prefixlen"])) for a in await ipr.addr("dump", index=index)}
    if (str(address.ip), address.network.prefixlen) not in present:
        await ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)


class Uplink:
    """A veth pair out of the daemon's namespace: its end (``uplink0``) holds ``uplink_address`` and the default
    route; the far end, in the host's namespace or a named one (one playing the outside, in tests), holds the
    /30's other address. Egress is NAT (masquerade) on the daemon's end, set by the policy."""

    def __init__(self, config: DaemonNetworkConfig, netns: NetworkNamespace) -> None:
        self.netns = netns
        self.target = "" if config.uplink == "host" else config.uplink
        self.enabled = bool(config.uplink) and not netns.host
        self.address = config.uplink_address
        hosts = list(self.address.network.hosts())
        self.peer_address = ipaddress.IPv4Interface(
            f"{next(h for h in hosts if h != self.address.ip)}/{self.address.network.prefixlen}"
        )
        self.peer_name = f"pu-{netns.tag}"  # unique per daemon in the far namespace

    async def create(self) -> None:
        """Set up the pair (one left by an earlier daemon is kept). Raises NetworkError."""
        if not self.enabled:
            return
        if self.target and not Path("/run/netns", self.target).exists():
            raise NetworkError(f"config.network.uplink: network namespace {self.target!r} does not exist")
        async with self.netns.netlink() as ipr:
            index = await self.netns.index_of(ipr, UPLINK)
            if index is None:
                async with self.netns.netlink(self.target) as far:
                    stale = await self.netns.index_of(far, self.peer_name)
                    if stale is not None:
                        await far.link("del", index=stale)
                    await far.link(
                        "add", ifname=self.peer_name, kind="veth", peer={"ifname": UPLINK, "net_ns_fd": self.netns.name}
                    )
                    peer = await self.netns.index_of(far, self.peer_name)
                    assert peer is not None
                    await ensure_address(far, peer, self.peer_address)
                    await far.link("set", index=peer, state="up")
                index = await self.netns.index_of(ipr, UPLINK)
                if index is None:
                    raise NetworkError(f"the uplink {UPLINK} did not appear in {self.netns.name}")
            await ensure_address(ipr, index, self.address)
            await ipr.link("set", index=index, state="up")
            await ipr.route("replace", dst="0.0.0.0/0", gateway=str(self.peer_address.ip), oif=index)

    async def delete(self) -> None:
        """Remove the pair (removing either end removes both)."""
        if self.enabled:
            await self.netns.remove_link(UPLINK)


class GroupNetwork:
    """Bridge mode: the gateway on a bridge, one tap per VM on it. Isolated mode: no bridge; each VM
    gets a /30 of ``range`` with the gateway on its own tap, so VMs cannot reach each other."""

    def __init__(self, group: HostGroupConfig, index: int, netns: NetworkNamespace) -> None:
        network = group.network
        self.group = group.name
        self.netns = netns
        self.isolated = network is not None and network.mode == "isolated"
        gateway = network.gateway if network is not None and network.gateway is not None else None
        self.gateway = gateway or ipaddress.IPv4Interface(f"192.168.{137 + index}.1/24")
        self.range = network.range if network is not None and network.range is not None else None
        self.bridge = (network.bridge if network is not None and network.bridge else f"br{group.name}")[:15]
        prefix = network.tap_prefix if network is not None and network.tap_prefix else f"tap{group.name}"
        self.tap_prefix = prefix[:11]
        self.pool = tuple(network.addresses) if network is not None else ()
        self.egress = network.egress if network is not None else True
        self.dns = tuple(network.dns_servers) if network is not None else ()
        self.allow = tuple(network.allow) if network is not None else ()
        self.drop = tuple(network.drop) if network is not None else ()

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        """Every address its VMs (and their gateways) may have."""
        return self.range if self.isolated and self.range is not None else self.gateway.network

    @property
    def mode(self) -> str:
        return "isolated" if self.isolated else "bridge"

    async def create(self) -> None:
        """Set up the group's bridge; one left by an earlier daemon is taken as it is."""
        if self.isolated:
            return
        async with self.netns.netlink() as ipr:
            index = await self.netns.index_of(ipr, self.bridge)
            if index is None:
                await ipr.link("add", ifname=self.bridge, kind="bridge")
                index = await self.netns.index_of(ipr, self.bridge)
                assert index is not None
            await ensure_address(ipr, index, self.gateway)
            await ipr.link("set", index=index, state="up")

    async def delete(self) -> None:
        """Remove the bridge (with the taps of the host namespace: a namespace of its own goes whole)."""
        if not self.isolated:
            await self.netns.remove_link(self.bridge)

    def tap_index(self, tap: str) -> int | None:
        """The index in a tap name of this group's, else None."""
        match = re.fullmatch(re.escape(self.tap_prefix) + r"(\d+)", tap)
        return int(match.group(1)) if match else None

    def _subnets(self) -> list[tuple[ipaddress.IPv4Interface, ipaddress.IPv4Interface]]:
        """(gateway, guest) address pairs, in allocation order."""
        if self.isolated:
            assert self.range is not None
            return [
                (ipaddress.IPv4Interface(f"{net[1]}/30"), ipaddress.IPv4Interface(f"{net[2]}/30"))
                for net in self.range.subnets(new_prefix=30)
            ]
        prefix = self.gateway.network.prefixlen
        hosts: Iterable[ipaddress.IPv4Address] = self.pool or self.gateway.network.hosts()
        return [
            (self.gateway, ipaddress.IPv4Interface(f"{host}/{prefix}")) for host in hosts if host != self.gateway.ip
        ]

    def check_wanted(self, wanted: str, taken: set[str]) -> None:
        """Raises InvalidArgument (code ``ip``) for a requested address that is malformed, not one this group
        hands out, or in use."""
        try:
            address = ipaddress.IPv4Address(wanted)
        except ValueError:
            raise InvalidArgument(f"ip: {wanted!r} is not an IPv4 address", code="ip") from None
        if all(guest.ip != address for _, guest in self._subnets()):
            where = f"the pool of host group {self.group}" if self.pool else f"{self.subnet}"
            if self.isolated:
                where = f"the VM addresses (the second of each /30) of {self.subnet}"
            raise InvalidArgument(f"ip: {address} is not in {where}", code="ip")
        if str(address) in taken:
            raise InvalidArgument(f"ip: {address} is already in use", code="ip")

    def choose(self, taken: set[str], wanted: str = "") -> tuple[ipaddress.IPv4Interface, ipaddress.IPv4Interface]:
        """The (gateway, guest) pair for a VM: ``wanted`` when still free, else the first free. Raises Conflict
        (code ``no_addresses``) when every address is in use."""
        pairs = self._subnets()
        choice = next((pair for pair in pairs if str(pair[1].ip) == wanted and wanted not in taken), None)
        choice = choice or next((pair for pair in pairs if str(pair[1].ip) not in taken), None)
        if choice is None:
            source = "addresses" if self.pool else ("range" if self.isolated else "gateway")
            raise Conflict(
                f"host group {self.group}: network.{source} {self.subnet} has no free address left "
                f"({len(pairs)} in use)",
                code="no_addresses",
            )
        return choice

    async def lease(self, hostname: str, index: int, taken: set[str], wanted: str = "") -> Lease:
        """Set up a tap for a VM and give it an address: ``wanted`` when still free, else the first free.
        Raises Conflict when none is left, NetworkError when the tap cannot be made."""
        gateway, address = self.choose(taken, wanted)
        tap = f"{self.tap_prefix}{index}"
        try:
            async with self.netns.netlink() as ipr:
                stale = await self.netns.index_of(ipr, tap)
                if stale is not None:
                    await ipr.link("del", index=stale)
                await ipr.link("add", ifname=tap, kind="tuntap", mode="tap")
                tap_index = await self.netns.index_of(ipr, tap)
                assert tap_index is not None
                if self.isolated:
                    await ensure_address(ipr, tap_index, gateway)
                    await ipr.link("set", index=tap_index, state="up")
                else:
                    bridge = await self.netns.index_of(ipr, self.bridge)
                    if bridge is None:
                        raise NetworkError(f"host group {self.group}: its bridge {self.bridge} is gone")
                    await ipr.link("set", index=tap_index, master=bridge, state="up")
        except (NetworkError, NetlinkError) as exc:
            await self.release(tap)
            raise NetworkError(f"host group {self.group}: cannot set up tap {tap}: {exc}") from None
        return self._lease(hostname, gateway, address, tap)

    def _lease(
        self, hostname: str, gateway: ipaddress.IPv4Interface, address: ipaddress.IPv4Interface, tap: str
    ) -> Lease:
        return Lease(
            address=address, gateway=gateway.ip, tap=tap, mac=mac_of(hostname), netns=self.netns.name, dns=self.dns
        )

    def adopt(self, hostname: str, tap: str, address: str) -> Lease | None:
        """The lease of a VM that kept running while no daemon was here (its tap exists); None when
        ``address`` is not one of this group's."""
        pair = next((pair for pair in self._subnets() if str(pair[1].ip) == address), None)
        if pair is None or self.tap_index(tap) is None:
            return None
        return self._lease(hostname, pair[0], pair[1], tap)

    async def release(self, tap: str) -> None:
        await self.netns.remove_link(tap)  # (may be gone with its VM already)


def check_networks(groups: Iterable[GroupNetwork], uplink: Uplink | None) -> None:
    """Raises ConfigError naming the field when two groups' networks (or one and the uplink's) overlap, or two
    groups share a bridge."""
    seen: list[tuple[str, ipaddress.IPv4Network]] = []
    if uplink is not None and uplink.enabled:
        seen.append(("config.network.uplink_address", uplink.address.network))
    bridges: dict[str, str] = {}
    for index, group in enumerate(groups):
        field = f"config.host_groups[{index}].network.{'range' if group.isolated else 'gateway'}"
        for other, subnet in seen:
            if group.subnet.overlaps(subnet):
                raise ConfigError(f"{field}: {group.subnet} overlaps {subnet} of {other}")
        seen.append((field, group.subnet))
        if not group.isolated:
            if group.bridge in bridges:
                raise ConfigError(
                    f"config.host_groups[{index}].network.bridge: {group.bridge!r} is also the bridge of "
                    f"{bridges[group.bridge]}"
                )
            bridges[group.bridge] = f"host group {group.group}"


def mac_of(hostname: str) -> str:
    digest = hashlib.sha256(hostname.encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])
