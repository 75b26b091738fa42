"""Exec against one shared sandbox: streaming, buffered, stdin, base64, identities, errors."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any
from urllib.parse import urlencode, urlparse

import httpx
import pytest

from tests.integration.conftest import RunningDaemon
from tests.integration.helpers import assert_error, exec_buffered, exec_stream, sh


def test_streaming_frames_are_typed_and_ordered(api: httpx.Client, sandbox: str) -> None:
    got = exec_stream(api, sandbox, "/bin/sh", "-c", "echo out; echo err >&2; exit 4")
    assert got[0]["type"] == "started" and got[0]["pid"] > 0 and got[0]["started_at"]
    assert got[-1]["type"] == "exit" and got[-1]["exit_code"] == 4 and got[-1]["ended_at"]
    stdout = "".join(f["data"] for f in got if f["type"] == "stdout")
    stderr = "".join(f["data"] for f in got if f["type"] == "stderr")
    assert (stdout, stderr) == ("out\n", "err\n")
    # the TypeScript SDK reads the payload under the channel's name
    assert all(f[f["type"]] == f["data"] for f in got if f["type"] in ("stdout", "stderr"))


def test_output_streams_before_the_command_ends(daemon: RunningDaemon, sandbox: str) -> None:
    params = [("cmd", "/bin/sh"), ("args", "-c"), ("args", "echo first; sleep 3; echo second")]
    with daemon.client() as client, client.stream("POST", f"/vm/{sandbox}/exec", params=params) as response:
        started = time.monotonic()
        seen: list[tuple[float, dict[str, Any]]] = []
        for line in response.iter_lines():
            if line:
                seen.append((time.monotonic() - started, json.loads(line)))
    first = next(t for t, f in seen if f.get("data") == "first\n")
    second = next(t for t, f in seen if f.get("data") == "second\n")
    assert second - first > 2  # "first" arrived while the command was still sleeping


def test_buffered(api: httpx.Client, sandbox: str) -> None:
    result = exec_buffered(api, sandbox, "/bin/sh", "-c", "printf abc; printf xyz >&2; exit 2")
    timing = {key: result.pop(key) for key in ("pid", "started_at", "ended_at")}
    assert result == {"stdout": "abc", "stderr": "xyz", "exit_code": 2}
    assert timing["pid"] > 0 and timing["started_at"] <= timing["ended_at"]


def test_base64_keeps_binary_output(api: httpx.Client, sandbox: str) -> None:
    script = "printf '\\000\\377\\376'; printf '\\001' >&2"
    result = exec_buffered(api, sandbox, "/bin/sh", "-c", script, stdio="base64")
    assert result["encoding"] == "base64"
    assert base64.b64decode(result["stdout"]) == b"\x00\xff\xfe"
    assert base64.b64decode(result["stderr"]) == b"\x01"
    got = exec_stream(api, sandbox, "/bin/sh", "-c", script, stdio="base64")
    data = b"".join(base64.b64decode(f["data"]) for f in got if f["type"] == "stdout")
    assert data == b"\x00\xff\xfe"
    assert all(f.get("encoding") == "base64" for f in got if f["type"] in ("stdout", "stderr"))


def test_stdin_is_piped(daemon: RunningDaemon, sandbox: str) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, more than one flow-control window

    def body() -> Any:
        for offset in range(0, len(payload), 65536):
            yield payload[offset : offset + 65536]

    params = {"cmd": "sha256sum", "stdin": "true"}
    with daemon.client() as client:
        response = client.post(f"/vm/{sandbox}/exec", params=params, content=body())
    import hashlib

    got = [json.loads(line) for line in response.text.splitlines()]
    stdout = "".join(f["data"] for f in got if f["type"] == "stdout")
    assert stdout.split()[0] == hashlib.sha256(payload).hexdigest()
    assert got[-1]["exit_code"] == 0


async def _duplex(daemon: RunningDaemon, sandbox: str) -> list[str]:
    """Send a line, read its echo, then send the next: only works if the server is full duplex."""
    url = urlparse(daemon.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    query = urlencode({"cmd": "cat", "stdin": "true"})
    writer.write(
        (
            f"POST /vm/{sandbox}/exec?{query} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {daemon.token}\r\n"
            "Transfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode()
    )
    echoed: list[str] = []
    buffer = b""
    for word in ("ping\n", "pong\n"):
        writer.write(f"{len(word):x}\r\n{word}\r\n".encode())
        await writer.drain()
        while word not in "".join(echoed):
            buffer += await asyncio.wait_for(reader.read(4096), 30)
            for line in buffer.split(b"\n"):
                if line.startswith(b"{") and b'"stdout"' in line:
                    echoed.append(json.loads(line)["data"])
            buffer = buffer[buffer.rfind(b"\n") + 1 :]
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    writer.close()
    return echoed


def test_stdin_full_duplex(daemon: RunningDaemon, sandbox: str) -> None:
    echoed = asyncio.run(_duplex(daemon, sandbox))
    assert "".join(echoed) == "ping\npong\n"


def test_missing_binary_is_127(api: httpx.Client, sandbox: str) -> None:
    got = exec_stream(api, sandbox, "/no/such/tool")
    assert got[-1]["exit_code"] == 127 and "not found" in got[-1]["error"]
    result = exec_buffered(api, sandbox, "no-such-tool-either")
    assert result["exit_code"] == 127 and result["error"]


def test_identity_cwd_env_and_shell(api: httpx.Client, sandbox: str) -> None:
    assert exec_buffered(api, sandbox, "id", "-u")["stdout"] == "0\n"
    assert exec_buffered(api, sandbox, "id", uid=65534, gid=65534)["stdout"].startswith("uid=65534")
    assert exec_buffered(api, sandbox, "pwd", cwd="/var/tmp")["stdout"] == "/var/tmp\n"
    query = [("cmd", "printenv"), ("args", "GREETING"), ("env", "GREETING=hi there"), ("buffered", "true")]
    assert api.post(f"/vm/{sandbox}/exec", params=query).json()["stdout"] == "hi there\n"
    result = exec_buffered(api, sandbox, "echo $((6 * 7))", shell="/bin/sh")
    assert result["stdout"] == "42\n"


def test_userdata_ran_once_as_root(api: httpx.Client, sandbox: str) -> None:
    health = api.get(f"/vm/{sandbox}/health").json()
    assert health["userdata_ran"] is True and health["userdata_exit_code"] == 0
    assert sh(api, sandbox, "cat /var/tmp/userdata-out") == "hello-userdata\n"
    assert sh(api, sandbox, "stat -c %U /var/tmp/userdata-out") == "root\n"


def test_disk_is_grown_to_storage_size(api: httpx.Client, sandbox: str) -> None:
    assert sh(api, sandbox, "cat /sys/block/vda/size") == f"{3 * 1024**3 // 512}\n"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        size = int(sh(api, sandbox, "df -B1 --output=size / | tail -1"))
        if size > 2.5 * 1024**3:
            break
        time.sleep(1)
    assert size > 2.5 * 1024**3


def test_the_go_sdk_default_user_sentinel_means_the_default_user(api: httpx.Client, sandbox: str) -> None:
    sentinel = str(2**32 - 1)  # what every Go RemoteCmd sends when no user is set
    params = {"cmd": "id", "args": ["-u"], "uid": sentinel, "gid": sentinel, "buffered": "true", "stdio": "base64"}
    result = api.post(f"/vm/{sandbox}/exec", params=params).json()
    assert result["exit_code"] == 0 and base64.b64decode(result["stdout"]) == b"1000\n", result  # ubuntu
    assert result["pid"] > 0 and result["started_at"] and result["ended_at"]


def test_bad_exec_requests(api: httpx.Client, sandbox: str) -> None:
    assert_error(api.post(f"/vm/{sandbox}/exec"), 400, "cmd")
    assert_error(
        api.post(f"/vm/{sandbox}/exec", params={"cmd": "cat", "stdin": "true", "buffered": "true"}),
        400,
        "stdin is not supported",
    )
    assert_error(api.post(f"/vm/{sandbox}/exec", params={"cmd": "id", "uid": "root"}), 400, "uid")
    assert_error(api.post(f"/vm/{sandbox}/exec", params={"cmd": "id", "uid": str(2**32)}), 400, "uid")
    assert_error(api.post(f"/vm/{sandbox}/exec", params={"cmd": "id", "uid": "-1"}), 400, "uid")
    assert_error(api.post(f"/vm/{sandbox}/exec", params={"cmd": "id", "stdio": "hex"}), 400, "stdio")
    assert_error(api.post(f"/vm/{sandbox}/exec", params={"cmd": "id", "stdin": "maybe"}), 400, "stdin")
    assert_error(api.post("/vm/nope-1/exec", params={"cmd": "id"}), 404)
    assert_error(api.post(f"/vm/{sandbox}/exec", params={"cmd": "id", "background": "maybe"}), 400, "background")
    assert_error(api.post(f"/vm/{sandbox}/exec", params={"cmd": "echo", "args": "\x01" * 12_000}), 400, "too large")


def test_a_client_that_leaves_stops_its_command(daemon: RunningDaemon, api: httpx.Client, sandbox: str) -> None:
    for buffered in ("true", "false"):
        with daemon.client() as client, pytest.raises(httpx.ReadTimeout):
            params = {"cmd": "sleep", "args": "77", "buffered": buffered}
            with client.stream("POST", f"/vm/{sandbox}/exec", params=params, timeout=1.5) as response:
                response.read()
        deadline = time.monotonic() + 20
        while exec_buffered(api, sandbox, "pgrep", "-f", "sleep 77")["exit_code"] == 0:
            assert time.monotonic() < deadline, f"sleep outlived its client (buffered={buffered})"
            time.sleep(0.2)


def test_guest_clock_follows_the_host(api: httpx.Client, sandbox: str) -> None:
    api.get(f"/vm/{sandbox}/health")
    guest = float(sh(api, sandbox, "date +%s.%N"))
    assert abs(guest - time.time()) < 2
