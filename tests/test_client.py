"""Unit tests of pyslicer.client: request building, parsing and error mapping on httpx.MockTransport,
plus the full-duplex exec transports against a tiny ASGI server under uvicorn."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import inspect
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from pyslicer.client import (
    AgentHealth,
    AsyncSlicerClient,
    ExecFrame,
    SlicerAPIError,
    SlicerClient,
    SlicerConnectionError,
    SlicerResponseError,
    SlicerTimeoutError,
    is_unix_socket,
)
from pyslicer.client._base_client import ssl_context
from pyslicer.client._config import resolve_endpoint
from pyslicer.client._socket_exec import SocketExecClient, _lines
from pyslicer.errors import ConfigError, NotSupported, SlicerError
from tests.fake_api import Recorder, serve

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SLICER_URL", "SLICER_TOKEN", "SLICER_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)


def client_for(handler: Handler, **kwargs: Any) -> SlicerClient:
    return SlicerClient(url="http://slicer.test", transport=httpx.MockTransport(handler), **kwargs)


def async_client_for(handler: Handler, **kwargs: Any) -> AsyncSlicerClient:
    return AsyncSlicerClient(url="http://slicer.test", transport=httpx.MockTransport(handler), **kwargs)


def ndjson(*frames: dict[str, Any]) -> httpx.Response:
    body = "".join(json.dumps(frame) + "\n" for frame in frames).encode()
    return httpx.Response(200, content=body, headers={"content-type": "application/x-ndjson"})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "uds"),
    [
        ("/run/slicer/api.sock", "/run/slicer/api.sock"),
        ("./slicer.sock", "./slicer.sock"),
        ("../x/api", "../x/api"),
        ("unix:///var/run/slicer", "/var/run/slicer"),
        ("slicer.sock", "slicer.sock"),
    ],
)
def test_unix_socket_urls(url: str, uds: str) -> None:
    assert is_unix_socket(url)
    client = SlicerClient(url=url)
    assert client.socket_path == uds
    assert client.base_url == "http://localhost"
    assert client.url == url


def test_home_socket_is_expanded() -> None:
    client = SlicerClient(url="~/slicer/api.sock")
    assert client.socket_path == os.path.expanduser("~/slicer/api.sock")


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("http://10.0.0.2:8080", "http://10.0.0.2:8080"),
        ("https://slicer.example.com/", "https://slicer.example.com"),
        ("127.0.0.1:9000", "http://127.0.0.1:9000"),
    ],
)
def test_tcp_urls(url: str, base: str) -> None:
    assert not is_unix_socket(url)
    client = SlicerClient(url=url)
    assert client.socket_path is None
    assert client.base_url == base


def test_url_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SlicerClient().base_url == "http://127.0.0.1:8080"
    monkeypatch.setenv("SLICER_URL", "/tmp/env.sock")
    assert SlicerClient().socket_path == "/tmp/env.sock"
    assert SlicerClient(url="http://h:1").base_url == "http://h:1"


@pytest.mark.parametrize("url", ["ftp://host", "http://", "unix://"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        SlicerClient(url=url)


def auth_header(client_kwargs: dict[str, Any]) -> str | None:
    recorder = Recorder({("GET", "/info"): {"version": "1"}})
    with client_for(recorder, **client_kwargs) as client:
        client.info()
    value: str | None = recorder.last.headers.get("authorization")
    return value


def test_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert auth_header({}) is None
    assert auth_header({"token": "abc"}) == "Bearer abc"
    assert auth_header({"token_file": str(token_file)}) == "Bearer from-file"
    monkeypatch.setenv("SLICER_TOKEN_FILE", str(token_file))
    assert auth_header({}) == "Bearer from-file"
    monkeypatch.setenv("SLICER_TOKEN", "from-env")
    assert auth_header({}) == "Bearer from-env"
    # explicit arguments beat the environment
    assert auth_header({"token": "explicit"}) == "Bearer explicit"
    assert auth_header({"token_file": str(token_file)}) == "Bearer from-file"


def test_token_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read token file"):
        SlicerClient(token_file=str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        SlicerClient(token_file=str(empty))


# -- requests and responses ------------------------------------------------------------------------


NODE = {
    "hostname": "vm-1",
    "hostgroup": "vm",
    "ip": "192.168.137.2",
    "ram_bytes": 4294967296,
    "cpus": 2,
    "created_at": "2025-09-02T08:32:37.667253315+01:00",
    "arch": "x86_64",
    "status": "Running",
    "tags": ["a"],
    "future_field": 1,
}


def test_info_healthz_metrics() -> None:
    recorder = Recorder(
        {
            ("GET", "/info"): {"version": "0.1.0", "git_commit": "abc", "platform": "linux", "arch": "amd64"},
            ("GET", "/healthz"): {"status": "ok"},
            ("GET", "/metrics"): httpx.Response(200, text="slicer_vm_running 1\n"),
        }
    )
    client = client_for(recorder)
    info = client.info()
    assert (info.version, info.git_commit, info.platform, info.arch) == ("0.1.0", "abc", "linux", "amd64")
    assert client.healthz() == "ok"
    assert client.metrics() == "slicer_vm_running 1\n"
    assert recorder.last.headers["user-agent"].startswith("pyslicer/")

    recorder.routes[("GET", "/healthz")] = httpx.Response(200, text="OK")
    assert client.healthz() == "ok"


def test_node_lists() -> None:
    recorder = Recorder({("GET", "/nodes"): [NODE], ("GET", "/hostgroup/my group/nodes"): None})
    client = client_for(recorder)
    [node] = client.nodes()
    assert node.hostname == "vm-1" and node.hostgroup == "vm" and node.cpus == 2 and node.tags == ["a"]
    assert node.created_at is not None and node.created_at.microsecond == 667253
    assert node.model_dump()["future_field"] == 1  # unknown fields survive
    assert recorder.last.url.query == b""

    client.nodes(tag="env=prod")
    assert recorder.last.url.params.multi_items() == [("tag", "env=prod")]
    client.nodes(tag_prefix="env=")
    assert recorder.last.url.params.multi_items() == [("tag_prefix", "env=")]

    assert client.group_nodes("my group", tag="x") == []  # a Go nil slice arrives as null
    assert recorder.last.url.raw_path == b"/hostgroup/my%20group/nodes?tag=x"


def test_host_groups() -> None:
    recorder = Recorder(
        {("GET", "/hostgroup"): [{"name": "vm", "count": 1, "ram_bytes": 1 << 30, "cpus": 2, "arch": "x86_64"}]}
    )
    [group] = client_for(recorder).host_groups()
    assert (group.name, group.count, group.ram_bytes, group.cpus, group.gpu_count) == ("vm", 1, 1 << 30, 2, 0)


def test_create_node() -> None:
    created = {"hostname": "vm-2", "ip": "192.168.137.3/24", "created_at": "2025-01-01T00:00:00Z"}
    recorder = Recorder({("POST", "/hostgroup/vm/nodes"): httpx.Response(201, json=created)})
    client = client_for(recorder)
    node = client.create_node("vm", cpus=1, ram_bytes=1 << 30, tags=["t1", "t2"], userdata="echo hi")
    assert node.hostname == "vm-2" and node.ip == "192.168.137.3/24"
    request = recorder.last
    assert request.url.query == b""
    assert json.loads(request.content) == {"cpus": 1, "ram_bytes": 1 << 30, "tags": ["t1", "t2"], "userdata": "echo hi"}
    assert request.headers["content-type"] == "application/json"

    client.create_node("vm", wait="agent", timeout="30s", persistent=False)
    assert recorder.last.url.params.multi_items() == [("wait", "agent"), ("timeout", "30s")]
    assert json.loads(recorder.last.content) == {"persistent": False}
    client.create_node("vm", wait="userdata", timeout=90)
    assert recorder.last.url.params.multi_items() == [("wait", "userdata"), ("timeout", "1m30s")]
    assert recorder.last.extensions["timeout"]["read"] is None  # the server holds the answer while it waits

    with pytest.raises(ValueError):
        client.create_node("vm", wait="nope")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.create_node("vm", tags="oops")


def test_delete_logs_health() -> None:
    recorder = Recorder(
        {
            ("DELETE", "/hostgroup/vm/nodes/vm-1"): {"message": "Node deleted", "disk_removed": "true"},
            ("GET", "/vm/vm-1/logs"): {"hostname": "vm-1", "lines": 2, "content": "a\nb\n"},
            ("GET", "/vm/vm-1/health"): {
                "hostname": "vm-1",
                "agent_uptime": 2_500_000_000,
                "agent_version": "0.1.0",
                "system_uptime": 3_000_000_000,
                "userdata_ran": True,
                "userdata_exit_code": 0,
            },
        }
    )
    client = client_for(recorder)
    assert client.delete_node("vm", "vm-1").message == "Node deleted"
    logs = client.logs("vm-1")
    assert logs.content == "a\nb\n" and recorder.last.url.query == b""
    client.logs("vm-1", lines=0)
    assert recorder.last.url.params.multi_items() == [("lines", "0")]
    health = client.health("vm-1")
    assert health.agent_up and health.agent_uptime_seconds == 2.5 and health.userdata_ran


def test_is_ready() -> None:
    status = {"code": 200}

    def head(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status["code"])

    recorder = Recorder({("HEAD", "/vm/vm-1/health"): head})
    client = client_for(recorder)
    assert client.is_ready("vm-1") is True
    assert recorder.last.method == "HEAD"
    status["code"] = 503
    assert client.is_ready("vm-1") is False
    status["code"] = 404
    with pytest.raises(SlicerAPIError) as info:
        client.is_ready("vm-1")
    assert info.value.status == 404


# -- errors ----------------------------------------------------------------------------------------


def test_json_error_mapping() -> None:
    recorder = Recorder(
        {("GET", "/vm/vm-9/health"): httpx.Response(404, json={"error": "vm-9 not found", "code": "not_found"})}
    )
    with pytest.raises(SlicerAPIError) as info:
        client_for(recorder).health("vm-9")
    error = info.value
    assert isinstance(error, SlicerError)
    assert (error.status, error.code, error.message, str(error)) == (
        404,
        "not_found",
        "vm-9 not found",
        "vm-9 not found",
    )
    assert error.method == "GET" and error.url == "http://slicer.test/vm/vm-9/health"


@pytest.mark.parametrize(
    ("response", "code", "message"),
    [
        (httpx.Response(409, json={"error": "vm is paused"}), "conflict", "vm is paused"),
        (httpx.Response(500, text="boom\n"), "internal_error", "boom"),
        (httpx.Response(502), "http_error", "HTTP 502 Bad Gateway"),
        (httpx.Response(401, json={"message": "nope"}), "unauthorized", '{"message":"nope"}'),
    ],
)
def test_error_fallbacks(response: httpx.Response, code: str, message: str) -> None:
    with pytest.raises(SlicerAPIError) as info:
        client_for(Recorder({("GET", "/info"): response})).info()
    assert info.value.code == code
    assert info.value.message == message


def test_connection_errors() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with pytest.raises(SlicerConnectionError, match=r"cannot reach slicer at http://slicer.test: .*refused"):
        client_for(refuse).info()

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(SlicerConnectionError, match="did not answer in time"):
        client_for(slow).nodes()


def test_real_connection_failure(tmp_path: Path) -> None:
    with pytest.raises(SlicerConnectionError, match="cannot reach slicer at"):
        SlicerClient(url=str(tmp_path / "absent.sock")).info()


def test_invalid_responses() -> None:
    with pytest.raises(SlicerResponseError, match="invalid JSON"):
        client_for(Recorder({("GET", "/info"): httpx.Response(200, text="<html>")})).info()
    with pytest.raises(SlicerResponseError):
        client_for(Recorder({("GET", "/nodes"): {"not": "a list"}})).nodes()


# -- exec ------------------------------------------------------------------------------------------


def test_exec_query_parameters() -> None:
    recorder = Recorder({("POST", "/vm/vm-1/exec"): ndjson({"type": "exit", "exit_code": 0})})
    client = client_for(recorder)
    list(
        client.exec(
            "vm-1",
            "/bin/sh",
            ["-c", "echo $A"],
            env=["A=1", "B=2"],
            uid=1000,
            gid=0,
            cwd="/tmp",
            shell="/bin/bash",
            base64=True,
        )
    )
    assert recorder.last.url.params.multi_items() == [
        ("cmd", "/bin/sh"),
        ("args", "-c"),
        ("args", "echo $A"),
        ("env", "A=1"),
        ("env", "B=2"),
        ("uid", "1000"),
        ("gid", "0"),
        ("cwd", "/tmp"),
        ("shell", "/bin/bash"),
        ("stdout", "true"),
        ("stderr", "true"),
        ("stdio", "base64"),
    ]
    assert recorder.last.content == b""
    assert recorder.last.extensions["timeout"]["read"] is None

    list(client.exec("vm-1", "env", env={"K": "V"}))
    assert recorder.last.url.params.multi_items() == [
        ("cmd", "env"),
        ("env", "K=V"),
        ("stdout", "true"),
        ("stderr", "true"),
    ]
    with pytest.raises(TypeError):
        client.exec("vm-1", "echo", "not-a-list")


def test_exec_typed_frames() -> None:
    recorder = Recorder(
        {
            ("POST", "/vm/vm-1/exec"): ndjson(
                {"type": "started", "pid": 42, "started_at": "2025-09-02T07:39:32.388239809Z"},
                {"type": "stdout", "data": "hello\n"},
                {"type": "stderr", "data": "oops\n"},
                {"type": "gap", "dropped_bytes": 1},
                {"type": "exit", "exit_code": 3, "ended_at": "2025-09-02T07:39:33Z"},
            )
        }
    )
    frames = list(client_for(recorder).exec("vm-1", "x"))
    assert [f.type for f in frames] == ["started", "stdout", "stderr", "exit"]
    started, out, err, end = frames
    assert started.pid == 42 and started.started_at is not None and started.started_at.second == 32
    assert out.data == b"hello\n" and out.text == "hello\n"
    assert err.data == b"oops\n"
    assert end.exit_code == 3 and end.ended_at is not None and end.signal is None


def test_exec_base64_frames() -> None:
    binary = bytes(range(256))
    recorder = Recorder(
        {
            ("POST", "/vm/vm-1/exec"): ndjson(
                {"type": "started", "pid": 1},
                {"type": "stdout", "data": b64(binary), "encoding": "base64"},
                {"type": "exit", "exit_code": 137, "signal": "KILL"},
            )
        }
    )
    frames = list(client_for(recorder).exec("vm-1", "cat", base64=True))
    assert frames[1] == ExecFrame("stdout", data=binary)
    assert (frames[2].exit_code, frames[2].signal) == (137, "KILL")


def test_exec_untyped_frames() -> None:
    recorder = Recorder(
        {
            ("POST", "/vm/vm-1/exec"): ndjson(
                {"timestamp": "2025-09-02T07:39:32.388239809Z", "stdout": "Hello\n", "stderr": "", "exit_code": 0},
                {"timestamp": "2025-09-02T07:39:32.488239809Z", "stdout": "", "stderr": "err\n", "exit_code": 0},
                {"stdout": b64(b"\xff\x00"), "stderr": b64(b"e"), "encoding": "base64", "exit_code": 0},
                {"stdout": "", "stderr": "", "exit_code": 2},
            )
        }
    )
    frames = list(client_for(recorder).exec("vm-1", "x"))
    assert [(f.type, f.data) for f in frames] == [
        ("stdout", b"Hello\n"),
        ("stderr", b"err\n"),
        ("stdout", b"\xff\x00"),
        ("stderr", b"e"),
        ("exit", b""),
    ]
    assert frames[0].timestamp is not None
    assert frames[-1].exit_code == 2


def test_exec_error_frames() -> None:
    recorder = Recorder({("POST", "/vm/vm-1/exec"): ndjson({"error": "exec: nope: not found", "exit_code": 127})})
    frames = list(client_for(recorder).exec("vm-1", "nope"))
    assert frames == [ExecFrame("error", error="exec: nope: not found", exit_code=127)]

    recorder.routes[("POST", "/vm/vm-1/exec")] = ndjson({"type": "exit", "error": "cannot start", "exit_code": 126})
    [frame] = client_for(recorder).exec("vm-1", "nope")
    assert (frame.type, frame.error, frame.exit_code) == ("error", "cannot start", 126)


def test_exec_stream_cut_short() -> None:
    recorder = Recorder({("POST", "/vm/vm-1/exec"): ndjson({"type": "started", "pid": 1})})
    frames = list(client_for(recorder).exec("vm-1", "x"))
    assert frames[-1].type == "error" and "without an exit frame" in (frames[-1].error or "")

    recorder.routes[("POST", "/vm/vm-1/exec")] = httpx.Response(200, text="not json\n")
    with pytest.raises(SlicerResponseError, match="invalid exec frame"):
        list(client_for(recorder).exec("vm-1", "x"))


def test_exec_http_error() -> None:
    recorder = Recorder(
        {("POST", "/vm/vm-1/exec"): httpx.Response(409, json={"error": "vm-1 is paused", "code": "conflict"})}
    )
    frames = client_for(recorder).exec("vm-1", "x")
    with pytest.raises(SlicerAPIError) as info:
        next(frames)
    assert (info.value.status, info.value.code, info.value.message) == (409, "conflict", "vm-1 is paused")


def echo_exec(request: httpx.Request) -> httpx.Response:
    body = request.read()
    return ndjson({"type": "stdout", "data": b64(body), "encoding": "base64"}, {"type": "exit", "exit_code": 0})


@pytest.mark.parametrize(
    "stdin",
    [b"abc\x00def", [b"abc", b"\x00", b"def"], iter([b"abc\x00", b"def"])],
    ids=["bytes", "list", "iterator"],
)
def test_exec_stdin_body(stdin: Any) -> None:
    recorder = Recorder({("POST", "/vm/vm-1/exec"): echo_exec})
    frames = list(client_for(recorder).exec("vm-1", "cat", stdin=stdin, base64=True))
    assert ("stdin", "true") in recorder.last.url.params.multi_items()
    assert frames[0].data == b"abc\x00def"


def test_exec_stdin_file(tmp_path: Path) -> None:
    path = tmp_path / "input"
    path.write_bytes(b"x" * 200_000)
    recorder = Recorder({("POST", "/vm/vm-1/exec"): echo_exec})
    with path.open("rb") as file:
        frames = list(client_for(recorder).exec("vm-1", "cat", stdin=file, base64=True))
    assert frames[0].data == b"x" * 200_000


def test_exec_buffered() -> None:
    recorder = Recorder(
        {
            ("POST", "/vm/vm-1/exec"): {
                "stdout": b64(b"out\xff"),
                "stderr": b64(b"err"),
                "exit_code": 1,
                "encoding": "base64",
            }
        }
    )
    client = client_for(recorder)
    result = client.exec_buffered("vm-1", "sh", ["-c", "x"], uid=0, base64=True)
    assert (result.stdout, result.stderr, result.exit_code, result.error) == (b"out\xff", b"err", 1, None)
    assert not result.ok
    assert recorder.last.url.params.multi_items() == [
        ("cmd", "sh"),
        ("args", "-c"),
        ("args", "x"),
        ("uid", "0"),
        ("stdout", "true"),
        ("stderr", "true"),
        ("buffered", "true"),
        ("stdio", "base64"),
    ]

    recorder.routes[("POST", "/vm/vm-1/exec")] = {"stdout": "hi\n", "stderr": "", "exit_code": 0}
    result = client.exec_buffered("vm-1", "echo", ["hi"])
    assert result.stdout_text == "hi\n" and result.ok

    recorder.routes[("POST", "/vm/vm-1/exec")] = {"exit_code": 127, "error": "not found"}
    result = client.exec_buffered("vm-1", "nope")
    assert (result.exit_code, result.error, result.stdout) == (127, "not found", b"")


# -- readiness -------------------------------------------------------------------------------------


def health_sequence(*answers: Any) -> Handler:
    remaining = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        answer = remaining.pop(0) if len(remaining) > 1 else remaining[0]
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(200, json=answer)

    return handler


def test_wait_ready() -> None:
    handler = health_sequence(
        httpx.Response(503, json={"error": "agent unavailable"}),
        {"agent_uptime": 0},
        {"agent_uptime": 5, "userdata_ran": False},
    )
    health = client_for(handler).wait_ready("vm-1", 5, interval=0.01)
    assert isinstance(health, AgentHealth) and health.agent_uptime == 5


def test_wait_ready_userdata() -> None:
    handler = health_sequence({"agent_uptime": 5}, {"agent_uptime": 6, "userdata_ran": True})
    assert client_for(handler).wait_ready("vm-1", 5, userdata=True, interval=0.01).userdata_ran


def test_wait_ready_gives_up() -> None:
    handler = health_sequence({"agent_uptime": 5, "userdata_ran": False})
    started = time.monotonic()
    with pytest.raises(SlicerTimeoutError, match=r"vm-1: agent and userdata not ready after 300ms"):
        client_for(handler).wait_ready("vm-1", 0.3, userdata=True, interval=0.01)
    assert time.monotonic() - started < 2


def test_wait_ready_fatal_errors() -> None:
    handler = health_sequence(httpx.Response(404, json={"error": "vm-1 not found"}))
    with pytest.raises(SlicerAPIError, match="vm-1 not found"):
        client_for(handler).wait_ready("vm-1", 30)


# -- async -----------------------------------------------------------------------------------------


async def test_async_requests_and_errors() -> None:
    recorder = Recorder(
        {
            ("GET", "/info"): {"version": "1"},
            ("GET", "/nodes"): [NODE],
            ("POST", "/hostgroup/vm/nodes"): {"hostname": "vm-2"},
            ("GET", "/vm/vm-1/health"): httpx.Response(500, json={"error": "agent broke", "code": "agent_unavailable"}),
        }
    )
    async with async_client_for(recorder, token="t") as client:
        assert (await client.info()).version == "1"
        assert recorder.last.headers["authorization"] == "Bearer t"
        [node] = await client.nodes(tag="x")
        assert node.hostname == "vm-1" and recorder.last.url.params["tag"] == "x"
        assert (await client.create_node("vm", cpus=2, wait="agent")).hostname == "vm-2"
        assert json.loads(recorder.last.content) == {"cpus": 2}
        with pytest.raises(SlicerAPIError) as info:
            await client.health("vm-1")
        assert (info.value.status, info.value.code) == (500, "agent_unavailable")


async def test_async_exec() -> None:
    recorder = Recorder(
        {
            ("POST", "/vm/vm-1/exec"): ndjson(
                {"type": "started", "pid": 7},
                {"type": "stdout", "data": b64(b"\x01\x02"), "encoding": "base64"},
                {"type": "exit", "exit_code": 0},
            )
        }
    )
    client = async_client_for(recorder)
    frames = [frame async for frame in client.exec("vm-1", "cat", ["-"], uid=1, base64=True)]
    assert [f.type for f in frames] == ["started", "stdout", "exit"]
    assert frames[1].data == b"\x01\x02"
    assert recorder.last.url.params.get_list("args") == ["-"]
    await client.aclose()


async def test_async_exec_stdin_sources() -> None:
    recorder = Recorder({("POST", "/vm/vm-1/exec"): echo_exec})
    client = async_client_for(recorder)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"one "
        yield b"two"

    def blocking() -> Iterator[bytes]:
        yield b"from "
        yield b"a thread"

    sources: list[tuple[Any, bytes]] = [
        (b"raw", b"raw"),
        (chunks(), b"one two"),
        ([b"a", b"b"], b"ab"),
        (blocking(), b"from a thread"),
    ]
    for stdin, expected in sources:
        frames = [f async for f in client.exec("vm-1", "cat", stdin=stdin)]
        assert frames[0].data == expected
        assert recorder.last.url.params["stdin"] == "true"


async def test_async_exec_buffered_and_wait_ready() -> None:
    recorder = Recorder(
        {
            ("POST", "/vm/vm-1/exec"): {"stdout": "x", "stderr": "", "exit_code": 0},
            ("GET", "/vm/vm-1/health"): health_sequence({"agent_uptime": 0}, {"agent_uptime": 1}),
            ("HEAD", "/vm/vm-1/health"): httpx.Response(200),
        }
    )
    client = async_client_for(recorder)
    result = await client.exec_buffered("vm-1", "echo")
    assert result.stdout == b"x" and recorder.last.url.params["buffered"] == "true"
    assert (await client.wait_ready("vm-1", 5, interval=0.01)).agent_uptime == 1
    assert await client.is_ready("vm-1")
    with pytest.raises(SlicerTimeoutError):
        await async_client_for(health_sequence({"agent_uptime": 0})).wait_ready("vm-1", 0.2, interval=0.01)


# -- full-duplex exec against a real HTTP server -----------------------------------------------------


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echoes each chunk of the request body as a stdout frame the moment it arrives."""
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"application/x-ndjson")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})

    async def frame(obj: dict[str, Any]) -> None:
        await send({"type": "http.response.body", "body": (json.dumps(obj) + "\n").encode(), "more_body": True})

    await frame({"type": "started", "pid": 1})
    auth = dict(scope["headers"]).get(b"authorization", b"").decode()
    await frame({"type": "stderr", "data": auth})
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        if message.get("body"):
            await frame({"type": "stdout", "data": b64(message["body"]), "encoding": "base64"})
        if not message.get("more_body"):
            break
    await frame({"type": "exit", "exit_code": 0})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture(scope="module", params=["unix", "tcp"])
