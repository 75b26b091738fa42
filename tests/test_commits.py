"""Commits without a guest: request validation, commit ids, filters, the commit store's files (with real
qemu-img) and what a crash between its steps leaves, the full-disk check, and one commit of a VM at a time."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pyslicer.daemon.commits import (
    RESERVE_BYTES,
    CommitFilter,
    CommitRecord,
    CommitRequest,
    CommitStore,
    ForkRequest,
    check_commit_id,
    inherited_tags,
    new_commit_id,
)
from pyslicer.daemon.data_dir import DataDir
from pyslicer.daemon.fleet import Fleet
from pyslicer.daemon.lifecycle import NodeState
from pyslicer.daemon.node import Node
from pyslicer.daemon.registry import NodeRecord, Registry
from pyslicer.errors import Conflict, HypervisorError, InsufficientStorage, InvalidArgument, NotFound
from pyslicer.image import GuestImage
from pyslicer.vmm import VMSpec

MIB = 1024 * 1024


def problems(model: type[Any], data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return " ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in info.value.errors())


def test_commit_requests_are_checked_and_trimmed() -> None:
    request = CommitRequest.model_validate({"tags": ["a", "b", "a"], "labels": {"team": "ci"}, "cache_key": " k "})
    assert request.tags == ["a", "b"] and request.labels == {"team": "ci"} and request.cache_key == "k"
    assert CommitRequest.model_validate({}) == CommitRequest()
    assert "tags" in problems(CommitRequest, {"tags": ["has space"]})
    assert "tags" in problems(CommitRequest, {"tags": [str(i) for i in range(65)]})
    assert "tags" in problems(CommitRequest, {"tags": [1]})
    assert "labels" in problems(CommitRequest, {"labels": {"bad key!": "v"}})
    assert "labels" in problems(CommitRequest, {"labels": {"k": "v" * 300}})
    assert "labels" in problems(CommitRequest, {"labels": {"k": 1}})
    assert "cache_key" in problems(CommitRequest, {"cache_key": "a\nb"})
    assert "extra" in problems(CommitRequest, {"tag": ["x"]}).lower()


def test_fork_requests_are_checked() -> None:
    request = ForkRequest.model_validate(
        {"network": {"allow": ["10.1.2.3/8", "192.168.0.1"]}, "fixups": ["hostname", "hostname"], "vcpu": 0}
    )
    assert request.network is not None and request.network.allow == ["10.0.0.0/8", "192.168.0.1/32"]
    assert request.network.drop is None and request.fixups == ["hostname"]
    assert ForkRequest.model_validate({"fixups": []}).fixups == []
    assert ForkRequest().fixups is None and ForkRequest().tag_mode == "append"
    assert "a fork is named by the daemon" in problems(ForkRequest, {"hostname": "x"})
    assert "'kernel' is not one of hostname, machine-id, ssh-host-keys" in problems(ForkRequest, {"fixups": ["kernel"]})
    assert "not a CIDR" in problems(ForkRequest, {"network": {"drop": ["nope"]}})
    assert "tag_mode" in problems(ForkRequest, {"tag_mode": "merge"})
    assert "vcpu" in problems(ForkRequest, {"vcpu": -1})
    assert "ram_bytes" in problems(ForkRequest, {"ram_bytes": "1G"})
    assert "persistent" in problems(ForkRequest, {"persistent": "yes"})


@pytest.mark.parametrize("bad", ["", "../etc", "cmt-a/b", "cmt-a\\b", "cmt-\x00", "cmt-..x"])
def test_a_commit_id_that_could_be_a_path_is_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="commit_id"):
        check_commit_id(bad)


def test_an_id_this_daemon_never_makes_is_not_found() -> None:
    with pytest.raises(NotFound, match="nope"):
        check_commit_id("nope")
    made = new_commit_id()
    assert check_commit_id(made) == made and made != new_commit_id()


def commit(commit_id: str = "cmt-0000000000000001", **fields: Any) -> CommitRecord:
    return CommitRecord(commit_id, "disk", "box-1", "box", "2026-12-02T00:00:00Z", **fields)


def test_filters_need_every_tag_and_the_exact_values() -> None:
    one = commit(tags=["a", "b"], cache_key="k")
    assert CommitFilter().matches(one)
    assert CommitFilter(tags=("a", "b"), cache_key="k", source="box-1", mode="disk").matches(one)
    assert not CommitFilter(tags=("a", "c")).matches(one)
    assert not CommitFilter(cache_key="K").matches(one)
    assert not CommitFilter(source="box-2").matches(one)
    assert not CommitFilter(mode="hot").matches(one)


def test_a_fork_does_not_inherit_its_sources_name_or_deadline() -> None:
    assert inherited_tags(["role=x", "name=golden", "expires_at=2030-01-01T00:00:00Z", "y"]) == ["role=x", "y"]


def test_records_round_trip_and_bad_ones_are_refused() -> None:
    one = commit(tags=["a"], labels={"k": "v"}, size_bytes=3)
    assert CommitRecord.from_dict(json.loads(json.dumps(one.to_dict()))) == one
    assert CommitRecord.from_dict({**one.to_dict(), "future": 1}) == one
    for bad in ({"commit_id": "../x"}, {"source_hostname": 3}, {"cpus": 1}):
        with pytest.raises(ValueError):
            CommitRecord.from_dict({**one.to_dict(), **bad} if "cpus" not in bad else bad)


# -- the files, with qemu-img ------------------------------------------------------------------------


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


def qemu_io(disk: Path, command: str) -> str:
    return subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(disk)], check=True, capture_output=True, text=True
    ).stdout


def backing_of(path: Path) -> str:
    info = json.loads(qemu_img("info", "--output=json", str(path)))
    return str(info.get("backing-filename", ""))


@pytest.fixture
def source_disk(tmp_path: Path) -> Path:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * MIB)
    disk = tmp_path / "disks" / "box-1.qcow2"
    disk.parent.mkdir()
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(disk))
    qemu_io(disk, "write -P 0x5a 0 64k")
    return disk


def test_taking_a_commit_moves_the_disk_and_puts_the_vm_on_an_overlay(tmp_path: Path, source_disk: Path) -> None:
    store = CommitStore(tmp_path / "commits")
    before = source_disk.read_bytes()
    taken = asyncio.run(store.take(commit(), source_disk))
    disk = store.disk(taken.commit_id)
    assert disk.read_bytes() == before and disk.stat().st_nlink == 1
    assert disk.stat().st_mode & 0o777 == 0o444
    assert backing_of(source_disk) == str(disk)
    assert backing_of(disk) == str(tmp_path / "base.raw")
    assert taken.size_bytes > 0 and taken.size_bytes == store.size(taken.commit_id)
    assert json.loads((store.dir(taken.commit_id) / "commit.json").read_text())["commit_id"] == taken.commit_id
    assert "read 65536/65536" in qemu_io(source_disk, "read -P 0x5a 0 64k")  # what it wrote, through the commit
    assert [p.name for p in source_disk.parent.iterdir()] == ["box-1.qcow2"]


def test_a_commit_that_fails_leaves_nothing_and_the_disk_as_it_was(tmp_path: Path) -> None:
    disk = tmp_path / "disks" / "box-1.qcow2"
    disk.parent.mkdir()
    disk.write_bytes(b"not a qcow2 image" * 100)
    store = CommitStore(tmp_path / "commits")
    with pytest.raises(HypervisorError, match="qemu-img"):
        asyncio.run(store.take(commit(), disk))
    assert disk.read_bytes() == b"not a qcow2 image" * 100 and disk.stat().st_nlink == 1
    assert list(store.root.iterdir()) == [] and [p.name for p in disk.parent.iterdir()] == ["box-1.qcow2"]


def test_the_sweep_undoes_a_commit_never_switched_to_and_keeps_one_that_was(tmp_path: Path, source_disk: Path) -> None:
    store = CommitStore(tmp_path / "commits")
    switched = asyncio.run(store.take(commit("cmt-000000000000000a"), source_disk))
    # a crash after the rename, before the switch: the commit's disk is still the VM's (two links)
    unswitched = store.dir("cmt-000000000000000b")
    unswitched.mkdir()
    (unswitched / "commit.json").write_text(json.dumps(commit("cmt-000000000000000b").to_dict()))
    os.link(source_disk, unswitched / "disk.qcow2")
    staging = store.root / ".staging-cmt-000000000000000c"
    staging.mkdir()
    (staging / "commit.json").write_text("{}")
    unreadable = store.dir("cmt-000000000000000d")
    unreadable.mkdir()

    taken_back = store.sweep(recorded=[])
    assert [c.commit_id for c in taken_back] == [switched.commit_id] and taken_back[0].size_bytes > 0
    assert sorted(p.name for p in store.root.iterdir()) == [switched.commit_id]
    assert source_disk.stat().st_nlink == 1 and backing_of(source_disk) == str(store.disk(switched.commit_id))
    assert store.sweep(recorded=[switched.commit_id]) == []


def test_a_commit_or_fork_must_leave_the_reserve_free(tmp_path: Path) -> None:
    free = {"bytes": RESERVE_BYTES + 10 * MIB}
    store = CommitStore(tmp_path / "commits", free_bytes=lambda path: free["bytes"])
    store.check_space("commit of box-1", needed=5 * MIB)
    with pytest.raises(InsufficientStorage) as info:
        store.check_space("commit of box-1", needed=20 * MIB)
    assert info.value.message.startswith("commit of box-1: the data dir's disk has 74 MiB free")
    assert "nothing was changed" in info.value.message and info.value.code == "no_space"


# -- one commit of a VM at a time --------------------------------------------------------------------


def test_a_second_commit_of_a_vm_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    async def run() -> None:
        data_dir = DataDir(tmp_path / "data")
        data_dir.hold()
        registry = await Registry.open(data_dir.path / "state.db")
        image = GuestImage(tmp_path / "k", tmp_path / "i", tmp_path / "r", {})
        fleet = Fleet({}, data_dir, None, image, registry, None)  # type: ignore[arg-type]
        record = NodeRecord("box-1", "box", 1, 256 * MIB, 0, "2026-12-02T00:00:00Z", False, True)
        spec = VMSpec("box-1", 1, 256 * MIB, image.kernel, image.initrd, data_dir.disk("box-1"), tmp_path, tmp_path)
        node = Node(record, spec)
        running = Node(NodeRecord("box-2", "box", 1, MIB, 0, "", False, True), spec)
        node.transition(NodeState.STOPPED)
        release = asyncio.Event()

        async def slow_take(commit: CommitRecord, disk: Path) -> CommitRecord:
            await release.wait()
            return commit

        fleet.commit_store.take = slow_take  # type: ignore[method-assign]
        first = asyncio.ensure_future(fleet.commit(node, CommitRequest()))
        await asyncio.sleep(0.01)
        with pytest.raises(Conflict, match="a commit of box-1 is in progress"):
            await fleet.commit(node, CommitRequest())
        with pytest.raises(Conflict, match="box-2: it is Creating"):
            await fleet.commit(running, CommitRequest())
        release.set()
        made = await first
        assert record.backing_commit_id == record.commit_id == made.commit_id
        assert list(await registry.commits()) == [made.commit_id]
        with pytest.raises(Conflict, match="in use by box-1"):
            await fleet.delete_commit(made.commit_id)
        await registry.close()
        data_dir.release()

    asyncio.run(run())
