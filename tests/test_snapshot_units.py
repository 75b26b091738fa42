"""The pure parts of snapshots: QEMU's command line for file-backed RAM and restores, the lifecycle's
Suspended transitions, template keys, and the guest's identity request checks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pyslicer.agent.identity import IdentitySession
from pyslicer.config import HostGroupConfig
from pyslicer.daemon.host_groups import HostGroup
from pyslicer.daemon.lifecycle import NodeState, check_transition
from pyslicer.daemon.templates import Templates
from pyslicer.errors import Conflict
from pyslicer.protocol import FrameDecoder, decode_json
from pyslicer.vmm import GuestMemory, VMSpec
from pyslicer.vmm.qemu import build_command


def spec(**fields: Any) -> VMSpec:
    base: dict[str, Any] = {
        "name": "vm-1",
        "vcpus": 1,
        "ram_bytes": 512 * 1024 * 1024,
        "kernel": Path("/k"),
        "initrd": Path("/i"),
        "disk": Path("/d.qcow2"),
        "run_dir": Path("/run/x"),
        "console_log": Path("/c.log"),
    }
    return VMSpec(**{**base, **fields})


def option(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == flag]


def test_ram_is_one_named_backend_whatever_its_kind() -> None:
    anonymous = build_command("qemu", spec(), "tcg")
    assert option(anonymous, "-M") == ["microvm,memory-backend=ram0"]
    assert option(anonymous, "-object") == ["memory-backend-ram,id=ram0,size=512M"]
    assert "-incoming" not in anonymous
    shared = build_command("qemu", spec(memory=GuestMemory(Path("/t/memory.ram"), shared=True)), "tcg")
    assert option(shared, "-object") == ["memory-backend-file,id=ram0,size=512M,mem-path=/t/memory.ram,share=on"]
    private = build_command(
        "qemu", spec(memory=GuestMemory(Path("/t/memory.ram"), shared=False), incoming=Path("/t/state")), "tcg"
    )
    assert option(private, "-object") == ["memory-backend-file,id=ram0,size=512M,mem-path=/t/memory.ram,share=off"]
    assert option(private, "-incoming") == ["defer"] and "-S" in private


def test_suspended_transitions() -> None:
    check_transition("vm-1", NodeState.RUNNING, NodeState.SUSPENDED)
    check_transition("vm-1", NodeState.SUSPENDED, NodeState.BOOTING)  # restored
    check_transition("vm-1", NodeState.SUSPENDED, NodeState.STOPPED)  # its state could not be loaded
    check_transition("vm-1", NodeState.CREATING, NodeState.SUSPENDED)  # found so after a restart
    for current in (NodeState.PAUSED, NodeState.STOPPED, NodeState.BOOTING):
        with pytest.raises(Conflict, match="cannot suspend vm-1"):
            check_transition("vm-1", current, NodeState.SUSPENDED, action="suspend")
    with pytest.raises(Conflict, match="restore it first"):
        check_transition("vm-1", NodeState.SUSPENDED, NodeState.PAUSED)


GOOD = {
    "op": "identity",
    "hostname": "sbox-2",
    "machine_id": "0" * 32,
    "mac": "02:00:00:00:00:01",
    "ip": "10.0.0.2/24",
    "gateway": "10.0.0.1",
    "seed": "00" * 16,
}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"hostname": ""}, "hostname"),
        ({"hostname": "a/b"}, "hostname"),
        ({"hostname": 5}, "hostname"),
        ({"machine_id": "xyz"}, "machine_id"),
        ({"machine_id": "A" * 32}, "machine_id"),
        ({"mac": "02:00\n"}, "mac"),
        ({"seed": "zz"}, "non-hexadecimal"),
    ],
)
def test_identity_requests_the_agent_refuses(change: dict[str, Any], needle: str) -> None:
    sent: list[bytes] = []
    finished: list[object] = []
    session = IdentitySession(None, 3, {**GOOD, **change}, sent.append, finished.append)  # type: ignore[arg-type]
    session.start()  # a bad request is refused before anything in the guest is touched
    (frame,) = FrameDecoder().feed(b"".join(sent))
    body = decode_json(frame)
    assert body["type"] == "error" and needle in body["error"], body
    assert finished == [session]


def templates_in(root: Path, in_use: set[str]) -> Templates:
    hypervisor = SimpleNamespace(name="qemu", accel="tcg")
    image = SimpleNamespace(manifest={"outputs": {"rootfs.ext4": {"sha256": "ab"}}}, initrd=Path("/i"))

    async def never(*args: object) -> Any:
        raise AssertionError("no template VM in these tests")

    return Templates(
        root,
        hypervisor,
        image,
        Path("/k"),
        root / "run",
        never,
        never,
        never,
        lambda: in_use,  # type: ignore[arg-type]
    )


def group(**fields: Any) -> HostGroup:
    return HostGroup(HostGroupConfig.model_validate({"name": "sbox", "ram_bytes": 512 * 1024**2, **fields}), None)  # type: ignore[arg-type]


def test_a_template_key_follows_the_group_shape(tmp_path: Path) -> None:
    templates = templates_in(tmp_path, set())
    keys = {templates.key(group()), templates.key(group(vcpu=2)), templates.key(group(ram_bytes=256 * 1024**2))}
    keys.add(templates.key(group(storage_size=4 * 1024**3)))
    assert len(keys) == 4
    assert templates.key(group()) == templates.key(group())


def make_template(path: Path) -> Path:
    path.mkdir(parents=True)
    for name in ("disk.qcow2", "memory.ram", "state.vmstate"):
        (path / name).write_bytes(b"x")
    return path


def test_templates_nothing_uses_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    in_use: set[str] = set()
    templates = templates_in(root, in_use)
    current = make_template(templates.current(group()).path)
    assert templates.current(group()).restorable
    layered_on = make_template(root / "sbox" / "0000000000000000")  # an older one a node's disk is layered on
    unused = make_template(root / "sbox" / "1111111111111111")
    half_built = make_template(root / "sbox" / ".building-2222222222222222")  # a daemon died while making it
    in_use.add(str(layered_on))
    templates.collect([group()])
    assert sorted(p.name for p in current.iterdir()) == ["disk.qcow2", "memory.ram", "state.vmstate"]
    assert sorted(p.name for p in layered_on.iterdir()) == ["disk.qcow2"]  # no restore will need the rest
    assert not unused.exists() and not half_built.exists()
    in_use.clear()  # its last node went
    templates.collect([group()])
    assert not layered_on.exists() and current.exists()