def echo_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "unix":
        path = tmp_path_factory.mktemp("duplex") / "api.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        url = str(path)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(echo_app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    yield url
    server.should_exit = True
    thread.join(10)
    sock.close()


def test_duplex_exec_interleaves(echo_server: str) -> None:
    echoed = threading.Event()

    def stdin() -> Iterator[bytes]:
        yield b"first\n"
        # Only a full-duplex client sees the echo of the first chunk before sending the second.
        assert echoed.wait(5), "no output before stdin finished: exec is not full duplex"
        yield b"second\n"

    frames: list[ExecFrame] = []
    with SlicerClient(url=echo_server, token="sekret") as client:
        for frame in client.exec("vm-1", "cat", stdin=stdin(), base64=True):
            frames.append(frame)
            if frame.type == "stdout":
                echoed.set()
    assert [(f.type, f.data) for f in frames] == [
        ("started", b""),
        ("stderr", b"Bearer sekret"),
        ("stdout", b"first\n"),
        ("stdout", b"second\n"),
        ("exit", b""),
    ]


def test_duplex_exec_large_body(echo_server: str) -> None:
    # Output flowing back while 8 MiB flow in would deadlock a client that writes the whole body first.
    data = os.urandom(8 << 20)
    with SlicerClient(url=echo_server) as client:
        received = b"".join(f.data for f in client.exec("vm-1", "cat", stdin=data, base64=True) if f.type == "stdout")
    assert received == data


