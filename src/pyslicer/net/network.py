"""Namespace, bridges, taps and address leases, driven through iproute2."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyslicer.config import HostGroupConfig
from pyslicer.errors import NetworkError


async def ip(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {stderr.decode(errors='replace').strip()}")


async def ip_json(*args: str) -> list[dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        "ip", "-j", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        raise NetworkError(f"ip -j {' '.join(args)}: {stderr.decode(errors='replace').strip()}")
    answer = json.loads(stdout or b"[]")
    return [item for item in answer if isinstance(item, dict)] if isinstance(answer, list) else []


@dataclass(frozen=True)
class Lease:
    """A VM's place on its group's network."""

    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address
    tap: str
    mac: str
    netns: str

    @property
    def kernel_args(self) -> dict[str, str]:
        return {"slicer.ip": str(self.address), "slicer.gw": str(self.gateway)}


class NetworkNamespace:
    def __init__(self, data_dir: Path) -> None:
        self.name = "pyslicer-" + hashlib.sha256(str(data_dir).encode()).hexdigest()[:10]

    @property
    def exists(self) -> bool:
        return Path("/run/netns", self.name).exists()

    async def create(self) -> None:
        """Make the namespace; one left by an earlier daemon is kept, with the taps of the VMs still running."""
        if not self.exists:
            await ip("netns", "add", self.name)
        await ip("-n", self.name, "link", "set", "lo", "up")

    async def links(self, *kind: str) -> set[str]:
        """The names of the links in it (of one ``type``, e.g. ``"tun"``, when given)."""
        found = await ip_json("-n", self.name, "link", "show", *(("type", *kind) if kind else ()))
        return {str(link["ifname"]) for link in found if "ifname" in link}

    async def taps(self) -> set[str]:
        """The names of the taps in it (none when it does not exist)."""
        return await self.links("tun") if self.exists else set()

    async def remove_link(self, name: str) -> None:
        """Delete a link; nothing happens when it (or the namespace) is already gone."""
        if self.exists:
            with contextlib.suppress(NetworkError):
                await ip("-n", self.name, "link", "delete", name)

    async def delete(self) -> None:
        if self.exists:
            await ip("netns", "delete", self.name)


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

    async def create(self) -> None:
        """Set up the group's bridge; one left by an earlier daemon is taken as it is."""
        if self.isolated:
            return
        ns = self.netns.name
        if self.bridge not in await self.netns.links():
            await ip("-n", ns, "link", "add", self.bridge, "type", "bridge")
        addresses = await ip_json("-n", ns, "addr", "show", "dev", self.bridge)
        present = {
            f"{info.get('local')}/{info.get('prefixlen')}" for link in addresses for info in link.get("addr_info", [])
        }
        if str(self.gateway) not in present:
            await ip("-n", ns, "addr", "add", str(self.gateway), "dev", self.bridge)
        await ip("-n", ns, "link", "set", self.bridge, "up")

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
        return [
            (self.gateway, ipaddress.IPv4Interface(f"{host}/{prefix}"))
            for host in self.gateway.network.hosts()
            if host != self.gateway.ip
        ]

    async def lease(self, hostname: str, index: int, taken: set[str], wanted: str = "") -> Lease:
        """Set up a tap for a VM and give it an address: ``wanted`` when still free, else the first free."""
        pairs = self._subnets()
        choice = next((pair for pair in pairs if str(pair[1].ip) == wanted and wanted not in taken), None)
        choice = choice or next((pair for pair in pairs if str(pair[1].ip) not in taken), None)
        if choice is None:
            raise NetworkError(f"host group {self.group}: no free addresses left", code="no_addresses")
        gateway, address = choice
        tap = f"{self.tap_prefix}{index}"
        ns = self.netns.name
        await ip("-n", ns, "tuntap", "add", "dev", tap, "mode", "tap")
        try:
            if self.isolated:
                await ip("-n", ns, "addr", "add", str(gateway), "dev", tap)
            else:
                await ip("-n", ns, "link", "set", tap, "master", self.bridge)
            await ip("-n", ns, "link", "set", tap, "up")
        except NetworkError:
            await self.release(tap)
            raise
        return Lease(address=address, gateway=gateway.ip, tap=tap, mac=mac_of(hostname), netns=ns)

    def adopt(self, hostname: str, tap: str, address: str) -> Lease | None:
        """The lease of a VM that kept running while no daemon was here (its tap exists); None when
        ``address`` is not one of this group's."""
        pair = next((pair for pair in self._subnets() if str(pair[1].ip) == address), None)
        if pair is None or self.tap_index(tap) is None:
            return None
        gateway, guest = pair
        return Lease(address=guest, gateway=gateway.ip, tap=tap, mac=mac_of(hostname), netns=self.netns.name)

    async def release(self, tap: str) -> None:
        await self.netns.remove_link(tap)  # (may be gone with its VM already)


def mac_of(hostname: str) -> str:
    digest = hashlib.sha256(hostname.encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])
