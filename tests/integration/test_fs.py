"""The filesystem API against the shared sandbox: every call, its bad inputs, and the watch as SSE."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from pyslicer.client import AsyncSlicerClient, SlicerAPIError
from tests.integration.conftest import RunningDaemon
from tests.integration.helpers import assert_error, sh
from tests.integration.test_clients import cli

ROOT = "/tmp/fs-api"


@pytest.fixture
def tree(api: httpx.Client, sandbox: str) -> Iterator[str]:
    """A scratch tree in the guest: a file, a unicode name with spaces, a symlink, a subdirectory."""
    sh(
        api,
        sandbox,
        f"rm -rf {ROOT} && mkdir -p {ROOT}/sub && printf hello > {ROOT}/file.txt && chmod 640 {ROOT}/file.txt"
        f" && printf xy > '{ROOT}/ünï cödé.txt' && ln -s file.txt {ROOT}/link && chmod 711 {ROOT}/sub",
    )
    yield ROOT
    sh(api, sandbox, f"rm -rf {ROOT}")


def test_stat(api: httpx.Client, sandbox: str, tree: str) -> None:
    response = api.get(f"/vm/{sandbox}/fs/stat", params={"path": f"{tree}/file.txt"})
    assert response.status_code == 200, response.text
    entry = response.json()
    assert {k: entry[k] for k in ("name", "type", "size", "mode")} == {
        "name": "file.txt",
        "type": "file",
        "size": 5,
        "mode": "0640",
    }
    assert entry["mtime"].endswith("Z") and entry["mtime"][:4] >= "2024"  # RFC 3339, the guest on host time
    link = api.get(f"/vm/{sandbox}/fs/stat", params={"path": f"{tree}/link"}).json()
    assert (link["type"], link["size"], link["mode"]) == ("symlink", len("file.txt"), "0777")
    home = api.get(f"/vm/{sandbox}/fs/stat", params={"path": "~"}).json()
    assert (home["name"], home["type"]) == ("root", "directory")


def test_readdir(api: httpx.Client, sandbox: str, tree: str) -> None:
    response = api.get(f"/vm/{sandbox}/fs/readdir", params={"path": tree})
    assert response.status_code == 200, response.text
    entries = {e["name"]: e for e in response.json()}
    assert list(entries) == sorted(entries)
    assert set(entries) == {"file.txt", "ünï cödé.txt", "link", "sub"}
    assert (entries["sub"]["type"], entries["sub"]["mode"]) == ("directory", "0711")
    assert (entries["ünï cödé.txt"]["size"], entries["link"]["type"]) == (2, "symlink")
    assert api.get(f"/vm/{sandbox}/fs/readdir", params={"path": f"{tree}/sub"}).json() == []


def test_mkdir_and_remove(api: httpx.Client, sandbox: str, tree: str) -> None:
    deep = f"{tree}/a b/ç/d"
    response = api.post(f"/vm/{sandbox}/fs/mkdir", json={"path": deep, "recursive": True, "mode": "0700"})
    assert response.status_code == 200, response.text
    assert (response.json()["type"], response.json()["mode"]) == ("directory", "0700")
    assert sh(api, sandbox, f"stat -c %a '{tree}/a b'").strip() == "700"
    assert api.post(f"/vm/{sandbox}/fs/mkdir", json={"path": deep, "recursive": True}).status_code == 200
    plain = api.post(f"/vm/{sandbox}/fs/mkdir", json={"path": f"{tree}/plain"})
    assert plain.status_code == 200 and plain.json()["mode"] == "0755"

    assert_error(api.post(f"/vm/{sandbox}/fs/mkdir", json={"path": deep}), 409)
    assert_error(api.post(f"/vm/{sandbox}/fs/mkdir", json={"path": f"{tree}/file.txt", "recursive": True}), 409)
    not_empty = api.delete(f"/vm/{sandbox}/fs/remove", params={"path": f"{tree}/a b"})
    assert_error(not_empty, 409, "not empty")
    assert not_empty.json()["code"] == "directory_not_empty"

    removed = api.delete(f"/vm/{sandbox}/fs/remove", params={"path": f"{tree}/link"})
    assert removed.json() == {"path": f"{tree}/link", "removed": True}
    assert sh(api, sandbox, f"test -f {tree}/file.txt && echo kept").strip() == "kept"  # not the target
    ok = api.delete(f"/vm/{sandbox}/fs/remove", params={"path": f"{tree}/a b", "recursive": "true"})
    assert ok.status_code == 200, ok.text
    assert api.get(f"/vm/{sandbox}/fs/stat", params={"path": f"{tree}/a b"}).status_code == 404
    assert api.delete(f"/vm/{sandbox}/fs/remove", params={"path": f"{tree}/plain"}).status_code == 200


def test_bad_input(api: httpx.Client, sandbox: str, tree: str) -> None:
    missing = api.get(f"/vm/{sandbox}/fs/stat", params={"path": f"{tree}/nope"})
    assert_error(missing, 404)
    assert missing.json()["code"] == "path_not_found"
    assert api.get(f"/vm/{sandbox}/fs/readdir", params={"path": f"{tree}/nope"}).json()["code"] == "path_not_found"
    assert api.delete(f"/vm/{sandbox}/fs/remove", params={"path": f"{tree}/nope"}).status_code == 404
    unknown_vm = api.get("/vm/no-such-vm/fs/stat", params={"path": "/"})
    assert_error(unknown_vm, 404)
    assert unknown_vm.json()["code"] == "vm_not_found"

    assert_error(api.post(f"/vm/{sandbox}/fs/mkdir", json={"path": f"{tree}/m", "mode": "rwx"}), 400, "mode")
    assert_error(api.post(f"/vm/{sandbox}/fs/mkdir", json={"path": f"{tree}/m", "mode": "0999"}), 400, "mode")
    assert_error(api.post(f"/vm/{sandbox}/fs/mkdir", json={"mode": "0755"}), 400, "path")
    assert_error(api.post(f"/vm/{sandbox}/fs/mkdir", content=b"{nope"), 400)
    assert_error(api.get(f"/vm/{sandbox}/fs/stat", params={"path": "relative/x"}), 400, "absolute")
    assert_error(api.get(f"/vm/{sandbox}/fs/stat"), 400, "path")
    assert_error(api.get(f"/vm/{sandbox}/fs/readdir", params={"path": f"{tree}/file.txt"}), 400)
    assert_error(api.delete(f"/vm/{sandbox}/fs/remove", params={"path": "/", "recursive": "true"}), 400, "refusing")

    watch = f"/vm/{sandbox}/fs/watch"
    for name, value in (("timeout", "-1s"), ("timeout", "25h"), ("debounce", "11s"), ("debounce", "soon")):
        assert_error(api.get(watch, params={"paths": tree, name: value}), 400, name)
    assert_error(api.get(watch, params={"paths": tree, "max_events": "-1"}), 400, "max_events")
    assert_error(api.get(watch, params={"paths": tree, "events": "explode"}), 400, "events")
    assert_error(api.get(watch, params={"paths": tree, "patterns": "[x"}), 400, "patterns")
    assert_error(api.get(watch), 400, "paths")
    assert_error(api.get(watch, params={"paths": tree}, headers={"Last-Event-ID": "x"}), 400, "Last-Event-ID")
    assert_error(api.get(watch, params={"paths": f"{tree}/nope"}), 404)


# -- watch -------------------------------------------------------------------------------------------


@dataclass
class Sse:
    events: list[dict[str, Any]] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    opened: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


def read_sse(response: httpx.Response, into: Sse) -> None:
    block: dict[str, str] = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            into.comments.append(line[1:].strip())
            into.opened.set()
        elif line == "":
            if "data" in block:
                assert block.get("event") == "watch"
                into.ids.append(int(block["id"]))
                into.events.append(json.loads(block["data"]))
            block = {}
        else:
            key, _, value = line.partition(":")
            block[key] = value.strip()


@contextlib.contextmanager
def watching(daemon: RunningDaemon, sandbox: str, params: Any, headers: dict[str, str] | None = None) -> Iterator[Sse]:
    """A watch read on a thread; the block runs once its first comment (the watches are in place) is in.
    Give every watch a timeout or a limit: the block's end waits for the stream to end."""
    sse = Sse()
    client = daemon.client()

    def run() -> None:
        try:
            with client.stream(
                "GET",
                f"/vm/{sandbox}/fs/watch",
                params=params,
                headers={"Accept": "text/event-stream", **(headers or {})},
            ) as response:
                assert response.status_code == 200, response.read()
                assert response.headers["content-type"].startswith("text/event-stream")
                read_sse(response, sse)
        except BaseException as exc:
            sse.error = exc
        finally:
            sse.opened.set()
            sse.ended.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert sse.opened.wait(60), "the watch never opened"
        if sse.error is not None:
            raise sse.error
        yield sse
        assert sse.ended.wait(60), "the watch never ended"
        if sse.error is not None:
            raise sse.error
    finally:
        thread.join(60)
        client.close()