def test_duplex_exec_early_close(echo_server: str) -> None:
    def endless() -> Iterator[bytes]:
        while True:
            yield b"y\n"
            time.sleep(0.001)

    with SlicerClient(url=echo_server) as client:
        frames = client.exec("vm-1", "cat", stdin=endless(), base64=True)
        for frame in frames:
            if frame.type == "stdout":
                break
        frames.close()
        # the client is still usable afterwards
        assert [f.type for f in client.exec("vm-1", "cat", stdin=b"z")][-1] == "exit"


async def test_async_duplex_exec(echo_server: str) -> None:
    echoed = asyncio.Event()

    async def stdin() -> AsyncIterator[bytes]:
        yield b"first\n"
        await asyncio.wait_for(echoed.wait(), 5)
        yield b"second\n"

    outputs = []
    async with AsyncSlicerClient(url=echo_server) as client:
        async for frame in client.exec("vm-1", "cat", stdin=stdin(), base64=True):
            if frame.type == "stdout":
                outputs.append(frame.data)
                echoed.set()
        data = os.urandom(4 << 20)
        received = [f.data async for f in client.exec("vm-1", "cat", stdin=data, base64=True) if f.type == "stdout"]
    assert outputs == [b"first\n", b"second\n"]
    assert b"".join(received) == data


