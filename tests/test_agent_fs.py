"""The fs ops and the watch, end to end through the real agent run on the host (as in test_agent_link) and
the daemon's GuestFilesystem, on a temporary directory; the integration tests repeat the essentials in a guest."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from pyslicer.daemon.agent_link import AgentLink
from pyslicer.daemon.fs import GuestFilesystem, MkdirRequest, RemoveRequest, WatchEnded, WatchEvent, WatchRequest
from pyslicer.errors import Conflict, InvalidArgument, NotFound
from tests.test_agent_link import link  # noqa: F401  # the fixture

pytestmark = pytest.mark.skipif(not Path("/proc/self/fdinfo").exists(), reason="needs Linux")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A directory of its own (the link fixture keeps its socket in tmp_path)."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def fs(link: AgentLink) -> GuestFilesystem:  # noqa: F811
    return GuestFilesystem(link, "test")


async def test_stat_entry(fs: GuestFilesystem, work: Path) -> None:
    target = work / "a file ü.txt"
    target.write_bytes(b"12345")
    target.chmod(0o640)
    entry = await fs.stat(str(target))
    assert (entry.name, entry.type, entry.size, entry.mode) == ("a file ü.txt", "file", 5, "0640")
    assert entry.mtime.endswith("Z") and entry.mtime[:4].isdigit()
    (work / "link").symlink_to("a file ü.txt")
    link_entry = await fs.stat(str(work / "link"))
    assert (link_entry.type, link_entry.size) == ("symlink", len("a file ü.txt".encode()))
    with pytest.raises(NotFound) as missing:
        await fs.stat(str(work / "nope"))
    assert missing.value.code == "path_not_found"


async def test_readdir_streams_every_entry_sorted(fs: GuestFilesystem, work: Path) -> None:
    names = [f"file-{i:05d}-{'x' * 60}" for i in range(3000)]  # more than one window of NDJSON
    for name in names:
        (work / name).touch()
    (work / "sub").mkdir()
    listing = await fs.readdir(str(work))
    got = [entry.name async for entry in listing.entries()]
    assert got == sorted([*names, "sub"])
    empty = await fs.readdir(str(work / "sub"))
    assert [e async for e in empty.entries()] == []
    with pytest.raises(InvalidArgument) as not_dir:
        await fs.readdir(str(work / names[0]))
    assert not_dir.value.code == "not_a_directory"


async def test_mkdir_and_remove(fs: GuestFilesystem, work: Path) -> None:
    deep = work / "a" / "b" / "c"
    entry = await fs.mkdir(MkdirRequest(path=str(deep), recursive=True, mode="0750"))  # type: ignore[arg-type]
    assert entry.type == "directory" and entry.mode == "0750"
    assert oct((work / "a").stat().st_mode & 0o7777) == "0o750"  # every directory made, not masked
    await fs.mkdir(MkdirRequest(path=str(deep), recursive=True))  # mkdir -p: fine
    with pytest.raises(Conflict) as exists:
        await fs.mkdir(MkdirRequest(path=str(deep)))
    assert exists.value.code == "path_exists"
    (deep / "f").write_text("x")
    with pytest.raises(Conflict) as over_file:
        await fs.mkdir(MkdirRequest(path=str(deep / "f"), recursive=True))
    assert over_file.value.code == "path_exists"
    with pytest.raises(Conflict) as not_empty:
        await fs.remove(RemoveRequest(path=str(work / "a")))
    assert not_empty.value.code == "directory_not_empty"
    await fs.remove(RemoveRequest(path=str(deep / "f")))
    assert not (deep / "f").exists()
    await fs.remove(RemoveRequest(path=str(work / "a"), recursive=True))
    assert not (work / "a").exists()
    with pytest.raises(NotFound):
        await fs.remove(RemoveRequest(path=str(work / "a")))
    with pytest.raises(InvalidArgument):
        await fs.remove(RemoveRequest(path="/", recursive=True))


async def _collect(fs: GuestFilesystem, request: WatchRequest, action: list[tuple[str, Path]]) -> list[object]:
    watch = await fs.watch(request)
    items: list[object] = []

    async def consume() -> None:
        async for item in watch.events():
            items.append(item)

    task = asyncio.get_running_loop().create_task(consume())
    await asyncio.sleep(0.1)
    for what, path in action:
        if what == "mkdir":
            path.mkdir()
        elif what == "write":
            path.write_text("hello")
        elif what == "remove":
            path.unlink()
        await asyncio.sleep(0.05)
    await asyncio.wait_for(task, 10)
    return items


async def test_watch_recursive_with_filters_and_limits(fs: GuestFilesystem, work: Path) -> None:
    request = WatchRequest.model_validate(
        {"paths": [str(work)], "recursive": "true", "debounce": "0s", "max_events": "3", "events": "create,remove"}
    )
    sub = work / "sub"
    items = await _collect(
        fs, request, [("mkdir", sub), ("write", sub / "new.txt"), ("remove", sub / "new.txt"), ("write", sub / "x")]
    )
    events = [item for item in items if isinstance(item, WatchEvent)]
    assert [(e.type, e.path, e.is_dir) for e in events] == [
        ("create", str(sub), True),
        ("create", str(sub / "new.txt"), False),  # in a directory made after the watch began
        ("remove", str(sub / "new.txt"), False),
    ]
    assert [e.id for e in events] == [1, 2, 3]
    assert items[-1] == WatchEnded("max_events")


async def test_watch_patterns_one_shot_and_resume_ids(fs: GuestFilesystem, work: Path) -> None:
    request = WatchRequest.model_validate(
        {"paths": [str(work)], "patterns": ["*.go"], "one_shot": "1", "last_event_id": "41"}
    )
    items = await _collect(fs, request, [("write", work / "a.txt"), ("write", work / "main.go")])
    assert len(items) == 2 and items[-1] == WatchEnded("one_shot")
    event = items[0]
    assert isinstance(event, WatchEvent) and (event.id, event.path, event.type) == (42, str(work / "main.go"), "create")


async def test_watch_debounce_coalesces_writes(fs: GuestFilesystem, work: Path) -> None:
    target = work / "f"
    target.touch()
    request = WatchRequest.model_validate({"paths": [str(target)], "events": ["write"], "timeout": "1500ms"})
    watch = await fs.watch(request)
    items: list[object] = []

    async def consume() -> None:
        async for item in watch.events():
            items.append(item)

    task = asyncio.get_running_loop().create_task(consume())
    await asyncio.sleep(0.1)
    with target.open("a") as f:
        for _ in range(50):
            f.write("x")
            f.flush()
    await asyncio.wait_for(task, 10)
    writes = [i for i in items if isinstance(i, WatchEvent)]
    assert len(writes) == 1 and writes[0].size == 50  # 50 writes within 200 ms: one event, the last size
    assert items[-1] == WatchEnded("timeout")


async def test_watch_ends_when_nothing_is_left(fs: GuestFilesystem, work: Path) -> None:
    target = work / "gone"
    target.mkdir()
    request = WatchRequest.model_validate({"paths": [str(target)], "debounce": "0"})
    watch = await fs.watch(request)
    await asyncio.sleep(0.1)
    os.rmdir(target)
    items = [item async for item in watch.events()]
    assert isinstance(items[0], WatchEvent) and (items[0].type, items[0].path) == ("remove", str(target))
    assert items[-1] == WatchEnded("nothing left to watch")


async def test_watch_of_a_missing_path_fails_first(fs: GuestFilesystem, work: Path) -> None:
    with pytest.raises(NotFound) as missing:
        await fs.watch(WatchRequest(paths=[str(work / "nope")]))
    assert missing.value.code == "path_not_found"


async def test_a_watch_whose_reader_stalls_drops_with_a_note(fs: GuestFilesystem, work: Path) -> None:
    # Nobody reads while 8000 files appear: the agent holds a window of credit (256 KiB, ~1500 events) and
    # its queue (4096), drops the rest, and says how many once the reader is back.
    request = WatchRequest.model_validate({"paths": [str(work)], "events": "create", "debounce": "0", "timeout": "3s"})
    watch = await fs.watch(request)
    for i in range(8000):
        (work / f"f{i}").touch()
    await asyncio.sleep(1)
    items = [item async for item in watch.events()]
    creates = [i for i in items if isinstance(i, WatchEvent) and i.type == "create"]
    notes = [i for i in items if isinstance(i, WatchEvent) and i.type == "overflow"]
    assert 4096 < len(creates) < 8000
    assert notes and all("events dropped" in (note.message or "") for note in notes)
    assert len(creates) + sum(int((note.message or "").split()[0]) for note in notes) == 8000  # none lost silently
    assert items[-1] == WatchEnded("timeout")


async def test_watch_paths_join_cleanly(fs: GuestFilesystem, work: Path) -> None:
    request = WatchRequest.model_validate({"paths": [f"{work}/"], "debounce": "0", "max_events": "1"})
    watch = await fs.watch(request)
    (work / "x").touch()
    items = [item async for item in watch.events()]
    assert isinstance(items[0], WatchEvent) and items[0].path == f"{work}/x"


async def test_remove_of_a_symlink_with_a_trailing_slash_removes_the_link(fs: GuestFilesystem, work: Path) -> None:
    target = work / "target"
    target.mkdir()
    (target / "keep").write_text("x")
    (work / "link").symlink_to(target)
    await fs.remove(RemoveRequest(path=f"{work}/link/", recursive=True))
    assert not (work / "link").is_symlink() and (target / "keep").read_text() == "x"


def test_remove_refuses_the_root_however_it_is_reached(monkeypatch: pytest.MonkeyPatch, work: Path) -> None:
    # In process, with the tree removal disarmed: a regression must fail this test, not wipe the host.
    from pyslicer.agent import fs as agent_fs

    def no_tree(*args: object) -> None:
        raise AssertionError(f"would remove a tree: {args[0]}")

    monkeypatch.setattr(agent_fs, "_remove_tree", no_tree)
    for spelling in ("/proc/self/root/", "/proc/1/root/", "/proc/self/cwd/../../../../"):
        with pytest.raises(agent_fs.FsFailure):
            agent_fs.remove_path(spelling, True)
    alias = work / "alias-of-root"  # stands for a bind mount of /: the same (st_dev, st_ino)
    alias.mkdir()
    st = alias.stat()
    monkeypatch.setattr(agent_fs, "root_identity", lambda: (st.st_dev, st.st_ino))
    with pytest.raises(agent_fs.FsFailure) as refused:
        agent_fs.remove_path(str(alias), True)
    assert refused.value.errno_name == "EINVAL" and "root directory" in str(refused.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
async def test_recursive_remove_does_not_cross_into_another_filesystem(fs: GuestFilesystem, work: Path) -> None:
    import subprocess

    mount = work / "tree" / "mnt"
    mount.mkdir(parents=True)
    (work / "tree" / "plain").write_text("x")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "pyslicer-test", str(mount)], check=True)
    try:
        (mount / "precious").write_text("x")
        with pytest.raises(Conflict) as crossing:
            await fs.remove(RemoveRequest(path=str(work / "tree"), recursive=True))
        assert crossing.value.code == "other_filesystem"
        assert (mount / "precious").read_text() == "x"
    finally:
        subprocess.run(["umount", str(mount)], check=True)


async def _watch_while(fs: GuestFilesystem, request: dict[str, object], *steps: Callable[[], object]) -> list[object]:
    """The events of a watch while ``steps`` run (a pause after each), until it has been quiet a moment."""
    watch = await fs.watch(WatchRequest.model_validate({"debounce": "0s", **request}))
    items: list[object] = []

    async def consume() -> None:
        async for item in watch.events():
            items.append(item)

    task = asyncio.get_running_loop().create_task(consume())
    await asyncio.sleep(0.1)
    for step in steps:
        step()
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    watch.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    return items


def _changes(items: list[object]) -> list[tuple[str, str]]:
    return [(item.type, item.path) for item in items if isinstance(item, WatchEvent)]


async def test_a_directory_moved_into_a_recursive_watch_is_watched(fs: GuestFilesystem, work: Path) -> None:
    outside = work.parent / "outside"
    (outside / "deep").mkdir(parents=True)
    watched = work / "w"
    watched.mkdir()
    moved = watched / "moved"
    items = await _watch_while(
        fs,
        {"paths": [str(watched)], "recursive": "true", "events": "create"},
        lambda: os.rename(outside, moved),  # as cp lands a tree: a rename from a hidden temporary name
        lambda: (moved / "f.txt").write_text("x"),
        lambda: (moved / "deep" / "g.txt").write_text("x"),
    )
    assert _changes(items) == [
        ("create", str(moved)),
        ("create", str(moved / "f.txt")),  # directly in the moved directory
        ("create", str(moved / "deep" / "g.txt")),
    ]


async def test_a_directory_renamed_within_a_recursive_watch_stays_watched(fs: GuestFilesystem, work: Path) -> None:
    (work / "old" / "sub").mkdir(parents=True)
    items = await _watch_while(
        fs,
        {"paths": [str(work)], "recursive": "true", "events": "create"},
        lambda: os.rename(work / "old", work / "new"),
        lambda: (work / "new" / "f").write_text("x"),
        lambda: (work / "new" / "sub" / "g").write_text("x"),
    )
    assert _changes(items) == [
        ("create", str(work / "new")),
        ("create", str(work / "new" / "f")),  # under the new name, not the old
        ("create", str(work / "new" / "sub" / "g")),
    ]


async def test_a_new_directory_comes_before_its_contents(fs: GuestFilesystem, work: Path) -> None:
    items = await _watch_while(
        fs,
        {"paths": [str(work)], "recursive": "true", "events": "create", "debounce": "300ms"},
        lambda: os.makedirs(work / "a" / "b" / "c"),
    )
    assert _changes(items) == [
        ("create", str(work / "a")),
        ("create", str(work / "a" / "b")),
        ("create", str(work / "a" / "b" / "c")),
    ]


async def test_watch_streams_are_capped_per_agent(fs: GuestFilesystem, work: Path) -> None:
    from pyslicer.agent.watch import MAX_STREAMS
    from pyslicer.errors import Unavailable

    watches = [await fs.watch(WatchRequest(paths=[str(work)])) for _ in range(MAX_STREAMS)]
    with pytest.raises(Unavailable) as refused:
        await fs.watch(WatchRequest(paths=[str(work)]))
    assert refused.value.code == "too_many_watches"
    watches.pop().cancel()
    await asyncio.sleep(0.1)
    watches.append(await fs.watch(WatchRequest(paths=[str(work)])))  # a slot is free again
    for watch in watches:
        watch.cancel()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
async def test_a_recursive_watch_does_not_enter_another_filesystem(fs: GuestFilesystem, work: Path) -> None:
    import subprocess

    mount = work / "mnt"
    mount.mkdir()
    (work / "plain").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "pyslicer-test", str(mount)], check=True)
    try:
        (mount / "sub").mkdir()
        items = await _watch_while(
            fs,
            {"paths": [str(work)], "recursive": "true", "events": "create"},
            lambda: (mount / "sub" / "f").write_text("x"),
            lambda: (work / "plain" / "f").write_text("x"),
        )
        assert _changes(items) == [("create", str(work / "plain" / "f"))]
    finally:
        subprocess.run(["umount", str(mount)], check=True)


async def test_a_watch_that_ends_still_sends_what_it_held(fs: GuestFilesystem, work: Path) -> None:
    # 2500 events are more than a window of credit (~1500): the rest waits in the agent when the watched
    # directory goes away, and must still arrive once the reader is back.
    watched = work / "w"
    watched.mkdir()
    watch = await fs.watch(WatchRequest.model_validate({"paths": [str(watched)], "events": "create", "debounce": "0"}))
    for i in range(2500):
        (watched / f"f{i}").touch()
    await asyncio.sleep(0.5)
    os.rename(watched, work / "gone")
    await asyncio.sleep(0.5)
    items = [item async for item in watch.events()]
    creates = [i for i in items if isinstance(i, WatchEvent) and i.type == "create"]
    assert len(creates) == 2500
    assert items[-1] == WatchEnded("nothing left to watch")
