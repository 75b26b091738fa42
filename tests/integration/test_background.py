"""Background exec on a real guest: the whole life of an exec, its ring and gaps, kill with grace, wait-exit,
delete, the budget, bad input, and survival across a client that leaves and across the daemon's link to the
agent dropping and reconnecting. One VM for the module."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pyslicer.client import AsyncSlicerClient, SlicerAPIError, SlicerClient
from tests.integration.conftest import RunningDaemon
from tests.integration.helpers import assert_error, created_sandbox, wait_for_agent

SYS_PIDFD_GETFD = 438  # the same number on x86_64 and aarch64


@pytest.fixture(scope="module")
def vm(api: httpx.Client) -> Iterator[str]:
    with created_sandbox(api, "agent", tags=["background"]) as hostname:
        yield hostname


@contextlib.contextmanager
def started(api: httpx.Client, vm: str, script: str, **params: Any) -> Iterator[dict[str, Any]]:
    """A background ``/bin/sh -c script``, killed and deleted when the block ends (also when it fails)."""
    query = {"background": "true", "cmd": "/bin/sh", "args": ["-c", script], "stdio": "base64", **params}
    response = api.post(f"/vm/{vm}/exec", params=query)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    try:
        yield body
    finally:
        exec_id = body["exec_id"]
        api.post(f"/vm/{vm}/exec/{exec_id}/kill", json={"signal": "KILL"})
        api.get(f"/vm/{vm}/exec/{exec_id}/wait-exit", params={"timeout": 30})
        api.delete(f"/vm/{vm}/exec/{exec_id}")


def log_frames(api: httpx.Client, vm: str, exec_id: str, **params: Any) -> list[dict[str, Any]]:
    response = api.get(f"/vm/{vm}/exec/{exec_id}/logs", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines() if line]


def output_of(frames: list[dict[str, Any]]) -> bytes:
    return b"".join(
        base64.b64decode(f["data"]) if f.get("encoding") == "base64" else f["data"].encode()
        for f in frames
        if f["type"] in ("stdout", "stderr")
    )


def wait_for_output(api: httpx.Client, vm: str, exec_id: str, needle: bytes, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in output_of(log_frames(api, vm, exec_id)):
            return
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} never showed in the logs of {exec_id}")


def test_whole_life(api: httpx.Client, vm: str) -> None:
    with started(api, vm, "echo hello; echo oops >&2; sleep 600") as bg:
        exec_id = bg["exec_id"]
        assert re.fullmatch(r"ex_[0-9a-f]{16}", exec_id) and bg["pid"] > 0 and bg["started_at"]
        assert bg["ring_bytes"] == 1024 * 1024

        listed = {e["exec_id"]: e for e in api.get(f"/vm/{vm}/exec").json()}
        assert listed[exec_id]["running"] is True and listed[exec_id]["command"] == "/bin/sh"
        info = api.get(f"/vm/{vm}/exec/{exec_id}").json()
        assert info["args"] == ["-c", "echo hello; echo oops >&2; sleep 600"] and info["pid"] == bg["pid"]

        wait_for_output(api, vm, exec_id, b"oops")
        frames = log_frames(api, vm, exec_id)
        assert frames[0]["type"] == "started" and frames[0]["id"] == 1 and frames[0]["pid"] == bg["pid"]
        assert all(f["encoding"] == "base64" for f in frames if f["type"] in ("stdout", "stderr"))
        assert {f["type"] for f in frames} >= {"stdout", "stderr"}

        assert_error(api.delete(f"/vm/{vm}/exec/{exec_id}"), 409, "running")
        timed_out = api.get(f"/vm/{vm}/exec/{exec_id}/wait-exit", params={"timeout": 1}).json()
        assert timed_out["timed_out"] is True and timed_out["running"] is True

        # no body at all, with a JSON content type, as the Go SDK sends it
        killed = api.post(
            f"/vm/{vm}/exec/{exec_id}/kill", content=b"", headers={"content-type": "application/json"}
        ).json()
        assert killed["signal_sent"] == "TERM" and killed["exec_id"] == exec_id
        ended = api.get(f"/vm/{vm}/exec/{exec_id}/wait-exit", params={"timeout": 30}).json()
        assert ended["running"] is False and ended["timed_out"] is False and ended["signal"] == "SIGTERM"
        assert ended["exit_code"] == 143 and ended["ended_at"]
        last = log_frames(api, vm, exec_id)[-1]
        assert last["type"] == "exit" and last["signal"] == "SIGTERM"
        assert api.post(f"/vm/{vm}/exec/{exec_id}/kill", json={}).json()["running"] is False

        deleted = api.delete(f"/vm/{vm}/exec/{exec_id}")
        assert deleted.status_code == 200 and deleted.json() == {"exec_id": exec_id, "reaped": True}
        for response in (
            api.get(f"/vm/{vm}/exec/{exec_id}"),
            api.delete(f"/vm/{vm}/exec/{exec_id}"),
            api.get(f"/vm/{vm}/exec/{exec_id}/logs"),
            api.post(f"/vm/{vm}/exec/{exec_id}/kill", json={}),
            api.get(f"/vm/{vm}/exec/{exec_id}/wait-exit"),
        ):
            assert_error(response, 410, exec_id)
        assert exec_id not in {e["exec_id"] for e in api.get(f"/vm/{vm}/exec").json()}
    assert_error(api.get(f"/vm/{vm}/exec/ex_0123456789abcdef"), 404)
    assert_error(api.delete(f"/vm/{vm}/exec/ex_0123456789abcdef"), 404)


def test_follow_from_an_id_waits_for_it(daemon: RunningDaemon, api: httpx.Client, vm: str) -> None:
    script = "sleep 1; for i in 1 2 3 4 5 6; do echo step-$i; sleep 0.3; done"
    with started(api, vm, script) as bg:
        exec_id = bg["exec_id"]
        seen: list[dict[str, Any]] = []
        with (
            daemon.client() as client,
            client.stream("GET", f"/vm/{vm}/exec/{exec_id}/logs", params={"follow": "true", "from_id": 5}) as response,
        ):
            assert response.status_code == 200
            seen = [json.loads(line) for line in response.iter_lines() if line]
        assert seen[0]["id"] == 5 and seen[-1]["type"] == "exit" and seen[-1]["exit_code"] == 0
        assert [f["id"] for f in seen] == list(range(5, seen[-1]["id"] + 1))
        everything = log_frames(api, vm, exec_id)
        assert b"step-1" in output_of(everything) and b"step-6" in output_of(seen)
        assert b"step-1" not in output_of(seen)  # ids 2-4 are the first three steps


def test_small_ring_reports_gaps(api: httpx.Client, vm: str) -> None:
    script = "for i in $(seq 1 200); do printf 'line-%04d\\n' $i; done"
    with started(api, vm, script, ring_bytes=256) as bg:
        exec_id = bg["exec_id"]
        assert bg["ring_bytes"] == 256
        api.get(f"/vm/{vm}/exec/{exec_id}/wait-exit", params={"timeout": 60})
        frames = log_frames(api, vm, exec_id)
        gap = frames[0]
        assert gap["type"] == "gap" and "id" not in gap
        assert gap["dropped_frames"] > 0 and gap["dropped_bytes"] > 0 and gap["message"]
        kept = output_of(frames)
        assert kept.endswith(b"line-0200\n") and len(kept) <= 256
        info = api.get(f"/vm/{vm}/exec/{exec_id}").json()
        assert info["bytes_written"] == 200 * 10 and info["bytes_dropped"] == 2000 - len(kept)
        assert info["next_id"] == frames[-1]["id"] + 1

        # a cursor inside what was evicted gets a gap of exactly what it missed, then the rest
        first_kept = frames[1]["id"]
        from_two = log_frames(api, vm, exec_id, from_id=2)
        assert from_two[0]["type"] == "gap" and from_two[0]["dropped_frames"] == first_kept - 2
        assert from_two[1:] == frames[1:]


def test_kill_with_grace_escalates(api: httpx.Client, vm: str) -> None:
    script = "trap 'echo got-term' TERM; echo armed; while :; do sleep 0.1; done"
    with started(api, vm, script) as bg:
        exec_id = bg["exec_id"]
        wait_for_output(api, vm, exec_id, b"armed")
        killed = api.post(f"/vm/{vm}/exec/{exec_id}/kill", json={"signal": "SIGTERM", "grace_ms": 1500}).json()
        assert killed["signal_sent"] == "TERM" and killed["running"] is True
        ended = api.get(f"/vm/{vm}/exec/{exec_id}/wait-exit", params={"timeout": 60}).json()
        assert ended["signal"] == "SIGKILL" and ended["exit_code"] == 137
        assert b"got-term" in output_of(log_frames(api, vm, exec_id))


def test_other_signals_and_shell_env(api: httpx.Client, vm: str) -> None:
    query = {"background": "true", "cmd": "echo $FOO; sleep 600", "shell": "/bin/bash", "env": "FOO=from-env"}
    query["stdio"] = "base64"
    response = api.post(f"/vm/{vm}/exec", params=query)
    assert response.status_code == 201, response.text
    exec_id = response.json()["exec_id"]
    try:
        wait_for_output(api, vm, exec_id, b"from-env")
        assert api.get(f"/vm/{vm}/exec/{exec_id}").json()["command"] == "echo $FOO; sleep 600"
        assert api.post(f"/vm/{vm}/exec/{exec_id}/kill", json={"signal": "int"}).json()["signal_sent"] == "INT"
        ended = api.get(f"/vm/{vm}/exec/{exec_id}/wait-exit", params={"timeout": 60}).json()
        assert ended["signal"] == "SIGINT"
    finally:
        api.post(f"/vm/{vm}/exec/{exec_id}/kill", json={"signal": "KILL"})
        api.get(f"/vm/{vm}/exec/{exec_id}/wait-exit", params={"timeout": 30})
        api.delete(f"/vm/{vm}/exec/{exec_id}")


def test_bad_input(api: httpx.Client, vm: str) -> None:
    with started(api, vm, "sleep 600") as bg:
        exec_id = bg["exec_id"]
        assert_error(api.post(f"/vm/{vm}/exec/{exec_id}/kill", json={"signal": "BOGUS"}), 400, "signal")
        assert_error(api.post(f"/vm/{vm}/exec/{exec_id}/kill", content=b"{nope"), 400)
        assert_error(api.post(f"/vm/{vm}/exec/{exec_id}/kill", json={"grace_ms": -1}), 400, "grace_ms")
        assert_error(api.get(f"/vm/{vm}/exec/{exec_id}/wait-exit", params={"timeout": 601}), 400, "timeout")
        assert_error(api.get(f"/vm/{vm}/exec/{exec_id}/wait-exit", params={"timeout": "soon"}), 400, "timeout")
        assert_error(api.get(f"/vm/{vm}/exec/{exec_id}/logs", params={"from_id": -1}), 400, "from_id")
    base = {"background": "true", "cmd": "true"}
    assert_error(api.post(f"/vm/{vm}/exec", params={**base, "ring_bytes": -5}), 400, "ring_bytes")
    assert_error(api.post(f"/vm/{vm}/exec", params={**base, "ring_bytes": 1 << 40}), 400, "budget")
    assert_error(api.post(f"/vm/{vm}/exec", params={**base, "buffered": "true"}), 400, "buffered")
    assert_error(api.post(f"/vm/{vm}/exec", params={**base, "stdin": "true"}), 400, "stdin")
    assert_error(api.post(f"/vm/{vm}/exec", params={**base, "cmd": "/no/such/binary"}), 400, "not found")
    assert_error(api.get(f"/vm/{vm}/exec/..%2Fx"), 404)
    assert_error(api.get("/vm/no-such-vm/exec"), 404)
    assert_error(api.get("/vm/no-such-vm/exec/ex_0123456789abcdef/wait-exit"), 404)


def test_ring_budget_is_per_vm(api: httpx.Client, vm: str) -> None:
    with started(api, vm, "sleep 600", ring_bytes=32 * 1024 * 1024):
        response = api.post(f"/vm/{vm}/exec", params={"background": "true", "cmd": "true"})
        assert_error(response, 503, "budget")
        assert response.json()["code"] == "budget_exhausted"
    response = api.post(f"/vm/{vm}/exec", params={"background": "true", "cmd": "true"})
    assert response.status_code == 201, response.text  # the ring was freed with the delete
    exec_id = response.json()["exec_id"]
    api.get(f"/vm/{vm}/exec/{exec_id}/wait-exit", params={"timeout": 30})
    assert api.delete(f"/vm/{vm}/exec/{exec_id}").status_code == 200


def test_survives_the_client_leaving(daemon: RunningDaemon, vm: str) -> None:
    script = "echo first; sleep 2; echo second; sleep 600"
    with daemon.client() as first_client:
        response = first_client.post(
            f"/vm/{vm}/exec", params={"background": "true", "cmd": "/bin/sh", "args": ["-c", script]}
        )
        assert response.status_code == 201
        exec_id = response.json()["exec_id"]
        with first_client.stream("GET", f"/vm/{vm}/exec/{exec_id}/logs", params={"follow": "true"}) as follow:
            for line in follow.iter_lines():
                if line and json.loads(line)["type"] == "stdout":
                    break  # leave mid-follow, closing the connection
    with daemon.client() as api:
        try:
            wait_for_output(api, vm, exec_id, b"second")
            info = api.get(f"/vm/{vm}/exec/{exec_id}").json()
            assert info["running"] is True
            # started without stdio=base64: text frames
            frames = log_frames(api, vm, exec_id)
            assert [f["data"] for f in frames if f["type"] == "stdout"] == ["first\n", "second\n"]
            assert "encoding" not in frames[1]
        finally:
            api.post(f"/vm/{vm}/exec/{exec_id}/kill", json={"signal": "KILL"})
            api.get(f"/vm/{vm}/exec/{exec_id}/wait-exit", params={"timeout": 30})
            api.delete(f"/vm/{vm}/exec/{exec_id}")


def drop_agent_link(daemon: RunningDaemon, hostname: str) -> None:
    """Shut down the daemon's end of its connection to the VM's agent socket, from outside the daemon: a copy of
    the daemon's socket fd (pidfd_getfd) is shut down, so the daemon reads EOF and reconnects as it would after
    any drop of the channel."""
    agent_socket = f"/{hostname}/agent.sock"  # under the daemon's run dir
    ours = {f"pid={pid}," for pid in daemon.qemu_pids()}  # other daemons may run on this host
    listing = subprocess.run(["ss", "-xpn"], capture_output=True, text=True, check=True).stdout
    peers = [
        fields[7]
        for fields in (line.split() for line in listing.splitlines())
        if len(fields) > 8
        and fields[1] == "ESTAB"
        and fields[4].endswith(agent_socket)
        and any(pid in fields[8] for pid in ours)
    ]
    assert len(peers) == 1, listing  # QEMU's accepted end; its peer is the daemon's socket
    fd_dir = f"/proc/{daemon.process.pid}/fd"
    fds = [int(fd) for fd in os.listdir(fd_dir) if _readlink(f"{fd_dir}/{fd}") == f"socket:[{peers[0]}]"]
    assert len(fds) == 1, (peers, fds)
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(daemon.process.pid)
    try:
        copy = libc.syscall(SYS_PIDFD_GETFD, pidfd, fds[0], 0)
        assert copy >= 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(pidfd)
    with socket.socket(fileno=copy) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def test_survives_the_agent_link_reconnecting(daemon: RunningDaemon, api: httpx.Client, vm: str) -> None:
    script = "echo before; while [ ! -e /tmp/bg-go ]; do sleep 0.1; done; echo after; sleep 600"
    with started(api, vm, script) as bg:
        exec_id = bg["exec_id"]
        wait_for_output(api, vm, exec_id, b"before")
        with (
            daemon.client() as client,
            client.stream("GET", f"/vm/{vm}/exec/{exec_id}/logs", params={"follow": "true"}) as follow,
        ):
            lines = follow.iter_lines()
            first = json.loads(next(line for line in lines if line))
            assert first["id"] == 1
            drop_agent_link(daemon, vm)
            rest = [json.loads(line) for line in lines if line]  # the follow ends: its stream went with the link
        assert all(f["type"] != "exit" for f in rest)
        wait_for_agent(api, vm)
        info = api.get(f"/vm/{vm}/exec/{exec_id}").json()
        assert info["running"] is True and info["pid"] == bg["pid"]
        go = api.post(f"/vm/{vm}/exec", params={"cmd": "touch", "args": "/tmp/bg-go", "buffered": "true"})
        assert go.status_code == 200 and go.json()["exit_code"] == 0
        wait_for_output(api, vm, exec_id, b"after")
        frames = log_frames(api, vm, exec_id)
        assert [f["id"] for f in frames] == list(range(1, len(frames) + 1))
        assert output_of(frames).startswith(b"before\n")


def test_python_sdk_sync_and_async(daemon: RunningDaemon, vm: str) -> None:
    with SlicerClient(daemon.url, token=daemon.token) as slicer:
        started = slicer.exec_background(vm, "sh", ["-c", "echo $GREETING; sleep 600"], env={"GREETING": "hi"})
        try:
            assert started.exec_id.startswith("ex_") and started.ring_bytes == 1024 * 1024
            assert started.exec_id in {e.exec_id for e in slicer.background_execs(vm)}
            first = next(f for f in slicer.background_logs(vm, started.exec_id, follow=True) if f.type == "stdout")
            assert first.data == b"hi\n" and first.id == 2
            assert slicer.background_exec(vm, started.exec_id).running
            assert slicer.wait_background(vm, started.exec_id, timeout=0.5).timed_out
            assert slicer.kill_background(vm, started.exec_id, signal="KILL").signal_sent == "KILL"
            ended = slicer.wait_background(vm, started.exec_id, timeout=30)
            assert ended.signal == "SIGKILL" and not ended.running and ended.ended_at is not None
        finally:
            slicer.kill_background(vm, started.exec_id, signal="KILL")
            slicer.wait_background(vm, started.exec_id, timeout=30)
            slicer.delete_background(vm, started.exec_id)
        with pytest.raises(SlicerAPIError) as raised:
            slicer.background_exec(vm, started.exec_id)
        assert raised.value.status == 410

    async def run() -> None:
        async with AsyncSlicerClient(daemon.url, token=daemon.token) as slicer:
            bg = await slicer.exec_background(vm, "echo", ["async"], ring_bytes=4096)
            await slicer.wait_background(vm, bg.exec_id, timeout=30)
            frames = [f async for f in slicer.background_logs(vm, bg.exec_id, from_id=2)]
            assert [f.type for f in frames] == ["stdout", "exit"] and frames[0].data == b"async\n"
            await slicer.delete_background(vm, bg.exec_id)

    asyncio.run(run())


def cli(daemon: RunningDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SLICER_URL": daemon.url, "SLICER_TOKEN": daemon.token}
    return subprocess.run(
        [sys.executable, "-m", "pyslicer.cli.main", "vm", "bg", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli(daemon: RunningDaemon, vm: str) -> None:
    started = cli(daemon, "exec", vm, "--", "sh", "-c", "echo from-cli; echo to-err >&2; exit 3")
    assert started.returncode == 0, started.stderr
    exec_id = started.stdout.strip()
    assert re.fullmatch(r"ex_[0-9a-f]{16}", exec_id)
    waited = cli(daemon, "wait", vm, exec_id, "--timeout", "60")
    assert waited.returncode == 3 and "exited with 3" in waited.stdout
    listed = cli(daemon, "list", vm)
    assert exec_id in listed.stdout and "exited (3)" in listed.stdout
    assert "exited (3)" in cli(daemon, "info", vm, exec_id).stdout
    logs = cli(daemon, "logs", vm, exec_id)
    assert logs.stdout == "from-cli\n" and "to-err" in logs.stderr
    as_json = [json.loads(line) for line in cli(daemon, "logs", vm, exec_id, "--json").stdout.splitlines()]
    assert as_json[0]["type"] == "started" and as_json[-1]["exit_code"] == 3
    assert "had ended" in cli(daemon, "kill", vm, exec_id).stdout
    assert cli(daemon, "rm", vm, exec_id).returncode == 0
    gone = cli(daemon, "info", vm, exec_id)
    assert gone.returncode != 0 and "deleted" in gone.stderr

    sleeper = cli(daemon, "exec", vm, "sleep", "600").stdout.strip()
    try:
        assert cli(daemon, "wait", vm, sleeper, "--timeout", "0.5").returncode == 124
        refused = cli(daemon, "rm", vm, sleeper)
        assert refused.returncode != 0 and "running" in refused.stderr
        assert "sent KILL" in cli(daemon, "kill", vm, sleeper, "-s", "kill").stdout
    finally:
        cli(daemon, "kill", vm, sleeper, "-s", "KILL")
        cli(daemon, "wait", vm, sleeper)
        cli(daemon, "rm", vm, sleeper)
