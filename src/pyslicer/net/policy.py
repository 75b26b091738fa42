"""What each VM may reach, enforced by nftables (its JSON interface, ``nft -j -f -``) in one table the daemon owns.

The table, ``inet pyslicer`` in the daemon's namespace (``pyslicer_<tag>`` in the host's), holds:

- ``forward`` (policy drop in a namespace of its own): replies pass, then ``iifname . ip saddr`` picks the
  sending VM's chain from the map ``vms``; a packet no VM owns is dropped;
- one chain per VM, ``vm_<hostname>``: its destinations, most specific first (a ``drop`` wins a tie with an
  ``allow``), then a last verdict: out through the uplink when its group has egress, else drop;
- ``postrouting``: masquerade on the uplink, so the outside sees the daemon's uplink address only.

By default a VM reaches its own bridge's subnet (bridge mode) and the outside, never another group's network, an
isolated VM's /30 or the uplink's /30; ``allow`` opens what it names, ``drop`` closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pyslicer.errors import NetworkError
from pyslicer.net.network import UPLINK, GroupNetwork, Lease, NetworkNamespace

Verdict = Literal["accept", "drop"]
FAMILY = "inet"


@dataclass(frozen=True)
class VMPolicy:
    """One VM's effective lists (the group's, or its create-time override) and where it sits."""

    hostname: str
    lease: Lease
    group: GroupNetwork
    allow: tuple[ipaddress.IPv4Network, ...]
    drop: tuple[ipaddress.IPv4Network, ...]


def parse_cidrs(entries: Iterable[object], field: str) -> tuple[ipaddress.IPv4Network, ...]:
    """CIDRs as a request gives them (a bare address is a /32). Raises ValueError naming ``field[i]``."""
    parsed = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, str):
            raise ValueError(f"{field}[{index}]: {entry!r} is not an IPv4 CIDR like 10.0.0.0/8")
        try:
            parsed.append(ipaddress.IPv4Network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{field}[{index}]: {entry!r} is not an IPv4 CIDR like 10.0.0.0/8") from None
    return tuple(parsed)


def _match_daddr(net: ipaddress.IPv4Network) -> dict[str, Any]:
    right: Any = (
        str(net.network_address)
        if net.prefixlen == 32
        else {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}
    )
    return {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": right}}


def _verdict(verdict: Verdict) -> dict[str, None]:
    return {verdict: None}


class Policy:
    def __init__(self, netns: NetworkNamespace, groups: Sequence[GroupNetwork], *, uplink: bool) -> None:
        self.netns = netns
        self.groups = list(groups)
        self.uplink = uplink
        self.table = "pyslicer" if not netns.host else f"pyslicer_{netns.tag}"

    def _obj(self, **fields: Any) -> dict[str, Any]:
        return {"family": FAMILY, "table": self.table, **fields}

    async def _apply(self, commands: list[dict[str, Any]]) -> None:
        """One nft transaction: all of it applies, or none. Raises NetworkError."""
        # A file, not stdin: nft opens /dev/stdin, which a socket (asyncio's pipe) cannot be opened as.
        with tempfile.NamedTemporaryFile("w", prefix="pyslicer-nft-", suffix=".json") as script:
            await asyncio.to_thread(json.dump, {"nftables": commands}, script)
            await asyncio.to_thread(script.flush)
            await self.netns.nsexec("nft", "-j", "-f", script.name)

    def entries(self, vm: VMPolicy) -> list[tuple[ipaddress.IPv4Network, Verdict]]:
        """The VM's destinations in the order nft checks them: most specific first, on a tie an explicit drop,
        then an explicit allow, then the defaults (its own bridge subnet open, every other VM network shut)."""
        ranked: list[tuple[int, int, ipaddress.IPv4Network, Verdict]] = []
        ranked += [(-net.prefixlen, 0, net, "drop") for net in vm.drop]
        ranked += [(-net.prefixlen, 1, net, "accept") for net in vm.allow]
        for group in self.groups:
            own = group is vm.group and not group.isolated
            ranked.append((-group.subnet.prefixlen, 2, group.subnet, "accept" if own else "drop"))
        ranked.sort(key=lambda item: (item[0], item[1]))
        return [(net, verdict) for _, _, net, verdict in ranked]

    def _vm_chain(self, vm: VMPolicy) -> list[dict[str, Any]]:
        chain = f"vm_{vm.hostname}"
        rules: list[list[dict[str, Any]]] = []
        if not vm.group.egress or not self.uplink:
            oif = {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": UPLINK}}
            rules.append([oif, _verdict("drop")])
        rules += [[_match_daddr(net), _verdict(verdict)] for net, verdict in self.entries(vm)]
        rules.append([_verdict("accept")])  # (what is left can only go out through the uplink, or nowhere)
        keys = [vm.lease.tap] if vm.group.isolated else [vm.lease.tap, vm.group.bridge]
        elements = [[{"concat": [key, str(vm.lease.address.ip)]}, {"jump": {"target": chain}}] for key in keys]
        return [
            {"add": {"chain": self._obj(name=chain)}},
            {"flush": {"chain": self._obj(name=chain)}},
            *({"add": {"rule": self._obj(chain=chain, expr=expr)}} for expr in rules),
            {"add": {"element": self._obj(name="vms", elem=elements)}},
        ]

    async def install(self, vms: Iterable[VMPolicy]) -> None:
        """(Re)build the whole table, with the rules of ``vms`` (those adopted after a restart), in one
        transaction, so a VM that kept running is never without its rules. Raises NetworkError."""
        forward_policy = "accept" if self.netns.host else "drop"
        commands: list[dict[str, Any]] = [
            {"add": {"table": {"family": FAMILY, "name": self.table}}},
            {"delete": {"table": {"family": FAMILY, "name": self.table}}},
            {"add": {"table": {"family": FAMILY, "name": self.table}}},
            {"add": {"map": self._obj(name="vms", type=["ifname", "ipv4_addr"], map="verdict")}},
            {"add": {"chain": self._obj(name="forward", type="filter", hook="forward", prio=0, policy=forward_policy)}},
            {
                "add": {
                    "rule": self._obj(
                        chain="forward",
                        expr=[
                            {
                                "match": {
                                    "op": "in",
                                    "left": {"ct": {"key": "state"}},
                                    "right": ["established", "related"],
                                }
                            },
                            _verdict("accept"),
                        ],
                    )
                }
            },
            {
                "add": {
                    "rule": self._obj(
                        chain="forward",
                        expr=[
                            {
                                "vmap": {
                                    "key": {
                                        "concat": [
                                            {"meta": {"key": "iifname"}},
                                            {"payload": {"protocol": "ip", "field": "saddr"}},
                                        ]
                                    },
                                    "data": "@vms",
                                }
                            }
                        ],
                    )
                }
            },
        ]
        if self.uplink:
            commands += [
                {
                    "add": {
                        "chain": self._obj(
                            name="postrouting", type="nat", hook="postrouting", prio=100, policy="accept"
                        )
                    }
                },
                {
                    "add": {
                        "rule": self._obj(
                            chain="postrouting",
                            expr=[
                                {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": UPLINK}},
                                {"masquerade": None},
                            ],
                        )
                    }
                },
            ]
        for vm in vms:
            commands += self._vm_chain(vm)
        await self._apply(commands)

    async def ensure(self) -> None:
        """Make the table when it is missing; one an earlier daemon left stays as it is (its VMs keep their
        rules until ``install`` replaces it). Raises NetworkError."""
        try:
            await self.netns.nsexec("nft", "-j", "list", "table", FAMILY, self.table)
        except NetworkError:
            await self.install(())

    async def add(self, vm: VMPolicy) -> None:
        """Give a VM its rules (replacing any it had). Raises NetworkError."""
        await self._apply(self._vm_chain(vm))

    async def remove(self, hostname: str, lease: Lease, group: GroupNetwork) -> None:
        """Take a VM's rules out; nothing happens when they (or the table) are gone. Raises nothing."""
        keys = [lease.tap] if group.isolated else [lease.tap, group.bridge]
        for key in keys:
            element = {"delete": {"element": self._obj(name="vms", elem=[{"concat": [key, str(lease.address.ip)]}])}}
            await self._quietly([element])
        await self._quietly([{"delete": {"chain": self._obj(name=f"vm_{hostname}")}}])

    async def _quietly(self, commands: list[dict[str, Any]]) -> None:
        with contextlib.suppress(NetworkError):
            await self._apply(commands)

    async def delete(self) -> None:
        """Remove the table (with a namespace of its own, deleting the namespace does it too)."""
        await self._quietly(
            [
                {"add": {"table": {"family": FAMILY, "name": self.table}}},
                {"delete": {"table": {"family": FAMILY, "name": self.table}}},
            ]
        )
