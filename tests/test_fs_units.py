"""The pure parts of the filesystem API: globs, event filters and the coalescing queue, request validation,
SSE formatting and decoding, the client's calls and the CLI (on a mock transport)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from pyslicer.agent.fs import rfc3339
from pyslicer.agent.watch_events import IN_CREATE, IN_DELETE, IN_ISDIR, IN_MODIFY, EventFilter, Pending, kind_of
from pyslicer.api.fs import sse_comment, sse_event
from pyslicer.cli._common import CliState
from pyslicer.cli.main import cli
from pyslicer.client import SlicerClient, WatchEvent
from pyslicer.client._fs_watch import SseDecoder
from pyslicer.client.errors import SlicerAPIError
from pyslicer.daemon.fs import MkdirRequest, WatchRequest, clean_text
from pyslicer.daemon.fs import WatchEvent as DaemonWatchEvent
from pyslicer.protocol.globs import BadPattern, check, match
from tests.fake_api import Recorder

if TYPE_CHECKING:
    from pyslicer.protocol import FsWatchEvent


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("*.go", "main.go", True),
        ("*.go", "dir/main.go", False),  # * stops at /
        ("/tmp/*/x", "/tmp/a/x", True),
        ("a?c", "abc", True),
        ("a?c", "a/c", False),
        ("[a-c]x", "bx", True),
        ("[^a-c]x", "bx", False),
        ("a\\*b", "a*b", True),
        ("a\\*b", "axb", False),
        ("a[^a]b", "a☺b", True),
    ],
)
def test_glob_is_go_path_match(pattern: str, name: str, expected: bool) -> None:
    assert match(pattern, name) is expected


@pytest.mark.parametrize("pattern", ["[", "a[", "[]a]", "[x-]", "\\", "ok*[z"])
def test_bad_globs(pattern: str) -> None:
    with pytest.raises(BadPattern):
        check(pattern)


def test_kinds_from_masks() -> None:
    assert kind_of(IN_CREATE | IN_ISDIR) == "create"
    assert kind_of(IN_MODIFY) == "write"
    assert kind_of(IN_DELETE) == "remove"
    assert kind_of(IN_ISDIR) is None


def test_event_filter() -> None:
    everything = EventFilter()
    assert everything.wants("chmod") and everything.matches("/any/path")
    chosen = EventFilter(["create", "remove"], ["*.go", "/srv/*/bin"])
    assert chosen.wants("create") and not chosen.wants("write")
    assert chosen.matches("/src/pkg/main.go")  # by base name
    assert chosen.matches("/srv/app/bin")  # by full path
    assert not chosen.matches("/src/main.rs")
    assert EventFilter(["all"]).wants("rename")


def _event(kind: str, path: str, size: int = 0) -> FsWatchEvent:
    return {"type": kind, "path": path, "timestamp": "t", "size": size, "isDir": False}  # type: ignore[typeddict-item]


def test_pending_coalesces_waits_and_bounds() -> None:
    pending = Pending(limit=2)
    pending.add(_event("write", "/a", 1), now=0.0)
    pending.add(_event("create", "/b"), now=0.1)
    pending.add(_event("write", "/a", 7), now=0.15)  # the same type and path: one event, the newest size
    pending.add(_event("write", "/c"), now=0.2)  # over the limit: dropped and counted
    assert len(pending) == 2 and pending.dropped == 1
    assert pending.next_due(0.2) == pytest.approx(0.2)
    assert pending.pop_ready(now=0.1, debounce=0.2) is None  # not yet
    first = pending.pop_ready(now=0.25, debounce=0.2)
    assert first is not None and (first["path"], first["size"]) == ("/a", 7)
    assert pending.pop_ready(now=0.25, debounce=0.2) is None  # /b is due at 0.3
    note = pending.take_note("now")
    assert note is not None and note["type"] == "overflow" and "1 events dropped" in note.get("message", "")
    assert pending.take_note("now") is None


def test_pending_keeps_the_order_of_different_events_for_one_path() -> None:
    pending = Pending(limit=10)
    for when, kind in enumerate(["create", "write", "write", "remove", "create", "create"]):
        pending.add(_event(kind, "/f", when), now=when / 100)
    pending.add(_event("write", "/g"), now=0.1)
    pending.add(_event("write", "/f", 9), now=0.2)  # the newest /f is a create: a new event, not an old write's
    order = []
    while (event := pending.pop_ready(now=1.0, debounce=0.2)) is not None:
        order.append((event["type"], event["path"], event["size"]))
    assert order == [
        ("create", "/f", 0),
        ("write", "/f", 2),  # two writes in a row: one event, the later size
        ("remove", "/f", 3),
        ("create", "/f", 5),
        ("write", "/g", 0),
        ("write", "/f", 9),
    ]
    assert len(pending) == 0


def test_rfc3339_nanoseconds() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(1_700_000_000_123_400_000) == "2023-11-14T22:13:20.1234Z"


def test_watch_request_validation() -> None:
    request = WatchRequest.model_validate(
        {"paths": ["/tmp"], "events": ["create,write", "remove"], "patterns": "*.go,*.rs", "debounce": "50ms"}
    )
    assert request.events == ["create", "write", "remove"] and request.patterns == ["*.go", "*.rs"]
    assert request.debounce == 50_000_000 and request.to_wire()["debounce_ms"] == 50
    assert WatchRequest.model_validate({"paths": ["/tmp"], "events": ["all"]}).to_wire()["events"] == []
    assert WatchRequest(paths=["/x"], one_shot=True).limit == 1
    for bad in (
        {"paths": []},
        {"paths": ["relative"]},
        {"paths": ["/x"], "timeout": "25h"},
        {"paths": ["/x"], "timeout": "-1s"},
        {"paths": ["/x"], "debounce": "1 minute"},
        {"paths": ["/x"], "max_events": -1},
        {"paths": ["/x"], "patterns": ["[x"]},
        {"paths": ["/x"], "events": ["delete"]},
        {"paths": ["/x"], "last_event_id": 2**64},
        {"paths": ["/x"], "last_event_id": 2**53},  # past what the TS SDK's numbers hold exactly
    ):
        with pytest.raises(ValidationError):
            WatchRequest.model_validate(bad)


async def test_last_event_id_header_is_bounded_and_named() -> None:
    from starlette.requests import Request

    from pyslicer.api.fs import watch_request
    from pyslicer.errors import InvalidArgument

    def with_header(value: str) -> Request:
        return Request({"type": "http", "query_string": b"paths=/x", "headers": [(b"last-event-id", value.encode())]})

    assert (await watch_request(with_header(str(2**53 - 1)))).last_event_id == 2**53 - 1
    with pytest.raises(InvalidArgument) as too_big:
        await watch_request(with_header("18446744073709551615"))
    assert "Last-Event-ID" in too_big.value.message


def test_event_ids_wrap_after_the_largest() -> None:
    from pyslicer.daemon.fs import FsWatch

    class NoStream:
        def __aiter__(self) -> NoStream:
            return self

        async def __anext__(self) -> None:
            raise StopAsyncIteration

    watch = FsWatch(NoStream(), WatchRequest(paths=["/x"], last_event_id=2**53 - 2))  # type: ignore[arg-type]
    body = {"type": "create", "path": "/x/a"}
    assert [watch._event_from(body).id for _ in range(3)] == [2**53 - 1, 1, 2]


def test_watch_kinds_agree_across_the_layers() -> None:
    from typing import get_args

    from pyslicer.agent.watch_events import KINDS
    from pyslicer.client._fs_watch import WATCH_EVENT_TYPES
    from pyslicer.daemon.fs import WatchKind
    from pyslicer.protocol import WATCH_KINDS

    assert KINDS == WATCH_KINDS == get_args(WatchKind) == WATCH_EVENT_TYPES


def test_mkdir_modes() -> None:
    assert MkdirRequest.model_validate({"path": "/x"}).mode == 0o755
    assert MkdirRequest.model_validate({"path": "/x", "mode": "0o700"}).mode == 0o700
    assert MkdirRequest.model_validate({"path": "~/x", "mode": "1777"}).mode == 0o1777
    for mode in ("rwx", "0999", "77777", 493):
        with pytest.raises(ValidationError, match="invalid mode"):
            MkdirRequest.model_validate({"path": "/x", "mode": mode})


def test_guest_names_that_are_not_utf8_are_made_safe() -> None:
    assert clean_text("caf\udce9") == "caf\ufffd"
    assert clean_text("ünï") == "ünï"


def test_sse_round_trip() -> None:
    event = DaemonWatchEvent(id=7, type="create", path="/tmp/a\nb ü", timestamp="ts", size=3, is_dir=False)
    block = sse_event(event)
    assert block.startswith(b"id: 7\nevent: watch\ndata: {") and block.endswith(b"\n\n")
    assert block.count(b"\n") == 4  # one data line, whatever the path holds
    decoder = SseDecoder()
    stream = sse_comment("watching /tmp") + b":\n\n" + block
    got = [e for line in stream.decode().split("\n") for e in decoder.feed(line)]
    assert got == [WatchEvent(id=7, type="create", path="/tmp/a\nb ü", timestamp="ts", size=3)]
    assert sse_comment("two\nlines") == b": two\n: lines\n\n"


def test_sse_decoder_takes_the_id_line_when_the_data_has_none() -> None:
    decoder = SseDecoder()
    lines = ["id: 12", "event: watch", 'data: {"type":"remove","path":"/x"}']
    assert [e for line in lines for e in decoder.feed(line)] == []
    assert list(decoder.finish()) == [WatchEvent(id=12, type="remove", path="/x", timestamp="")]


SSE_BODY = (
    b": watching /tmp\n\n"
    b'id: 1\nevent: watch\ndata: {"id":1,"type":"create","path":"/tmp/a","timestamp":"t","size":0,"isDir":true}\n\n'
    b": end: one_shot\n\n"
)
ENTRY = {"name": "a", "type": "directory", "size": 4096, "mtime": "2026-01-02T03:04:05.123456789Z", "mode": "0755"}


def _client(recorder: Recorder) -> SlicerClient:
    return SlicerClient(url="http://slicer.test", transport=httpx.MockTransport(recorder))


def test_client_calls() -> None:
    def stat(request: httpx.Request) -> httpx.Response:
        if request.url.params["path"] == "/nope":
            return httpx.Response(404, json={"error": "stat /nope: No such file", "code": "path_not_found"})
        return httpx.Response(200, json=ENTRY)

    recorder = Recorder(
        {
            ("GET", "/vm/vm-1/fs/readdir"): [ENTRY],
            ("GET", "/vm/vm-1/fs/stat"): stat,
            ("POST", "/vm/vm-1/fs/mkdir"): ENTRY,
            ("DELETE", "/vm/vm-1/fs/remove"): {"path": "/a", "removed": True},
            ("GET", "/vm/vm-1/fs/watch"): httpx.Response(
                200, content=SSE_BODY, headers={"content-type": "text/event-stream"}
            ),
        }
    )
    with _client(recorder) as client:
        (entry,) = client.readdir("vm-1", "/")
        assert entry.is_dir and entry.modified is not None and entry.modified.microsecond == 123456
        assert client.exists("vm-1", "/a") and not client.exists("vm-1", "/nope")
        with pytest.raises(SlicerAPIError) as missing:
            client.stat("vm-1", "/nope")
        assert (missing.value.status, missing.value.code) == (404, "path_not_found")
        assert client.mkdir("vm-1", "/a", recursive=True, mode=0o700).name == "a"
        client.remove("vm-1", "/a", recursive=True)
        events = list(client.watch("vm-1", ["/tmp"], events=["create"], one_shot=True, timeout=5, last_event_id=9))
        assert events == [WatchEvent(id=1, type="create", path="/tmp/a", timestamp="t", is_dir=True)]
        with pytest.raises(ValueError):
            client.watch("vm-1", [])
    mkdir, remove, watch = recorder.requests[-3:]
    assert json.loads(mkdir.content) == {"path": "/a", "recursive": True, "mode": "0700"}
    assert remove.url.params["recursive"] == "true"
    assert list(watch.url.params.multi_items()) == [
        ("paths", "/tmp"),
        ("events", "create"),
        ("one_shot", "true"),
        ("timeout", "5s"),
        ("last_event_id", "9"),
    ]


def _run(recorder: Recorder, *args: str) -> Any:
    state = CliState(client_factory=lambda *_: _client(recorder))
    return CliRunner().invoke(cli, ["vm", "fs", *args], obj=state)


def test_cli() -> None:
    recorder = Recorder(
        {
            ("GET", "/vm/vm-1/fs/readdir"): [ENTRY, {**ENTRY, "name": "f", "type": "file", "size": 3}],
            ("GET", "/vm/vm-1/fs/stat"): ENTRY,
            ("POST", "/vm/vm-1/fs/mkdir"): ENTRY,
            ("DELETE", "/vm/vm-1/fs/remove"): {"path": "/a", "removed": True},
            ("GET", "/vm/vm-1/fs/watch"): httpx.Response(200, content=SSE_BODY),
        }
    )
    listing = _run(recorder, "ls", "vm-1", "/")
    assert listing.exit_code == 0, listing.output
    assert listing.output.splitlines()[0].split() == ["MODE", "TYPE", "SIZE", "MODIFIED", "NAME"]
    assert "a/" in listing.output and "2026-01-02 03:04:05" in listing.output
    assert json.loads(_run(recorder, "ls", "vm-1", "/", "--json").output)[1]["name"] == "f"
    assert "mode:" in _run(recorder, "stat", "vm-1", "/a").output
    assert _run(recorder, "mkdir", "vm-1", "/a", "-p", "-m", "0700").exit_code == 0
    assert json.loads(recorder.requests[-1].content)["recursive"] is True
    assert _run(recorder, "rm", "vm-1", "/a", "-r").exit_code == 0
    watched = _run(recorder, "watch", "vm-1", "/tmp", "--json", "--event", "create", "--timeout", "1m")
    assert json.loads(watched.output.splitlines()[0])["path"] == "/tmp/a"
    assert recorder.requests[-1].url.params["timeout"] == "1m0s"
    human = _run(recorder, "watch", "vm-1", "/tmp")
    assert "create" in human.output and "/tmp/a/" in human.output
    failed = _run(Recorder(), "stat", "vm-1", "/x")
    assert failed.exit_code == 1 and "error:" in failed.output
