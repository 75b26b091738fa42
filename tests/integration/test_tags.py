"""Describe, tags (add, remove, replace; name= immutable and unique; filters) and expiry (ttl, expires_at, restart)."""

from __future__ import annotations

import datetime
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pyslicer.client import SlicerClient
from tests.integration.conftest import RunningDaemon, start_daemon, stop_daemon
from tests.integration.helpers import assert_error, created_sandbox

SHARED_TAGS = ["shared", "team-a"]
NODE_FIELDS = {"hostname", "hostgroup", "ip", "ram_bytes", "cpus", "created_at", "tags", "arch", "status", "persistent"}


def in_seconds(seconds: float) -> str:
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def wait_expired(api: httpx.Client, daemon: RunningDaemon, hostname: str, *, log_from: int = 0) -> None:
    """Until the daemon says it removed the VM (its disk goes before it says so); then the VM is unknown."""
    deadline = time.monotonic() + 180
    while f"{hostname}: removed (expired at " not in daemon.log()[log_from:]:
        assert time.monotonic() < deadline, f"{hostname} did not expire: {api.get(f'/vm/{hostname}').text}"
        time.sleep(0.5)
    assert_error(api.get(f"/vm/{hostname}"), 404)


@pytest.fixture
def shared_tags_restored(api: httpx.Client, sandbox: str) -> Iterator[str]:
    """The shared sandbox, its tags put back afterwards (other tests filter on them)."""
    try:
        yield sandbox
    finally:
        restored = api.patch(f"/vm/{sandbox}/tags", json={"replace": SHARED_TAGS})
        assert restored.json()["tags"] == SHARED_TAGS, restored.text


def test_describe_has_the_listing_fields_and_what_the_vm_runs_on(api: httpx.Client, sandbox: str) -> None:
    described = api.get(f"/vm/{sandbox}")
    assert described.status_code == 200, described.text
    body = described.json()
    listed = next(n for n in api.get("/nodes").json() if n["hostname"] == sandbox)
    assert {key: body[key] for key in NODE_FIELDS} == listed
    assert body["tags"] == SHARED_TAGS and body["status"] == "Running" and body["hostgroup"] == "sbox"
    assert body["storage"] == "image"
    assert body["image"].startswith("pyslicer/debian-bookworm-amd64@sha256:"), body["image"]
    assert body["commit_id"] == "" and body["parent_commit_id"] == ""
    assert body["network"] == {
        "mode": "bridge",
        "policy_source": "host_group",
        "host_group": {"allow": [], "drop": []},
        "override": None,
        "effective": {"allow": [], "drop": []},
        "namespace": body["network"]["namespace"],
    }
    assert body["network"]["namespace"].startswith("pyslicer-")
    assert body["expires_at"] is None and body["protected"] is False
    assert body["disk_bytes"] == 3 * 1024**3  # the group's storage_size
    service = api.get("/vm/svc-1").json()
    assert service["protected"] is True and service["persistent"] is True and service["hostgroup"] == "svc"


def test_unknown_vms_are_404(api: httpx.Client) -> None:
    for response in (
        api.get("/vm/no-such-vm"),
        api.get("/vm/no-such-vm/tags"),
        api.patch("/vm/no-such-vm/tags", json={"add": ["x"]}),
        api.patch("/vm/no-such-vm/tags", json={}),
    ):
        assert_error(response, 404, "no-such-vm")
        assert response.json()["code"] == "vm_not_found"


def test_add_remove_replace_and_the_filters(api: httpx.Client, shared_tags_restored: str) -> None:
    vm = shared_tags_restored
    assert api.get(f"/vm/{vm}/tags").json() == {"hostname": vm, "tags": SHARED_TAGS}
    added = api.patch(f"/vm/{vm}/tags", json={"add": ["tags-test=1", "shared"]})
    assert added.status_code == 200, added.text
    assert added.json() == {"hostname": vm, "tags": [*SHARED_TAGS, "tags-test=1"]}
    for path in ("/nodes", "/hostgroup/sbox/nodes"):
        assert [n["hostname"] for n in api.get(path, params={"tag": "tags-test=1"}).json()] == [vm]
        assert [n["hostname"] for n in api.get(path, params={"tag_prefix": "tags-test="}).json()] == [vm]
    # The Go SDK's filtered GetHostGroupNodes puts the query inside the path.
    assert [n["hostname"] for n in api.get("/hostgroup/sbox/nodes%3Ftag=tags-test%3D1").json()] == [vm]
    assert api.get("/hostgroup/svc/nodes", params={"tag": "tags-test=1"}).json() == []

    removed = api.patch(f"/vm/{vm}/tags", json={"remove": ["team-a", "never-there"]})
    assert removed.json()["tags"] == ["shared", "tags-test=1"]
    assert api.get("/nodes", params={"tag": "team-a"}).json() == []
    assert api.patch(f"/vm/{vm}/tags", json={"replace": ["only"]}).json()["tags"] == ["only"]
    assert api.patch(f"/vm/{vm}/tags", json={"replace": []}).json()["tags"] == []
    assert api.get(f"/vm/{vm}").json()["tags"] == []