# -- SocketExecClient: the same exec without httpx ---------------------------------------------------


def test_socket_exec_matches_the_clients_signature() -> None:
    assert inspect.signature(SocketExecClient.exec) == inspect.signature(SlicerClient.exec)
    sync_init = inspect.signature(SlicerClient.__init__).parameters
    socket_init = inspect.signature(SocketExecClient.__init__).parameters
    assert list(socket_init)[:4] == list(sync_init)[:4] == ["self", "url", "token", "token_file"]


def test_socket_exec_over_a_real_server(echo_server: str) -> None:
    echoed = threading.Event()

    def stdin() -> Iterator[bytes]:
        yield b"first\n"
        assert echoed.wait(5), "no output before stdin finished: exec is not full duplex"
        yield b"second\n"

    frames: list[ExecFrame] = []
    with SocketExecClient(url=echo_server, token="sekret") as client:
        for frame in client.exec("vm-1", "cat", stdin=stdin(), base64=True):
            frames.append(frame)
            if frame.type == "stdout":
                echoed.set()
        data = os.urandom(4 << 20)
        received = b"".join(f.data for f in client.exec("vm-1", "cat", stdin=data, base64=True) if f.type == "stdout")
        no_stdin = list(client.exec("vm-1", "true"))
    assert [(f.type, f.data) for f in frames] == [
        ("started", b""),
        ("stderr", b"Bearer sekret"),
        ("stdout", b"first\n"),
        ("stdout", b"second\n"),
        ("exit", b""),
    ]
    assert received == data
    assert [f.type for f in no_stdin] == ["started", "stderr", "exit"]