def test_watch_create_write_remove(daemon: RunningDaemon, api: httpx.Client, sandbox: str, tree: str) -> None:
    params = {"paths": tree, "events": ["create", "write", "remove"], "max_events": "3", "timeout": "60s"}
    with watching(daemon, sandbox, params) as sse:
        sh(api, sandbox, f"cd {tree} && touch new.txt && sleep 0.5 && echo two >> new.txt && sleep 0.5 && rm new.txt")
    kinds = [(e["type"], e["path"]) for e in sse.events]
    assert kinds == [("create", f"{tree}/new.txt"), ("write", f"{tree}/new.txt"), ("remove", f"{tree}/new.txt")]
    assert sse.ids == [1, 2, 3] and [e["id"] for e in sse.events] == [1, 2, 3]
    assert sse.events[1]["size"] == 4 and sse.events[1]["isDir"] is False
    assert sse.events[0]["timestamp"].endswith("Z")
    assert sse.comments[0].startswith("watching") and sse.comments[-1] == "end: max_events"


def test_watch_sees_a_copy_land_under_its_own_name(
    daemon: RunningDaemon, api: httpx.Client, sandbox: str, tree: str
) -> None:
    params = {"paths": tree, "max_events": "1", "timeout": "60s"}
    with watching(daemon, sandbox, params) as sse:
        response = api.post(f"/vm/{sandbox}/cp", params={"path": f"{tree}/copied.txt"}, content=b"landed\n")
        assert response.status_code == 200, response.text
    # the copy is written aside under a hidden name first; a watcher sees only where it lands
    assert [(e["type"], e["path"]) for e in sse.events] == [("create", f"{tree}/copied.txt")]


