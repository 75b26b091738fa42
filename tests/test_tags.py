"""Tag rules (add, remove, replace; name= and expires_at=), expires_at and ttl parsing, and the expiry reaper."""

from __future__ import annotations

import asyncio
import datetime
import logging
from pathlib import Path

import pytest

from pyslicer.daemon.expiry import ExpiryReaper, deadline_of, ttl_tag
from pyslicer.daemon.lifecycle import NodeState
from pyslicer.daemon.node import Node
from pyslicer.daemon.registry import NodeRecord
from pyslicer.daemon.tags import (
    MAX_TAGS,
    TagChange,
    apply_change,
    expires_at_of,
    format_expires_at,
    initial_tags,
    parse_expires_at,
)
from pyslicer.errors import Conflict, InvalidArgument
from pyslicer.vmm import Nic, VMSpec

UTC = datetime.UTC
NOW = datetime.datetime(2026, 12, 2, 8, 0, 0, tzinfo=UTC)


def change(current: list[str], operation: str, *tags: str) -> list[str]:
    return apply_change("sbox-1", current, TagChange(operation, tags))  # type: ignore[arg-type]


# -- add, remove, replace ------------------------------------------------------------------------


def test_add_appends_new_tags_once_and_keeps_the_order() -> None:
    assert change(["a", "b"], "add", "b", "c", "c") == ["a", "b", "c"]


def test_remove_drops_given_tags_and_ignores_absent_ones() -> None:
    assert change(["a", "b", "c"], "remove", "b", "zzz") == ["a", "c"]


def test_replace_sets_every_mutable_tag_and_an_empty_replace_clears() -> None:
    assert change(["a", "b"], "replace", "x", "y") == ["x", "y"]
    assert change(["a", "b"], "replace") == []


def test_the_name_tag_survives_a_replace_and_a_clear() -> None:
    assert change(["name=web", "a"], "replace", "b") == ["name=web", "b"]
    assert change(["a", "name=web"], "replace") == ["name=web"]
    assert change(["name=web", "a"], "replace", "name=web", "c") == ["name=web", "c"]


@pytest.mark.parametrize(
    ("operation", "tags"), [("remove", ("name=web",)), ("add", ("name=db",)), ("replace", ("name=db",))]
)
def test_the_name_tag_cannot_be_removed_or_changed(operation: str, tags: tuple[str, ...]) -> None:
    with pytest.raises(Conflict) as info:
        change(["name=web", "a"], operation, *tags)
    assert info.value.code == "name_tag_immutable" and "web" in info.value.message


def test_a_name_can_be_given_to_a_vm_that_has_none() -> None:
    assert change(["a"], "add", "name=web") == ["a", "name=web"]


def test_an_added_expires_at_moves_the_deadline_instead_of_adding_a_second() -> None:
    before = ["a", "expires_at=2030-01-01T00:00:00Z"]
    assert change(before, "add", "expires_at=2031-01-01T00:00:00Z") == ["a", "expires_at=2031-01-01T00:00:00Z"]
    assert change(before, "remove", "expires_at=2030-01-01T00:00:00Z") == ["a"]
    assert change(before, "replace", "a") == ["a"]


@pytest.mark.parametrize(
    ("tags", "where", "code"),
    [
        (["ok", ""], "add[1]", "invalid_tag"),
        (["has space"], "add[0]", "invalid_tag"),
        (["tab\t"], "add[0]", "invalid_tag"),
        (["caf\u00e9"], "add[0]", "invalid_tag"),
        (["x" * 129], "add[0]", "invalid_tag"),
        (["name="], "add[0]", "invalid_tag"),
        (["name=a", "name=b"], "add", "invalid_tag"),
        (["expires_at=tomorrow"], "add[0]", "invalid_expires_at"),
        (["expires_at=2030-01-01T00:00:00Z", "expires_at=2031-01-01T00:00:00Z"], "add", "invalid_expires_at"),
    ],
)
def test_bad_tags_name_the_field(tags: list[str], where: str, code: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        change([], "add", *tags)
    assert info.value.message.startswith(f"{where}: ") and info.value.code == code


def test_a_vm_has_a_cap_on_its_tags() -> None:
    full = [f"t{i}" for i in range(MAX_TAGS)]
    assert change(full[:-1], "add", full[-1]) == full
    with pytest.raises(InvalidArgument) as info:
        change(full, "add", "one-more")
    assert info.value.code == "too_many_tags"
    with pytest.raises(InvalidArgument) as info:
        initial_tags([*full, "one-more"])
    assert info.value.message.startswith("tags: ")


def test_create_tags_are_checked_under_their_own_field_name() -> None:
    assert initial_tags(["a", "a", "uuid=1234", "k=v:w/x@y+z"]) == ("a", "uuid=1234", "k=v:w/x@y+z")
    with pytest.raises(InvalidArgument) as info:
        initial_tags(["fine", "not fine"])
    assert info.value.message.startswith("tags[1]: ")


# -- expires_at and ttl --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-02T03:04:05Z", datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2030-01-02t03:04:05z", datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2030-01-02 05:04:05+02:00", datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2030-01-02T03:04:05.123456789Z", datetime.datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),
    ],
)
def test_rfc3339_times_parse(text: str, expected: datetime.datetime) -> None:
    assert parse_expires_at(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2030-01-02",
        "2030-01-02T03:04:05",
        "2030-13-02T03:04:05Z",
        "2030-01-02T25:04:05Z",
        "1h",
        "2030-01-02T03:04Z",
    ],
)
def test_times_that_are_not_rfc3339_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_expires_at(text)
    assert info.value.code == "invalid_expires_at"