def test_socket_exec_early_close(echo_server: str) -> None:
    def endless() -> Iterator[bytes]:
        while True:
            yield b"y\n"
            time.sleep(0.001)

    client = SocketExecClient(url=echo_server)
    frames = client.exec("vm-1", "cat", stdin=endless(), base64=True)
    assert next(f for f in frames if f.type == "stdout").data.startswith(b"y\n")
    frames.close()
    assert [f.type for f in client.exec("vm-1", "cat", stdin=b"z")][-1] == "exit"


def exec_answer(request: httpx.Request) -> httpx.Response:
    return ndjson({"type": "started", "pid": 1}, {"type": "stdout", "data": b64(request.read())}, {"type": "exit"})


@pytest.mark.parametrize("stdin", [None, b"in\x00put", [b"in", b"put"]], ids=["none", "bytes", "chunks"])
def test_socket_exec_sends_what_slicer_client_sends(tmp_path: Path, stdin: Any) -> None:
    recorder = Recorder({("POST", "/vm/my vm/exec"): exec_answer})
    kwargs: dict[str, Any] = {"env": {"A": "1 2"}, "uid": 0, "cwd": "/tmp", "stdin": stdin, "base64": True}
    args = ["-c", "echo $A & x=1/2?#+é"]
    with serve(recorder, tmp_path) as url:
        with SlicerClient(url, token="t") as slicer:
            expected = list(slicer.exec("my vm", "sh", args, **kwargs))
        with SocketExecClient(url, token="t") as plain:
            got = list(plain.exec("my vm", "sh", args, **kwargs))
    assert got == expected
    sent_by_httpx, sent_by_socket = recorder.requests
    assert sent_by_socket.url.raw_path == sent_by_httpx.url.raw_path
    body = b"" if stdin is None else b"".join(stdin) if isinstance(stdin, list) else stdin
    assert sent_by_socket.content == sent_by_httpx.content == body
    for name in ("host", "user-agent", "authorization", "accept"):
        assert sent_by_socket.headers[name] == sent_by_httpx.headers[name], name