def test_watch_recursive_sees_new_subdirectories(
    daemon: RunningDaemon, api: httpx.Client, sandbox: str, tree: str
) -> None:
    params = {"paths": tree, "recursive": "true", "events": "create", "max_events": "3", "timeout": "60s"}
    with watching(daemon, sandbox, params) as sse:
        sh(api, sandbox, f"mkdir {tree}/sub/deeper && sleep 0.5 && touch {tree}/sub/deeper/x && touch {tree}/sub/y")
    got = [(e["type"], e["path"], e["isDir"]) for e in sse.events]
    assert got == [
        ("create", f"{tree}/sub/deeper", True),
        ("create", f"{tree}/sub/deeper/x", False),
        ("create", f"{tree}/sub/y", False),
    ]


def test_watch_patterns_and_one_shot(daemon: RunningDaemon, api: httpx.Client, sandbox: str, tree: str) -> None:
    params = {"paths": [tree], "patterns": "*.go,*.rs", "one_shot": "true", "timeout": "60s"}
    with watching(daemon, sandbox, params) as sse:
        sh(api, sandbox, f"touch {tree}/a.txt {tree}/b.c && sleep 0.3 && touch {tree}/main.rs {tree}/x.go")
    assert [(e["type"], e["path"]) for e in sse.events] == [("create", f"{tree}/main.rs")]
    assert sse.comments[-1] == "end: one_shot"