def test_bad_tag_requests_are_400_naming_the_field(api: httpx.Client, shared_tags_restored: str) -> None:
    vm = shared_tags_restored
    assert_error(api.patch(f"/vm/{vm}/tags", json={}), 400, "exactly one of add, remove, replace")
    assert_error(api.patch(f"/vm/{vm}/tags", content=b""), 400, "exactly one")
    assert_error(api.patch(f"/vm/{vm}/tags", json={"add": ["a"], "remove": ["b"]}), 400, "add, remove")
    assert_error(api.patch(f"/vm/{vm}/tags", json={"add": ["a"], "replace": []}), 400, "add, replace")
    assert_error(api.patch(f"/vm/{vm}/tags", json={"adds": ["a"]}), 400, "adds")
    assert_error(api.patch(f"/vm/{vm}/tags", json={"add": "a"}), 400, "add")
    assert_error(api.patch(f"/vm/{vm}/tags", json={"add": ["ok", "not ok"]}), 400, "add[1]")
    assert_error(api.patch(f"/vm/{vm}/tags", json={"add": [""]}), 400, "add[0]")
    assert_error(api.patch(f"/vm/{vm}/tags", json={"replace": ["x" * 129]}), 400, "replace[0]")
    assert_error(api.patch(f"/vm/{vm}/tags", json={"add": [f"t{i}" for i in range(70)]}), 400, "at most 64")
    bad_time = api.patch(f"/vm/{vm}/tags", json={"add": ["expires_at=next-week"]})
    assert_error(bad_time, 400, "add[0]", "RFC 3339")
    assert bad_time.json()["code"] == "invalid_expires_at"
    two_expiries = [f"expires_at={in_seconds(3600)}", f"expires_at={in_seconds(7200)}"]
    two = api.patch(f"/vm/{vm}/tags", json={"add": two_expiries})
    assert_error(two, 400, "more than one expires_at")
    assert api.get(f"/vm/{vm}/tags").json()["tags"] == SHARED_TAGS, "a refused change changes nothing"
    protected = api.patch("/vm/svc-1/tags", json={"add": [f"expires_at={in_seconds(3600)}"]})
    assert_error(protected, 400, "never expires")
    assert protected.json()["code"] == "protected"


def test_bad_ttls_and_expiries_at_create_are_400_and_launch_nothing(api: httpx.Client) -> None:
    before = {n["hostname"] for n in api.get("/nodes").json()}
    for body, code, needle in (
        ({"ttl": "soon"}, "invalid_ttl", "ttl"),
        ({"ttl": "-1m"}, "invalid_ttl", "positive"),
        ({"ttl": "0s"}, "invalid_ttl", "positive"),
        ({"ttl": 60}, "invalid_body", "ttl"),
        ({"ttl": "1h", "tags": [f"expires_at={in_seconds(60)}"]}, "invalid_ttl", "not both"),
        ({"tags": ["expires_at=2030-01-01"]}, "invalid_expires_at", "tags[0]"),
        ({"tags": ["a b"]}, "invalid_tag", "tags[0]"),
    ):
        response = api.post("/hostgroup/sbox/nodes", json=body)
        assert_error(response, 400, needle)
        assert response.json()["code"] == code, (body, response.text)
    in_query = api.post("/hostgroup/sbox/nodes", params={"ttl": "10m"}, json={})
    assert_error(in_query, 400, "body")
    assert {n["hostname"] for n in api.get("/nodes").json()} == before