def test_socket_exec_errors(tmp_path: Path) -> None:
    recorder = Recorder(
        {
            ("POST", "/vm/busy/exec"): httpx.Response(409, json={"error": "busy is paused", "code": "conflict"}),
            ("POST", "/vm/plain/exec"): httpx.Response(502, text="bad gateway\n"),
            ("POST", "/vm/junk/exec"): httpx.Response(200, text="not json\n"),
            ("POST", "/vm/short/exec"): ndjson({"type": "started", "pid": 1}),
        }
    )
    with serve(recorder, tmp_path) as url:
        client = SocketExecClient(url)
        with pytest.raises(SlicerAPIError) as info:
            list(client.exec("busy", "true"))
        assert (info.value.status, info.value.code, info.value.message) == (409, "conflict", "busy is paused")
        assert info.value.method == "POST" and info.value.url is not None and "/vm/busy/exec?cmd=true" in info.value.url
        with pytest.raises(SlicerAPIError) as info:
            list(client.exec("plain", "true"))
        assert (info.value.status, info.value.code, info.value.message) == (502, "http_error", "bad gateway")
        with pytest.raises(SlicerResponseError, match="invalid exec frame"):
            list(client.exec("junk", "true"))
        assert list(client.exec("short", "true"))[-1].type == "error"
    with pytest.raises(SlicerConnectionError, match=r"cannot reach slicer at .*absent.sock: "):
        list(SocketExecClient(str(tmp_path / "absent.sock")).exec("vm-1", "true"))
    with pytest.raises(NotSupported):
        SocketExecClient("https://slicer.example.com")
    with pytest.raises(TypeError):  # checked when called, as SlicerClient.exec does
        SocketExecClient(url).exec("vm-1", "echo", "not-a-list")