def test_watch_timeout_heartbeats_and_resume(daemon: RunningDaemon, api: httpx.Client, sandbox: str, tree: str) -> None:
    # ids continue after Last-Event-ID; nothing is replayed. The idle stream carries a heartbeat (15 s).
    params = {"paths": tree, "events": "chmod", "timeout": "16s", "debounce": "0s"}
    started = time.monotonic()
    with watching(daemon, sandbox, params, headers={"Last-Event-ID": "41"}) as sse:
        sh(api, sandbox, f"chmod 600 {tree}/file.txt")
    assert time.monotonic() - started >= 15
    assert [(e["type"], e["path"], e["id"]) for e in sse.events] == [("chmod", f"{tree}/file.txt", 42)]
    assert sse.ids == [42]
    assert "" in sse.comments  # the bare heartbeat comment
    assert sse.comments[-1] == "end: timeout"


def _inotify_fds(api: httpx.Client, sandbox: str) -> int:
    script = (
        "for d in /proc/[0-9]*; do"
        ' if tr "\\0" " " < $d/cmdline 2>/dev/null | grep -q "^/usr/bin/python3 -S -P -c"; then'
        " for f in $d/fd/*; do readlink $f; done; fi; done | grep -c inotify || true"
    )
    return int(sh(api, sandbox, script).strip())


def test_a_client_that_leaves_leaves_no_watch_behind(
    daemon: RunningDaemon, api: httpx.Client, sandbox: str, tree: str
) -> None:
    assert _inotify_fds(api, sandbox) == 0
    host, port = daemon.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(
            f"GET /vm/{sandbox}/fs/watch?paths={tree}&recursive=true HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {daemon.token}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        seen = b""
        while b": watching" not in seen:
            chunk = sock.recv(65536)
            assert chunk, seen
            seen += chunk
        assert b" 200 " in seen.split(b"\r\n", 1)[0]
        assert _inotify_fds(api, sandbox) == 1
    deadline = time.monotonic() + 30
    while _inotify_fds(api, sandbox) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _inotify_fds(api, sandbox) == 0


async def test_python_sdk_and_cli(daemon: RunningDaemon, sandbox: str, tree: str) -> None:
    async with AsyncSlicerClient(daemon.url, token=daemon.token) as slicer:
        made = await slicer.mkdir(sandbox, f"{tree}/sdk/x", recursive=True, mode=0o700)
        assert (made.name, made.type, made.mode) == ("x", "directory", "0700")
        assert [e.name for e in await slicer.readdir(sandbox, f"{tree}/sdk")] == ["x"]
        assert (await slicer.stat(sandbox, f"{tree}/file.txt")).size == 5
        assert not await slicer.exists(sandbox, f"{tree}/nope")
        events = slicer.watch(sandbox, [tree], recursive=True, events=["create"], one_shot=True, timeout=60)
        waiting = asyncio.ensure_future(anext(events))
        await asyncio.sleep(3)  # (the watch is in place well within this under TCG)
        await slicer.exec_buffered(sandbox, "touch", [f"{tree}/sdk/x/new"])
        event = await asyncio.wait_for(waiting, 60)
        assert (event.type, event.path, event.id) == ("create", f"{tree}/sdk/x/new", 1)
        await events.aclose()
        await slicer.remove(sandbox, f"{tree}/sdk", recursive=True)
        with pytest.raises(SlicerAPIError) as missing:
            await slicer.stat(sandbox, f"{tree}/sdk")
        assert (missing.value.status, missing.value.code) == (404, "path_not_found")
    listing = cli(daemon, "vm", "fs", "ls", sandbox, tree, "--json")
    assert listing.returncode == 0, listing.stderr
    assert {e["name"] for e in json.loads(listing.stdout)} == {"file.txt", "ünï cödé.txt", "link", "sub"}
    failed = cli(daemon, "vm", "fs", "rm", sandbox, f"{tree}/sub/nope")
    assert failed.returncode == 1 and b"error:" in failed.stderr
