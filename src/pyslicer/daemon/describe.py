"""What ``GET /vm/{hostname}`` tells about one VM: its record, what it runs on, and its network policy.

A VM may have its own network lists (a fork's ``network.allow``/``drop``): ``effective`` is the override's list
where it gives one, else the host group's.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Literal

from pyslicer.config import HostGroupConfig
from pyslicer.daemon.expiry import deadline_of
from pyslicer.daemon.node import Node

# Every disk is a qcow2 overlay over the guest image's rootfs (or over a commit, itself one over the rootfs).
STORAGE = "image"
PolicySource = Literal["host_group", "override"]


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    allow: tuple[str, ...]
    drop: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NetworkOverride:
    """A VM's own lists; None inherits the host group's, an empty tuple means "none"."""

    allow: tuple[str, ...] | None = None
    drop: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class NetworkDescription:
    mode: str
    policy_source: PolicySource
    host_group: NetworkPolicy
    override: NetworkOverride | None
    effective: NetworkPolicy


@dataclass(frozen=True, slots=True)
class NodeDescription:
    node: Node
    storage: str
    image: str
    commit_id: str
    parent_commit_id: str
    network: NetworkDescription
    expires_at: datetime.datetime | None
    disk_bytes: int


def network_description(config: HostGroupConfig, override: NetworkOverride | None = None) -> NetworkDescription:
    network = config.network
    group = NetworkPolicy(
        allow=tuple(str(net) for net in network.allow) if network else (),
        drop=tuple(str(net) for net in network.drop) if network else (),
    )
    effective = group
    if override is not None:
        effective = NetworkPolicy(
            allow=group.allow if override.allow is None else override.allow,
            drop=group.drop if override.drop is None else override.drop,
        )
    return NetworkDescription(
        mode=network.mode if network else "bridge",
        policy_source="host_group" if override is None else "override",
        host_group=group,
        override=override,
        effective=effective,
    )


def override_of(lists: dict[str, list[str] | None] | None) -> NetworkOverride | None:
    if lists is None:
        return None
    allow, drop = lists.get("allow"), lists.get("drop")
    return NetworkOverride(allow=None if allow is None else tuple(allow), drop=None if drop is None else tuple(drop))


def describe(node: Node, config: HostGroupConfig, image: str, image_bytes: int) -> NodeDescription:
    record = node.record
    return NodeDescription(
        node=node,
        storage=STORAGE,
        image=record.image or image,
        commit_id=record.commit_id,
        parent_commit_id=record.parent_commit_id,
        network=network_description(config, override_of(record.network_override)),
        expires_at=deadline_of(node),
        disk_bytes=max(record.disk_bytes, image_bytes),  # an overlay is never smaller than its base
    )