@pytest.mark.parametrize(
    "chunks",
    [[b'{"a":1}\n{"b":2}\n'], [b'{"a"', b":1}\n{", b'"b":2}'], [b'{"a":1}\n', b"", b'{"b":2}\n\n']],
)
def test_socket_exec_splits_lines_across_chunks(chunks: list[bytes]) -> None:
    assert [line for line in _lines(chunks) if line] == ['{"a":1}', '{"b":2}']


# -- the package: its names, what importing it costs, the generated client ----------------------------


def test_public_names_resolve() -> None:
    import pyslicer.client as package
    from pyslicer.client import (
        _async,
        _base_client,
        _config,
        _exec_output,
        _forward,
        _forward_async,
        _forward_spec,
        _shell,
        _shell_async,
        _sync,
        errors,
        models,
    )

    homes = {"AsyncSlicerClient": _async, "SlicerClient": _sync, "DEFAULT_TIMEOUT": _base_client}
    modules = (_config, _exec_output, errors, models, _shell, _shell_async, _forward, _forward_async, _forward_spec)
    for name in package.__all__:
        value = getattr(package, name)
        home = homes.get(name) or next(m for m in modules if hasattr(m, name))
        assert value is getattr(home, name), name
    assert set(package.__all__) <= set(dir(package))
    assert models.ExecFrame is package.ExecFrame  # the exec types are in models too, as before
    with pytest.raises(AttributeError):
        package.NoSuchName  # noqa: B018


def imported_after(code: str) -> set[str]:
    """Which of the heavy modules a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return set(done.stdout.split())


HEAVY = ("httpx", "httpcore", "pydantic", "asyncio", "pyslicer.client.models")


def test_importing_the_package_costs_nothing() -> None:
    assert imported_after("import pyslicer.client; from pyslicer.client import SlicerAPIError, ExecFrame") == set()


def test_a_client_that_only_runs_commands_never_imports_pydantic_or_asyncio() -> None:
    code = """
import httpx
from pyslicer.client import SlicerClient
def answer(request):
    if request.url.path == "/nodes":
        return httpx.Response(200, json=[{"hostname": "vm-1"}])
    if request.url.params.get("buffered"):
        return httpx.Response(200, json={"stdout": "hi", "exit_code": 0})
    return httpx.Response(200, content=b'{"type":"stdout","data":"hi"}\\n{"type":"exit","exit_code":0}\\n')
