"""The pure parts of guest networking: overlapping networks, requested addresses, and the policy's rule order."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from pyslicer.config import parse_config
from pyslicer.daemon.host_groups import NodeRequest, host_groups
from pyslicer.errors import ConfigError, Conflict, InvalidArgument
from pyslicer.net import Lease, NetworkNamespace, Policy, Uplink, VMPolicy

NETNS = NetworkNamespace(Path("/tmp/pyslicer-test-unused"))


def config(groups: str, network: str = "") -> str:
    return f"config:\n  host_groups:\n{groups}" + (f"  network: {network}\n" if network else "")


def groups_of(text: str):  # type: ignore[no-untyped-def]
    parsed = parse_config(text, source="t.yaml", base_dir=Path("/nonexistent"))
    return host_groups(parsed, NETNS, Uplink(parsed.network, NETNS))


BR = "  - {name: br, ram_gb: 1, network: {gateway: 10.1.0.1/24, addresses: [10.1.0.5, 10.1.0.6]}}\n"
ISO = "  - {name: iso, ram_gb: 1, network: {mode: isolated, range: 169.254.10.0/29, tap_prefix: ti}}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            config(BR + "  - {name: b2, ram_gb: 1, network: {gateway: 10.1.0.129/25, tap_prefix: x}}\n"),
            "config.host_groups[1].network.gateway: 10.1.0.128/25 overlaps 10.1.0.0/24 of config.host_groups[0]",
        ),
        (
            config(BR, "{uplink: host, uplink_address: 10.1.0.9/30}"),
            "config.host_groups[0].network.gateway: 10.1.0.0/24 overlaps 10.1.0.8/30 of config.network.uplink_address",
        ),
        (
            config(BR + "  - {name: b2, ram_gb: 1, network: {gateway: 10.2.0.1/24, bridge: brbr, tap_prefix: x}}\n"),
            "config.host_groups[1].network.bridge: 'brbr' is also the bridge of host group br",
        ),
    ],
)
def test_overlapping_networks_are_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        groups_of(text)
    assert info.value.message.startswith(message)


def test_requested_addresses() -> None:
    br = groups_of(config(BR))["br"].network
    br.check_wanted("10.1.0.6", set())
    for wanted, message in [
        ("10.1.0.7", "ip: 10.1.0.7 is not in the pool of host group br"),
        ("10.1.0.5", "ip: 10.1.0.5 is already in use"),
        ("nope", "ip: 'nope' is not an IPv4 address"),
    ]:
        with pytest.raises(InvalidArgument) as info:
            br.check_wanted(wanted, {"10.1.0.5"})
        assert info.value.message == message
    assert str(br.choose({"10.1.0.5"})[1]) == "10.1.0.6/24"
    with pytest.raises(Conflict) as full:
        br.choose({"10.1.0.5", "10.1.0.6"})
    assert full.value.code == "no_addresses" and "network.addresses 10.1.0.0/24" in full.value.message


def test_isolated_vms_take_the_second_address_of_each_slash_30() -> None:
    iso = groups_of(config(ISO))["iso"].network
    assert [str(pair[1]) for pair in iso._subnets()] == ["169.254.10.2/30", "169.254.10.6/30"]
    with pytest.raises(InvalidArgument, match="the second of each /30"):
        iso.check_wanted("169.254.10.1", set())


def test_bad_policy_entries_in_a_request_name_their_index() -> None:
    br = groups_of(config(BR))["br"]
    with pytest.raises(InvalidArgument) as info:
        br.check(NodeRequest(allow=("10.0.0.0/8",), drop=("1.2.3.4", "1.2.3.0/33")))
    assert info.value.message == "network.drop[1]: '1.2.3.0/33' is not an IPv4 CIDR like 10.0.0.0/8"


def test_the_most_specific_entry_wins_and_drop_wins_a_tie() -> None:
    groups = groups_of(config(BR + ISO))
    iso = groups["iso"].network
    policy = Policy(NETNS, [g.network for g in groups.values()], uplink=True)
    lease = Lease(ipaddress.IPv4Interface("169.254.10.2/30"), ipaddress.IPv4Address("169.254.10.1"), "ti1", "", "")
    net = ipaddress.IPv4Network
    vm = VMPolicy(
        "iso-1",
        lease,
        iso,
        allow=(net("0.0.0.0/0"), net("169.254.10.4/30"), net("10.1.0.5/32")),
        drop=(net("10.1.0.5/32"),),
    )
    assert [(str(n), v) for n, v in policy.entries(vm)] == [
        ("10.1.0.5/32", "drop"),
        ("10.1.0.5/32", "accept"),
        ("169.254.10.4/30", "accept"),
        ("169.254.10.0/29", "drop"),  # the other isolated VMs, unless allowed
        ("10.1.0.0/24", "drop"),  # another group's bridge
        ("0.0.0.0/0", "accept"),
    ]
    bridged = VMPolicy("br-1", lease, groups["br"].network, allow=(), drop=())
    assert ("10.1.0.0/24", "accept") in [(str(n), v) for n, v in policy.entries(bridged)]
