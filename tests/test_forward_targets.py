"""Where a forward goes: the X-Inlets-Upstream header (daemon) and the -L specs (client)."""

from __future__ import annotations

import os

import pytest

from pyslicer.client import ForwardSpec, parse_forward_spec
from pyslicer.daemon.forward import ForwardTarget
from pyslicer.errors import InvalidArgument


@pytest.mark.parametrize(
    ("header", "target"),
    [
        ("127.0.0.1:80", ForwardTarget(host="127.0.0.1", port=80)),
        (" localhost:8080 ", ForwardTarget(host="localhost", port=8080)),
        ("[::1]:22", ForwardTarget(host="::1", port=22)),
        ("unix:/var/run/docker.sock", ForwardTarget(path="/var/run/docker.sock")),
    ],
)
def test_upstreams(header: str, target: ForwardTarget) -> None:
    assert ForwardTarget.parse(header) == target
    assert ForwardTarget.parse(str(target)) == target


@pytest.mark.parametrize(
    "header",
    [
        "",
        "80",
        "host",
        "host:",
        ":80",
        "host:0",
        "host:65536",
        "host:8o",
        "::1:80",
        "[::1]",
        "unix:",
        "unix:rel.sock",
        "unix:/" + "x" * 200,
        "unix:/a\0b",
        "a/b:80",
        "a b:80",
        "x" * 300 + ":80",
    ],
)
def test_bad_upstreams(header: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        ForwardTarget.parse(header)
    assert caught.value.code == "invalid_upstream"


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("127.0.0.1:9000", ForwardSpec("127.0.0.1:9000", "127.0.0.1:9000", "127.0.0.1", 9000)),
        ("9001:127.0.0.1:9000", ForwardSpec("9001:127.0.0.1:9000", "127.0.0.1:9000", "127.0.0.1", 9001)),
        ("0:127.0.0.1:9000", ForwardSpec("0:127.0.0.1:9000", "127.0.0.1:9000", "127.0.0.1", 0)),
        ("0.0.0.0:9000:10.0.0.2:80", ForwardSpec("0.0.0.0:9000:10.0.0.2:80", "10.0.0.2:80", "0.0.0.0", 9000)),
        (
            "127.0.0.2:9000:/var/run/docker.sock",
            ForwardSpec("127.0.0.2:9000:/var/run/docker.sock", "unix:/var/run/docker.sock", "127.0.0.2", 9000),
        ),
        ("9000:/run/x.sock", ForwardSpec("9000:/run/x.sock", "unix:/run/x.sock", "127.0.0.1", 9000)),
        (
            "/tmp/d.sock:/run/d.sock",
            ForwardSpec("/tmp/d.sock:/run/d.sock", "unix:/run/d.sock", listen_path="/tmp/d.sock"),
        ),
        (
            "./d.sock:/run/d.sock",
            ForwardSpec("./d.sock:/run/d.sock", "unix:/run/d.sock", listen_path=os.path.abspath("d.sock")),
        ),
    ],
)
def test_specs(spec: str, parsed: ForwardSpec) -> None:
    assert parse_forward_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["", "9000", "a:b", "1:2:3:4:5", "70000:127.0.0.1:80", "9000:127.0.0.1:-1", "x:/s"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="spec"):
        parse_forward_spec(spec)
