"""Cold commit and fork against real guests: a committed disk seen by forks with identities of their own, list
filters, deletes refused while something stands on a commit, a full disk refused cleanly, and a daemon killed
mid-fork leaving nothing of the fork behind.

The module's daemon keeps its data dir on a small tmpfs of its own, so the full-disk check fills a real
filesystem without touching the host's."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pyslicer.client import SlicerAPIError, SlicerClient
from tests.integration.conftest import RunningDaemon, start_daemon, stop_daemon
from tests.integration.helpers import assert_error, sh, wait_for_agent

CONFIG = """
config:
  host_groups:
  - name: box
    count: 0
    vcpu: 2
    ram_mb: 256
    storage_size: 2G
    persistent: false
  hypervisor: qemu
  accel: auto
  api:
    bind_address: {address}
    port: {port}
    auth:
      enabled: true
"""
TMPFS_BYTES = 1536 * 1024 * 1024
IDENTITY = (
    "hostname; cat /etc/machine-id; cat /sys/class/net/eth0/address; "
    "ip -4 -o addr show eth0 | awk '{print $4}'; "
    "{ sha256sum < /etc/ssh/ssh_host_ed25519_key || echo no-key; } 2>/dev/null | cut -c1-16"
)


@pytest.fixture(scope="module")
def tmpfs_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("commits")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def box(guest_image: Path, tmpfs_dir: Path) -> Iterator[RunningDaemon]:
    running = start_daemon(tmpfs_dir, guest_image, config_template=CONFIG)
    try:
        yield running
    finally:
        stop_daemon(running)


@pytest.fixture(scope="module")
def api(box: RunningDaemon) -> Iterator[httpx.Client]:
    with box.client() as client:
        yield client


def identity(api: httpx.Client, hostname: str) -> list[str]:
    return sh(api, hostname, IDENTITY).splitlines()


def fork(api: httpx.Client, commit_id: str, wait: str = "agent", **body: Any) -> dict[str, Any]:
    response = api.post(f"/vm/commits/{commit_id}/fork", params={"wait": wait, "timeout": "3m"}, json=body or None)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def delete(api: httpx.Client, *hostnames: str) -> None:
    for hostname in hostnames:
        api.delete(f"/hostgroup/box/nodes/{hostname}")


@contextlib.contextmanager
def stopped_source(api: httpx.Client, script: str, **body: Any) -> Iterator[str]:
    """A persistent VM prepared with ``script`` and shut down; deleted when the block ends."""
    created = api.post("/hostgroup/box/nodes?wait=agent&timeout=3m", json={"persistent": True, "cpus": 1, **body})
    assert created.status_code == 201, created.text
    hostname: str = created.json()["hostname"]
    try:
        sh(api, hostname, script + " && sync")
        stopped = api.post(f"/vm/{hostname}/shutdown")
        assert stopped.status_code == 200 and stopped.json()["status"] == "Stopped", stopped.text
        yield hostname
    finally:
        delete(api, hostname)


def test_commit_then_forks_with_their_own_identities(api: httpx.Client, box: RunningDaemon) -> None:
    created = api.post(
        "/hostgroup/box/nodes?wait=agent&timeout=3m",
        json={"persistent": True, "cpus": 1, "tags": ["role=base", "name=golden"]},
    )
    assert created.status_code == 201, created.text
    source = created.json()["hostname"]
    children: list[str] = []
    commit_id = ""
    try:
        prepare = "echo prepared-$(hostname) > /root/committed.txt && mkdir -p /etc/ssh && "
        prepare += "echo source-host-key > /etc/ssh/ssh_host_ed25519_key && sync"
        sh(api, source, prepare)
        source_identity = identity(api, source)
        assert_error(api.post(f"/vm/{source}/commit"), 409, source, "Running")
        assert api.post(f"/vm/{source}/shutdown").json()["status"] == "Stopped"

        body = {"tags": ["golden", "v1"], "labels": {"team": "ci"}, "cache_key": "  deps-abc  "}
        committed = api.post(f"/vm/{source}/commit", json=body)
        assert committed.status_code == 200, committed.text
        answer = committed.json()
        commit_id = answer["commit_id"]
        assert answer == {
            "hostname": source,
            "commit_id": commit_id,
            "status": "committed",
            "parent_status": "stopped",
            "mode": "disk",
            "tags": ["golden", "v1"],
            "labels": {"team": "ci"},
            "cache_key": "deps-abc",
        }
        assert (box.data_dir / "commits" / commit_id / "disk.qcow2").is_file()

        # list filters (every tag given must match)
        def listed(**params: Any) -> list[str]:
            response = api.get("/vm/commits", params=params)
            assert response.status_code == 200, response.text
            return [c["commit_id"] for c in response.json()]

        assert listed() == [commit_id]
        assert listed(tag=["golden", "v1"]) == listed(cache_key="deps-abc") == listed(source=source) == [commit_id]
        assert listed(mode="disk") == [commit_id]
        assert listed(tag=["golden", "v2"]) == listed(cache_key="other") == listed(mode="hot") == []
        assert listed(source="box-99") == []
        assert_error(api.get("/vm/commits", params={"mode": "warm"}), 400, "mode")
        [entry] = api.get("/vm/commits").json()
        assert entry["source_host_group"] == "box" and entry["size_bytes"] > 0 and entry["used_by"] == [source]
        assert re.match(r"\d{4}-\d\d-\d\dT", entry["created_at"])

        # two forks with fresh identities; the second also with its own network lists and replaced tags
        first = fork(api, commit_id, tags=["child=1"])
        children.append(first["hostname"])
        assert first["status"] == "forked" and first["child_status"] == "running" and first["mode"] == "disk"
        assert first["source_hostname"] == source and first["commit_id"] == commit_id
        second = fork(
            api, commit_id, tags=["child=2"], tag_mode="replace", network={"allow": []}, persistent=True, vcpu=2
        )
        children.append(second["hostname"])
        assert second["persistent"] is True
        identities = [identity(api, child) for child in children]
        for child, (name, machine_id, _mac, _ip, key) in zip(children, identities, strict=True):
            assert name == child
            assert re.fullmatch(r"[0-9a-f]{32}", machine_id)
            assert key != source_identity[4]  # not the source's SSH host key: rc.sshd makes its own
            assert sh(api, child, "cat /root/committed.txt").strip() == f"prepared-{source}"
        for index in range(3):  # hostname, machine-id, MAC
            values = [source_identity[index], identities[0][index], identities[1][index]]
            assert len(set(values)) == 3, (index, values)
        assert identities[0][3] != identities[1][3]  # (the stopped source's address is free for a child)

        tags = {child: api.get(f"/vm/{child}/tags").json()["tags"] for child in children}
        assert tags == {children[0]: ["role=base", "child=1"], children[1]: ["child=2"]}
        description = api.get(f"/vm/{children[1]}").json()
        assert description["parent_commit_id"] == commit_id and description["cpus"] == 2
        assert description["network"]["override"] == {"allow": [], "drop": None}
        assert api.get(f"/vm/{children[0]}").json()["network"]["override"] is None
        assert api.get(f"/vm/{source}").json()["commit_id"] == commit_id

        # wait=none, and no fix-ups: the guest keeps its source's hostname, machine-id and keys
        third = fork(api, commit_id, wait="none", fixups=[])
        children.append(third["hostname"])
        assert third["child_status"] == "starting"
        wait_for_agent(api, third["hostname"])
        kept = identity(api, third["hostname"])
        assert kept[0] == source and kept[1] == source_identity[1] and kept[4] == source_identity[4]
        assert kept[2] != source_identity[2]  # the MAC is always new

        metrics = api.get("/metrics").text
        assert 'slicer_commits{mode="disk"} 1.0' in metrics
        assert re.search(r'slicer_commit_bytes\{mode="disk"\} [1-9]', metrics)

        # the commit cannot go while its source or a fork stands on it
        assert_error(api.delete(f"/vm/commits/{commit_id}"), 409, commit_id, children[0], "in use")
        delete(api, *children)
        assert_error(api.delete(f"/vm/commits/{commit_id}"), 409, source)
        # the source goes on from the commit: it boots with its files, and its commit stays as it was
        relaunched = api.post(f"/vm/{source}/relaunch?wait=agent&timeout=3m")
        assert relaunched.status_code == 200, relaunched.text
        assert sh(api, source, "cat /root/committed.txt; echo after > /root/later.txt; sync").strip() == (
            f"prepared-{source}"
        )
        later = fork_and_read(api, commit_id, "cat /root/later.txt 2>/dev/null || echo absent")
        assert later == "absent"
    finally:
        delete(api, *children, source)
    deleted = api.delete(f"/vm/commits/{commit_id}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"commit_id": commit_id, "status": "deleted"}
    assert api.get("/vm/commits").json() == []
    assert not (box.data_dir / "commits" / commit_id).exists()
    assert_error(api.delete(f"/vm/commits/{commit_id}"), 404, commit_id)


def fork_and_read(api: httpx.Client, commit_id: str, script: str) -> str:
    child = fork(api, commit_id)["hostname"]
    try:
        return sh(api, child, script).strip()
    finally:
        delete(api, child)


def test_bad_commits_and_forks_are_refused(api: httpx.Client) -> None:
    assert_error(api.post("/vm/box-404/commit"), 404, "box-404")
    missing = "cmt-0123456789abcdef"
    assert_error(api.post(f"/vm/commits/{missing}/fork"), 404, missing)
    assert_error(api.post("/vm/commits/nope/fork"), 404, "nope")
    assert_error(api.post("/vm/commits/cmt-..x/fork"), 400, "commit_id")
    assert_error(api.delete(f"/vm/commits/{missing}"), 404, missing)
    with stopped_source(api, "true") as source:
        assert_error(api.post(f"/vm/{source}/commit", json={"tags": ["has space"]}), 400, "tags")
        assert_error(api.post(f"/vm/{source}/commit", json={"labels": {"k": 1}}), 400, "labels")
        assert_error(api.post(f"/vm/{source}/commit", json={"bogus": 1}), 400, "bogus")
        commit_id = api.post(f"/vm/{source}/commit").json()["commit_id"]
        try:
            for body, needle in (
                ({"hostname": "mine"}, "hostname"),
                ({"fixups": ["hostname", "kernel"]}, "kernel"),
                ({"vcpu": 3}, "cpus"),
                ({"ram_bytes": 1 << 40}, "ram_bytes"),
                ({"tag_mode": "merge"}, "tag_mode"),
                ({"network": {"allow": ["not-a-cidr"]}}, "not-a-cidr"),
                ({"secrets": ["../x"]}, "secrets"),
                ({"tags": ["bad tag"]}, "tags"),
            ):
                assert_error(api.post(f"/vm/commits/{commit_id}/fork", json=body), 400, needle)
            assert_error(api.post(f"/vm/commits/{commit_id}/fork?wait=userdata"), 400, "wait")
            assert_error(api.post(f"/vm/commits/{commit_id}/fork?timeout=soon"), 400, "timeout")
            assert [n["hostname"] for n in api.get("/nodes").json()] == [source]  # no child was left
        finally:
            delete(api, source)
            assert api.delete(f"/vm/commits/{commit_id}").status_code == 200


def test_a_full_disk_refuses_a_commit_and_a_fork_cleanly(api: httpx.Client, box: RunningDaemon) -> None:
    filler = box.data_dir / "filler"
    with stopped_source(api, "echo kept > /root/kept.txt") as source:
        disk = box.data_dir / "disks" / f"{source}.qcow2"
        before = disk.read_bytes()
        free = os.statvfs(box.data_dir).f_bavail * os.statvfs(box.data_dir).f_frsize
        subprocess.run(["fallocate", "-l", str(free - 16 * 1024 * 1024), str(filler)], check=True)
        try:
            assert_error(api.post(f"/vm/{source}/commit"), 413, source, "free", "nothing was changed")
            assert list((box.data_dir / "commits").iterdir()) == []
            assert disk.read_bytes() == before
            assert api.get(f"/vm/{source}").json()["status"] == "Stopped"
        finally:
            filler.unlink()
        commit_id = api.post(f"/vm/{source}/commit").json()["commit_id"]
        free = os.statvfs(box.data_dir).f_bavail * os.statvfs(box.data_dir).f_frsize
        subprocess.run(["fallocate", "-l", str(free - 16 * 1024 * 1024), str(filler)], check=True)
        try:
            assert_error(api.post(f"/vm/commits/{commit_id}/fork"), 413, commit_id, "free")
            assert [n["hostname"] for n in api.get("/nodes").json()] == [source]
        finally:
            filler.unlink()
        relaunched = api.post(f"/vm/{source}/relaunch?wait=agent&timeout=3m")
        assert relaunched.status_code == 200, relaunched.text
        assert sh(api, source, "cat /root/kept.txt").strip() == "kept"
    assert api.delete(f"/vm/commits/{commit_id}").status_code == 200


def cli(box: RunningDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SLICER_URL": box.url, "SLICER_TOKEN": box.token}
    command = [sys.executable, "-m", "pyslicer.cli.main", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_the_sdk_and_the_cli(api: httpx.Client, box: RunningDaemon) -> None:
    with stopped_source(api, "echo from-sdk > /root/sdk.txt", tags=["kind=sdk"]) as source:
        with SlicerClient(box.url, token=box.token) as slicer:
            with pytest.raises(ValueError, match="invalid commit id"):
                slicer.fork("../etc")
            with pytest.raises(ValueError, match="fixups"):
                slicer.fork("cmt-x", fixups=["kernel"])
            made = slicer.commit(source, tags=["sdk"], labels={"by": "test"}, cache_key=" ck ")
            assert made.mode == "disk" and made.cache_key == "ck" and made.parent_status == "stopped"
            [info] = slicer.commits(tags=["sdk"], cache_key="ck", source=source, mode="disk")
            assert info.commit_id == made.commit_id and info.created_at is not None and info.size_bytes
            assert slicer.commits(tags=["other"]) == []
            child = slicer.fork(made.commit_id, tags=["via=sdk"], fixups=["hostname"], persistent=False)
            assert child.child_status == "running" and child.persistent is False
            assert slicer.tags(child.hostname).tags == ["kind=sdk", "via=sdk"]
            with pytest.raises(SlicerAPIError) as refused:
                slicer.delete_commit(made.commit_id)
            assert refused.value.status == 409 and child.hostname in refused.value.message
            with pytest.raises(SlicerAPIError) as missing:
                slicer.fork("cmt-ffffffffffffffff")
            assert missing.value.status == 404

        listed = cli(box, "commit", "list", "--json", "--cache-key", "ck")
        assert listed.returncode == 0, listed.stderr
        assert [c["commit_id"] for c in json.loads(listed.stdout)] == [made.commit_id]
        table = cli(box, "commit", "list", "--source", source)
        assert made.commit_id in table.stdout and "USED BY" in table.stdout and child.hostname in table.stdout
        forked = cli(box, "vm", "fork", made.commit_id, "--tag", "via=cli", "--replace-tags", "--ephemeral")
        assert forked.returncode == 0, forked.stderr
        hostname = forked.stdout.strip()
        assert sh(api, hostname, "cat /root/sdk.txt; hostname").split() == ["from-sdk", hostname]
        assert api.get(f"/vm/{hostname}/tags").json()["tags"] == ["via=cli"]
        busy = cli(box, "commit", "rm", made.commit_id)
        assert busy.returncode != 0 and "in use" in busy.stderr
        running = cli(box, "vm", "commit", hostname)
        assert running.returncode != 0 and "Running" in running.stderr
        delete(api, hostname, child.hostname)
    removed = cli(box, "commit", "rm", made.commit_id)
    assert removed.returncode == 0 and f"{made.commit_id} deleted" in removed.stdout, removed.stderr
    again = cli(box, "vm", "commit", "box-404")
    assert again.returncode != 0 and "box-404" in again.stderr


def test_a_daemon_killed_mid_fork_leaves_no_fork(api: httpx.Client, box: RunningDaemon, guest_image: Path) -> None:
    created = api.post("/hostgroup/box/nodes?wait=agent&timeout=3m", json={"persistent": True, "cpus": 1})
    assert created.status_code == 201, created.text
    source = created.json()["hostname"]
    sh(api, source, "echo kept > /root/kept.txt && sync")
    assert api.post(f"/vm/{source}/shutdown").json()["status"] == "Stopped"
    commit_id = api.post(f"/vm/{source}/commit").json()["commit_id"]
    outcome: list[object] = []

    def forking() -> None:
        with box.client() as other, contextlib.suppress(httpx.TransportError):
            outcome.append(other.post(f"/vm/commits/{commit_id}/fork?timeout=3m"))

    thread = threading.Thread(target=forking)
    thread.start()

    def children() -> dict[str, str]:
        return {n["hostname"]: n["status"] for n in api.get("/nodes").json() if n["hostname"] != source}

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and list(children().values()) != ["Running"]:  # its QEMU runs: booting
        time.sleep(0.05)
    [child] = children()
    qemus = box.qemus()
    assert qemus
    box.process.kill()
    box.process.wait()
    thread.join(30)
    assert outcome == []  # the client saw the connection go, not an answer

    restarted = start_daemon(box.data_dir.parent, guest_image, config_template=CONFIG)
    box.process, box.url, box.token = restarted.process, restarted.url, restarted.token
    with box.client() as again:
        assert [n["hostname"] for n in again.get("/nodes").json()] == [source]
        assert not (box.data_dir / "disks" / f"{child}.qcow2").exists()
        assert not any(identity.is_alive() for identity in qemus)
        assert [c["commit_id"] for c in again.get("/vm/commits").json()] == [commit_id]
        assert f"{child}: removing a fork that was not finished" in box.log()
        child_again = fork(again, commit_id)["hostname"]
        assert sh(again, child_again, "cat /root/kept.txt").strip() == "kept"
        delete(again, child_again, source)
        assert again.delete(f"/vm/commits/{commit_id}").status_code == 200
