"""Host groups: what a new node may ask for, its defaults and ceilings, and how nodes are named."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Set
from dataclasses import dataclass

from pyslicer.config import MIN_RAM_BYTES, HostGroupConfig, SlicerConfig
from pyslicer.daemon.secrets import check_grant
from pyslicer.daemon.ssh_keys import check_keys
from pyslicer.errors import ConfigError, InvalidArgument
from pyslicer.net import GroupNetwork, NetworkNamespace, Uplink, check_networks, parse_cidrs

HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_USERDATA_BYTES = 48 * 1024  # handed to the agent in one frame
RESERVED_HOSTNAMES = frozenset({"commits"})  # GET /vm/commits would answer for a VM of that name


@dataclass(frozen=True)
class NodeRequest:
    """What a caller may choose about a new node; unset fields take the host group's values."""

    hostname: str | None = None
    cpus: int | None = None
    ram_bytes: int | None = None
    userdata: str | None = None
    tags: tuple[str, ...] = ()
    persistent: bool | None = None
    secrets: tuple[str, ...] | None = None  # the secrets it may see; None: all
    ttl: str | None = None  # a Go duration; the daemon turns it into an expires_at= tag
    ip: str | None = None  # an address of the group's network; None: the next free one
    allow: tuple[str, ...] | None = None  # network.allow; None: the host group's
    drop: tuple[str, ...] | None = None  # network.drop; None: the host group's
    ssh_keys: tuple[str, ...] = ()  # for the default user, besides the config's


class HostGroup:
    def __init__(self, config: HostGroupConfig, network: GroupNetwork) -> None:
        self.config = config
        self.name = config.name
        self.network = network
        self.next_index = 1
        self.taps = itertools.count(1)

    def new_hostname(self, taken: Set[str]) -> str:
        while f"{self.name}-{self.next_index}" in taken:
            self.next_index += 1
        hostname = f"{self.name}-{self.next_index}"
        self.next_index += 1
        return hostname

    def check(self, request: NodeRequest) -> None:
        """Raises InvalidArgument, naming the field, for a request beyond this group's ceilings."""
        ceiling = self.config
        if request.cpus is not None and not 1 <= request.cpus <= ceiling.vcpu:
            raise InvalidArgument(
                f"cpus: {request.cpus} is outside 1..{ceiling.vcpu} for host group {self.name}", code="cpus"
            )
        if request.ram_bytes is not None and not MIN_RAM_BYTES <= request.ram_bytes <= ceiling.ram_bytes:
            raise InvalidArgument(
                f"ram_bytes: {request.ram_bytes} is outside {MIN_RAM_BYTES}..{ceiling.ram_bytes} "
                f"for host group {self.name}",
                code="ram_bytes",
            )
        if request.userdata is not None and len(request.userdata.encode()) > MAX_USERDATA_BYTES:
            raise InvalidArgument(f"userdata: larger than {MAX_USERDATA_BYTES // 1024} KiB", code="userdata")
        if request.secrets is not None:
            check_grant(request.secrets)
        if request.hostname is not None and not HOSTNAME_RE.fullmatch(request.hostname):
            raise InvalidArgument(f"hostname: {request.hostname!r} is not a valid hostname", code="hostname")
        if request.hostname in RESERVED_HOSTNAMES:
            raise InvalidArgument(
                f"hostname: {request.hostname!r} is reserved by the API's /vm/ routes", code="hostname"
            )
        check_keys(request.ssh_keys)
        for field, entries in (("allow", request.allow), ("drop", request.drop)):
            if entries is not None:
                try:
                    parse_cidrs(entries, f"network.{field}")
                except ValueError as exc:
                    raise InvalidArgument(str(exc), code="network_policy") from None


def host_groups(config: SlicerConfig, netns: NetworkNamespace, uplink: Uplink | None = None) -> dict[str, HostGroup]:
    """The config's host groups, each with its network. Raises ConfigError for userdata too large to hand over,
    or networks that overlap (each other or the uplink's)."""
    check_userdata(config.host_groups)
    groups = {
        group.name: HostGroup(group, GroupNetwork(group, index, netns))
        for index, group in enumerate(config.host_groups)
    }
    check_networks([group.network for group in groups.values()], uplink)
    return groups


def check_userdata(groups: Iterable[HostGroupConfig]) -> None:
    for index, group in enumerate(groups):
        if len(group.userdata.encode()) > MAX_USERDATA_BYTES:
            raise ConfigError(f"config.host_groups[{index}].userdata: larger than {MAX_USERDATA_BYTES // 1024} KiB")