def test_name_tags_are_unique_and_immutable_and_expiry_moves_with_the_tag(
    daemon: RunningDaemon, api: httpx.Client, shared_tags_restored: str
) -> None:
    name = f"name=tags-{uuid.uuid4().hex[:8]}"
    with created_sandbox(api, "agent", tags=[name, "keep"], ttl="1h") as vm:
        tags = api.get(f"/vm/{vm}/tags").json()["tags"]
        assert tags[:2] == [name, "keep"] and tags[2].startswith("expires_at=") and len(tags) == 3
        expires = api.get(f"/vm/{vm}").json()["expires_at"]
        assert expires == tags[2].removeprefix("expires_at=")
        left = datetime.datetime.fromisoformat(expires) - datetime.datetime.now(datetime.UTC)
        assert datetime.timedelta(minutes=55) < left <= datetime.timedelta(hours=1, seconds=1)

        taken = api.post("/hostgroup/sbox/nodes", json={"tags": [name]})
        assert_error(taken, 409, vm)
        assert taken.json()["code"] == "name_taken"
        assert_error(api.patch(f"/vm/{shared_tags_restored}/tags", json={"add": [name]}), 409, vm)
        for change in ({"remove": [name]}, {"add": ["name=other"]}, {"replace": ["name=other"]}):
            refused = api.patch(f"/vm/{vm}/tags", json=change)
            assert_error(refused, 409, "cannot be")
            assert refused.json()["code"] == "name_tag_immutable"

        later = in_seconds(7200)
        moved = api.patch(f"/vm/{vm}/tags", json={"add": [f"expires_at={later}"]}).json()["tags"]
        assert moved == [name, "keep", f"expires_at={later}"], "re-tagging moves the deadline, never adds one"
        assert api.get(f"/vm/{vm}").json()["expires_at"] == later
        assert api.patch(f"/vm/{vm}/tags", json={"replace": []}).json()["tags"] == [name], "name= survives"
        assert api.get(f"/vm/{vm}").json()["expires_at"] is None

        disk = daemon.data_dir / "disks" / f"{vm}.qcow2"
        assert disk.exists()
        past = api.patch(f"/vm/{vm}/tags", json={"add": ["expires_at=2001-01-01T00:00:00Z"]})
        assert past.status_code == 200, past.text
        wait_expired(api, daemon, vm)
        assert not disk.exists()
        assert vm not in {n["hostname"] for n in api.get("/nodes").json()}
    # The name is free again once its holder is gone: this create gets past the name (and fails on cpus).
    assert_error(api.post("/hostgroup/sbox/nodes", json={"tags": [name], "cpus": 99}), 400, "cpus")


def test_a_short_ttl_removes_the_sandbox_and_its_disk(daemon: RunningDaemon, api: httpx.Client) -> None:
    with SlicerClient(daemon.url, token=daemon.token) as sdk:
        created = sdk.create_node("sbox", ttl="5s", tags=["short-ttl"], wait="agent")
        vm = created.hostname
        try:
            disk = daemon.data_dir / "disks" / f"{vm}.qcow2"
            wait_expired(api, daemon, vm)
            assert not disk.exists()
            assert not (daemon.data_dir / "logs" / f"{vm}.log").exists()
            assert api.get("/nodes", params={"tag": "short-ttl"}).json() == []
        finally:
            api.delete(f"/hostgroup/sbox/nodes/{vm}")


PERSISTENT_ONLY = """
config:
  host_groups:
  - name: keep
    count: 0
    vcpu: 1
    ram_mb: 384
    persistent: true
  hypervisor: qemu
  accel: auto
  api:
    bind_address: {address}
    port: {port}
    auth:
      enabled: true
"""


def test_expiry_survives_a_daemon_restart(guest_image: Path, tmp_path: Path) -> None:
    first = start_daemon(tmp_path, guest_image, config_template=PERSISTENT_ONLY)
    try:
        with first.client() as api:
            created = api.post("/hostgroup/keep/nodes?wait=agent", json={"hostname": "expiring", "ttl": "60s"})
            assert created.status_code == 201, created.text
            expires = api.get("/vm/expiring").json()["expires_at"]
            assert expires
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(90) == 0
    finally:
        stop_daemon(first)
    assert (first.data_dir / "disks" / "expiring.qcow2").exists(), "stopped before its deadline, the disk stays"
    log_before = len(first.log())

    second = start_daemon(tmp_path, guest_image, config_template=PERSISTENT_ONLY)
    try:
        with second.client() as api:
            back = api.get("/vm/expiring")  # back from its record with the same deadline, or already gone
            assert back.status_code == 404 or back.json()["expires_at"] == expires, back.text
            wait_expired(api, second, "expiring", log_from=log_before)
        assert not (second.data_dir / "disks" / "expiring.qcow2").exists()
    finally:
        stop_daemon(second)