client = SlicerClient("http://t", transport=httpx.MockTransport(answer))
assert [f.type for f in client.exec("vm-1", "echo")] == ["stdout", "exit"]
assert client.exec_buffered("vm-1", "echo").exit_code == 0
"""
    assert imported_after(code) == {"httpx"}
    assert imported_after("from pyslicer.client._socket_exec import SocketExecClient; SocketExecClient()") == set()
    assert {"pydantic", "pyslicer.client.models"} <= imported_after(code + "assert client.nodes()[0].hostname")


def load_unasync() -> Any:
    spec = importlib.util.spec_from_file_location("unasync", Path(__file__).parent.parent / "scripts" / "unasync.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sync_client_is_generated_from_the_async_one() -> None:
    unasync = load_unasync()
    expected, used = unasync.unasync(unasync.SOURCE.read_text())
    assert unasync.TARGET.read_text() == expected, "run: python scripts/unasync.py"
    assert used == set(range(len(unasync.SUBS))), "a rule of scripts/unasync.py matches nothing"
    script = [sys.executable, str(Path(unasync.__file__)), "--check"]
    assert subprocess.run(script, capture_output=True, timeout=60).returncode == 0


def test_unasync_rules() -> None:
    unasync = load_unasync()
    source = (
        "import asyncio\n"
        "from ._stdin_async import AsyncStdin, async_stdin_body\n"
        "    async def __aenter__(self) -> AsyncSlicerClient:\n"
        "        await asyncio.sleep(1)\n"
        "        async for line in response.aiter_lines():\n"
        "    ) -> AsyncGenerator[ExecFrame, None]:\n"
        "        await response.aread(); await self._http.aclose()\n"
        "    async def handle_async_request(self) -> None:  # untouched: not a client name\n"
    )
    generated, _ = unasync.unasync(source)
    assert generated.splitlines()[1:] == [
        "import time",
        "from ._stdin import Stdin, stdin_body",
        "    def __enter__(self) -> SlicerClient:",
        "        time.sleep(1)",
        "        for line in response.iter_lines():",
        "    ) -> Generator[ExecFrame, None, None]:",
        "        response.read(); self._http.close()",
        "    def handle_async_request(self) -> None:  # untouched: not a client name",
    ]


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if callable(member)
        and (not name.startswith("_") or name in ("__init__", "__enter__", "__exit__", "__aenter__", "__aexit__"))
    }


def test_sync_and_async_clients_have_one_surface() -> None:
    renamed = {"aclose": "close", "__aenter__": "__enter__", "__aexit__": "__exit__"}
    async_methods = {renamed.get(name, name): sig for name, sig in public_methods(AsyncSlicerClient).items()}
    sync_methods = public_methods(SlicerClient)
    assert set(async_methods) == set(sync_methods)
    for name, sync_signature in sync_methods.items():
        params = list(async_methods[name].parameters.values())
        assert [(p.name, p.kind, p.default) for p in params] == [
            (p.name, p.kind, p.default) for p in sync_signature.parameters.values()
        ], name


def test_plain_http_endpoints_skip_the_ca_bundle() -> None:
    plain = ssl_context(resolve_endpoint("http://127.0.0.1:8080"))
    assert isinstance(plain, ssl.SSLContext) and plain.verify_mode == ssl.CERT_REQUIRED
    assert plain.get_ca_certs() == []  # trusts nothing, should TLS ever be spoken
    assert ssl_context(resolve_endpoint("/run/slicer.sock")) is not True
    assert ssl_context(resolve_endpoint("https://slicer.example.com")) is True


# -- fields from newer servers -----------------------------------------------------------------------


def test_node_listings_carry_group_and_persistence() -> None:
    recorder = Recorder(
        {
            ("GET", "/nodes"): [{**NODE, "persistent": True}, {"hostname": "old-1"}],
            ("GET", "/hostgroup/vm/nodes"): [{**NODE, "persistent": False}],
        }
    )
    client = client_for(recorder)
    new, old = client.nodes()
    assert (new.hostgroup, new.persistent) == ("vm", True)
    assert (old.hostgroup, old.persistent) == (None, None)  # optional: older servers leave them out
    [in_group] = client.group_nodes("vm")
    assert in_group.persistent is False


def test_exec_uid_and_gid_none_are_not_sent() -> None:
    recorder = Recorder({("POST", "/vm/vm-1/exec"): ndjson({"type": "exit", "exit_code": 0})})
    client = client_for(recorder)
    list(client.exec("vm-1", "id", uid=None, gid=None))
    assert "uid" not in recorder.last.url.params and "gid" not in recorder.last.url.params
    client.exec_buffered("vm-1", "id", uid=None, gid=0)
    assert "uid" not in recorder.last.url.params and recorder.last.url.params["gid"] == "0"


def test_buffered_exec_timings_and_typed_payloads() -> None:
    recorder = Recorder(
        {
            ("POST", "/vm/vm-1/exec"): {
                "stdout": "x",
                "exit_code": 137,
                "signal": "KILL",
                "pid": 9,
                "started_at": "2025-09-02T07:39:32Z",
                "ended_at": "2025-09-02T07:39:33.5Z",
            }
        }
    )
    result = client_for(recorder).exec_buffered("vm-1", "sleep")
    assert (result.exit_code, result.signal, result.pid) == (137, "KILL", 9)
    assert result.started_at is not None and result.ended_at is not None
    assert (result.ended_at - result.started_at).total_seconds() == 1.5
    # Output frames carry the payload under the typed name and under data; the typed name wins.
    recorder.routes[("POST", "/vm/vm-1/exec")] = ndjson(
        {"type": "stdout", "stdout": "typed", "data": "other"}, {"type": "exit"}
    )
    assert next(iter(client_for(recorder).exec("vm-1", "x"))).data == b"typed"
