"""What a host group lets an API request ask for: the built-in config's ceilings, names, and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyslicer.config import load_config
from pyslicer.daemon.host_groups import NodeRequest, host_groups
from pyslicer.errors import InvalidArgument
from pyslicer.net import NetworkNamespace

GIB = 1024**3


def test_the_default_sbox_group_takes_the_ts_sdk_suites_requests() -> None:
    sbox = host_groups(load_config(None), NetworkNamespace(Path("/tmp/pyslicer-test-unused")))["sbox"]
    sbox.check(NodeRequest(cpus=1, ram_bytes=GIB))
    sbox.check(NodeRequest(cpus=2, ram_bytes=2 * GIB))


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (NodeRequest(cpus=3), "cpus"),
        (NodeRequest(cpus=0), "cpus"),
        (NodeRequest(ram_bytes=3 * GIB), "ram_bytes"),
        (NodeRequest(ram_bytes=1024), "ram_bytes"),
        (NodeRequest(hostname="Bad_Name"), "hostname"),
        (NodeRequest(hostname="ab\n"), "hostname"),
        (NodeRequest(hostname="commits"), "hostname"),
        (NodeRequest(userdata="#" * 50_000), "userdata"),
    ],
)
def test_requests_beyond_the_group_name_the_field(request_: NodeRequest, field: str) -> None:
    sbox = host_groups(load_config(None), NetworkNamespace(Path("/tmp/pyslicer-test-unused")))["sbox"]
    with pytest.raises(InvalidArgument) as info:
        sbox.check(request_)
    assert info.value.message.startswith(f"{field}: ") and info.value.code == field


def test_hostnames_skip_taken_ones() -> None:
    sbox = host_groups(load_config(None), NetworkNamespace(Path("/tmp/pyslicer-test-unused")))["sbox"]
    assert sbox.new_hostname({"sbox-1", "sbox-2"}) == "sbox-3"
    assert sbox.new_hostname(set()) == "sbox-4"