def test_an_expiry_is_written_in_utc_rounded_up_to_the_second() -> None:
    assert (
        format_expires_at(
            datetime.datetime(2030, 1, 2, 5, 4, 5, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
        )
        == "2030-01-02T03:04:06Z"
    )
    assert format_expires_at(NOW) == "2026-12-02T08:00:00Z"


def test_a_ttl_becomes_an_expires_at_tag() -> None:
    assert ttl_tag("1h30m", NOW) == "expires_at=2026-12-02T09:30:00Z"
    assert ttl_tag("1.5s", NOW) == "expires_at=2026-12-02T08:00:02Z"
    assert expires_at_of(["a", ttl_tag("10m", NOW)]) == NOW + datetime.timedelta(minutes=10)


@pytest.mark.parametrize("ttl", ["", "10", "10x", "-5m", "0s", "2562047h47m16.854775808s"])
def test_bad_ttls_are_refused(ttl: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        ttl_tag(ttl, NOW)
    assert info.value.code == "invalid_ttl" and info.value.message.startswith("ttl: ")


# -- the reaper ----------------------------------------------------------------------------------


def node(name: str, tags: list[str], *, protected: bool = False, state: NodeState = NodeState.RUNNING) -> Node:
    record = NodeRecord(name, "sbox", 1, 1 << 28, 0, "2026-12-02T08:00:00Z", protected, False, tags=tags)
    where = Path("/nonexistent") / name
    spec = VMSpec(
        name=name,
        vcpus=1,
        ram_bytes=1 << 28,
        kernel=where,
        initrd=where,
        disk=where,
        run_dir=where,
        console_log=where,
        kernel_args={},
        nic=Nic(tap="tap0", mac="02:00:00:00:00:01", netns="none"),
    )
    made = Node(record, spec)
    made.state = state
    return made


async def kept(node: Node) -> bool:
    return False


def at(offset_seconds: float) -> str:
    return "expires_at=" + format_expires_at(NOW + datetime.timedelta(seconds=offset_seconds))


async def test_due_finds_the_expired_and_the_next_deadline() -> None:
    nodes = [node("gone", [at(-5)]), node("later", [at(60)]), node("soon", [at(30)]), node("never", ["x"])]
    nodes.append(node("svc", [at(-5)], protected=True))
    reaper = ExpiryReaper(lambda: nodes, remove=kept, clock=lambda: NOW)
    expired, upcoming = reaper.due(NOW)
    assert [n.hostname for n in expired] == ["gone"]
    assert upcoming == NOW + datetime.timedelta(seconds=30)
    assert deadline_of(nodes[-1]) is None


async def test_a_booting_node_waits_while_a_create_is_in_flight() -> None:
    nodes = [node("booting", [at(-1)], state=NodeState.BOOTING)]
    creating = True
    reaper = ExpiryReaper(lambda: nodes, remove=kept, creating=lambda: creating, clock=lambda: NOW)
    assert reaper.due(NOW) == ([], None)
    creating = False
    assert reaper.due(NOW)[0] == nodes


async def test_the_reaper_removes_at_the_deadline_and_wakes_when_tags_change() -> None:
    removed: list[str] = []
    done = asyncio.Event()
    soon = node("soon", ["expires_at=" + format_expires_at(datetime.datetime.now(UTC))])
    untagged = node("untagged", ["a"])
    nodes = [soon, untagged]

    async def remove(n: Node) -> bool:
        removed.append(n.hostname)
        nodes.remove(n)
        done.set()
        return True

    reaper = ExpiryReaper(lambda: nodes, remove)
    reaper.start()
    try:
        await asyncio.wait_for(done.wait(), 10)
        assert removed == ["soon"]
        done.clear()
        untagged.record.tags = ["a", "expires_at=2000-01-01T00:00:00Z"]
        reaper.changed()  # with no deadline left the reaper sleeps until told
        await asyncio.wait_for(done.wait(), 10)
        assert removed == ["soon", "untagged"]
    finally:
        await reaper.stop()


async def test_a_failed_removal_is_logged_and_does_not_stop_the_reaper(caplog: pytest.LogCaptureFixture) -> None:
    nodes = [node("stuck", [at(-1)]), node("fine", [at(-1)]), node("retagged", [at(-1)])]
    removed: list[str] = []

    async def remove(n: Node) -> bool:
        if n.hostname == "stuck":
            raise RuntimeError("disk busy")
        if n.hostname == "retagged":
            return False  # the daemon found it kept after all
        removed.append(n.hostname)
        return True

    reaper = ExpiryReaper(lambda: nodes, remove, clock=lambda: NOW)
    caplog.set_level(logging.INFO, logger="pyslicer.daemon.expiry")
    upcoming = await reaper.reap_once()
    assert removed == ["fine"]
    assert upcoming is not None and upcoming > NOW  # tried again later
    assert "stuck: removing the expired VM failed" in caplog.text
    assert "fine: removed (expired at" in caplog.text and "retagged: removed" not in caplog.text
