"""`slicer vm describe`, `slicer vm tag` and `slicer vm add --ttl`, against a recorded API."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.test_cli import FakeApi, created

DESCRIBED = {
    "hostname": "sbox-1",
    "hostgroup": "sbox",
    "ip": "10.0.0.2",
    "ram_bytes": 512 << 20,
    "cpus": 2,
    "created_at": "2026-12-02T08:00:00Z",
    "tags": ["name=web", "expires_at=2026-12-02T09:00:00Z"],
    "arch": "x86_64",
    "status": "Running",
    "persistent": False,
    "storage": "image",
    "image": "pyslicer/debian-bookworm-amd64@sha256:abc",
    "commit_id": "",
    "parent_commit_id": "",
    "network": {
        "mode": "isolated",
        "policy_source": "host_group",
        "host_group": {"allow": ["10.1.0.0/16"], "drop": []},
        "effective": {"allow": ["10.1.0.0/16"], "drop": []},
    },
    "expires_at": "2026-12-02T09:00:00Z",
    "disk_bytes": 3 << 30,
    "protected": False,
}


def test_vm_describe_table_and_json() -> None:
    api = FakeApi({("GET", "/vm/sbox-1"): DESCRIBED})
    result = api.run("vm", "describe", "sbox-1")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.split() == ["image:", "pyslicer/debian-bookworm-amd64@sha256:abc"] for line in lines)
    assert any(line.split() == ["network:", "isolated", "(policy", "from", "host_group)"] for line in lines)
    assert any(line.split() == ["allow:", "10.1.0.0/16"] for line in lines)
    assert any(line.startswith("expires:") and "2026-12-02" in line for line in lines)
    assert any(line.split() == ["commit:", "-"] for line in lines)
    described = json.loads(api.run("vm", "describe", "sbox-1", "--json").stdout)
    assert described["network"]["effective"] == {"allow": ["10.1.0.0/16"], "drop": []}
    assert described["expires_at"].startswith("2026-12-02T09:00:00")


def test_vm_describe_of_a_vm_that_never_expires() -> None:
    api = FakeApi({("GET", "/vm/sbox-1"): {**DESCRIBED, "expires_at": None}})
    result = api.run("vm", "describe", "sbox-1")
    assert any(line.split() == ["expires:", "never"] for line in result.stdout.splitlines())


def tags_answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"hostname": "sbox-1", "tags": ["name=web", "a"]})


@pytest.mark.parametrize(
    ("args", "body"),
    [
        (["--add", "a", "--add", "b"], {"add": ["a", "b"]}),
        (["--remove", "a"], {"remove": ["a"]}),
        (["--replace", "x", "--replace", "y"], {"replace": ["x", "y"]}),
        (["--clear"], {"replace": []}),
    ],
)
def test_vm_tag_sends_one_change(args: list[str], body: dict[str, list[str]]) -> None:
    api = FakeApi({("PATCH", "/vm/sbox-1/tags"): tags_answer})
    result = api.run("vm", "tag", "sbox-1", *args)
    assert result.exit_code == 0, result.output
    assert json.loads(api.last.content) == body
    assert result.stdout == "name=web\na\n"


def test_vm_tag_without_a_change_shows_the_tags() -> None:
    api = FakeApi({("GET", "/vm/sbox-1/tags"): tags_answer})
    result = api.run("vm", "tag", "sbox-1", "--json")
    assert json.loads(result.stdout) == {"hostname": "sbox-1", "tags": ["name=web", "a"]}


def test_vm_tag_takes_one_kind_of_change() -> None:
    api = FakeApi({})
    result = api.run("vm", "tag", "sbox-1", "--add", "a", "--clear")
    assert result.exit_code == 2 and "use one of --add, --clear" in result.stderr
    assert api.requests == []


def test_vm_add_with_a_ttl() -> None:
    api = FakeApi({("POST", "/hostgroup/vm/nodes"): created})
    result = api.run("vm", "add", "vm", "--ttl", "10m")
    assert result.exit_code == 0, result.output
    assert json.loads(api.last.content) == {"ttl": "10m0s"}
    result = api.run("vm", "add", "vm", "--ttl", "soon")
    assert result.exit_code == 2 and "'--ttl'" in result.stderr


def test_the_client_sends_exactly_one_tag_change() -> None:
    api = FakeApi({("PATCH", "/vm/sbox-1/tags"): tags_answer})
    client = api.factory(None, None, None)
    with pytest.raises(ValueError, match="exactly one"):
        client.update_tags("sbox-1")
    with pytest.raises(ValueError, match="exactly one"):
        client.update_tags("sbox-1", add=["a"], replace=[])
    with pytest.raises(TypeError, match="not a string"):
        client.update_tags("sbox-1", add="a")
    assert api.requests == []
    assert client.update_tags("sbox-1", replace=[]).tags == ["name=web", "a"]
    assert json.loads(api.last.content) == {"replace": []}
