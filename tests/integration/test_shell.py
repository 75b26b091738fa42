"""Shell over WebSocket against a real guest: a real terminal on the client side (pexpect), the SDK, and
hostile or vanishing clients."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pexpect
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from pyslicer import shell_frames
from pyslicer.client import AsyncSlicerClient, SlicerAPIError, SlicerClient
from tests.integration.conftest import RunningDaemon
from tests.integration.helpers import sh

PROMPT = "SHELLTEST> "


@pytest.fixture(scope="module")
def client(daemon: RunningDaemon) -> Iterator[SlicerClient]:
    with SlicerClient(daemon.url, token=daemon.token) as sdk:
        yield sdk


def read_until(session: object, marker: bytes, timeout: float = 60) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        assert time.monotonic() < deadline, f"no {marker!r} in {seen!r}"
        data = session.read(timeout=max(0.1, deadline - time.monotonic()))  # type: ignore[attr-defined]
        assert data, f"the session ended before {marker!r}: {seen!r}"
        seen += data
    return seen


def slicer_command(daemon: RunningDaemon, *args: str) -> str:
    return shlex.join([sys.executable, "-m", "pyslicer.cli.main", *args, "--url", daemon.url, "--token", daemon.token])


def test_a_real_terminal_runs_resizes_interrupts_exits_and_is_restored(
    daemon: RunningDaemon, sandbox: str, tmp_path: Path
) -> None:
    before, after = tmp_path / "before", tmp_path / "after"
    script = (
        f"stty -g > {before}; {slicer_command(daemon, 'shell', sandbox)}; echo local-rc=$?; stty -g > {after}; sleep 30"
    )
    env = {**os.environ, "TERM": "xterm"}
    child = pexpect.spawn("/bin/sh", ["-c", script], dimensions=(24, 80), timeout=60, env=env)
    try:
        child.sendline(f"PS1='{PROMPT}'; echo ready-$((6*7))")
        child.expect("ready-42")
        child.expect_exact(PROMPT)
        child.sendline("stty size; echo $TERM $HOME")
        child.expect(r"24 80\r\n")
        child.expect("xterm /root")
        child.expect_exact(PROMPT)
        child.setwinsize(40, 132)  # SIGWINCH to the CLI, which tells the guest
        for _ in range(50):
            child.sendline("stty size")
            index = child.expect([r"40 132\r\n", r"24 80\r\n"])
            child.expect_exact(PROMPT)
            if index == 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the guest never saw the new size")
        child.sendline("sleep 100; echo slept")
        time.sleep(1)
        child.sendcontrol("c")  # raw mode: a byte for the guest's terminal, not a signal for the CLI
        child.expect_exact(PROMPT, timeout=20)
        child.sendline("echo rc=$?")
        child.expect("rc=130")
        child.expect_exact(PROMPT)
        child.sendline("exit 7")
        child.expect("local-rc=7")
        for _ in range(100):
            if after.exists() and after.read_text():
                break
            time.sleep(0.05)
        assert after.read_text() == before.read_text()
    finally:
        child.terminate(force=True)


def test_the_sdk_shell_as_another_user_with_a_size(client: SlicerClient, sandbox: str) -> None:
    with client.shell(sandbox, uid=65534, gid=65534, shell="/bin/sh", cols=111, rows=33) as session:
        session.write(b"echo ids=$(id -u):$(id -g) home=$HOME; stty size; pwd\n")
        seen = read_until(session, b"33 111")
        assert b"ids=65534:65534" in seen
        session.resize(120, 45)
        session.write(b"stty size; exit 3\n")
        rest = b""
        while data := session.read(timeout=60):
            rest += data
        assert b"45 120" in rest
    assert session.exit_code == 3


def test_refusals_are_json_errors_before_the_upgrade(client: SlicerClient, daemon: RunningDaemon, sandbox: str) -> None:
    with pytest.raises(SlicerAPIError) as caught:
        client.shell("no-such-vm")
    assert caught.value.status == 404 and caught.value.code == "vm_not_found"
    with pytest.raises(SlicerAPIError) as caught:
        client.shell(sandbox, shell="/no/such/shell")
    assert caught.value.status == 404 and caught.value.code == "shell_not_found"
    assert "/no/such/shell" in caught.value.message
    with pytest.raises(SlicerAPIError) as caught:
        SlicerClient(daemon.url, token="wrong").shell(sandbox)
    assert caught.value.status == 401
    url = daemon.url.replace("http://", "ws://") + f"/vm/{sandbox}/shell?uid=abc"
    with pytest.raises(Exception) as refused:
        connect(url, additional_headers={"Authorization": f"Bearer {daemon.token}"})
    response = refused.value.response  # type: ignore[attr-defined]
    assert response.status_code == 400 and b"uid" in response.body


def _raw_shell(daemon: RunningDaemon, sandbox: str):  # type: ignore[no-untyped-def]
    url = daemon.url.replace("http://", "ws://") + f"/vm/{sandbox}/shell?shell=/bin/sh"
    ws = connect(url, additional_headers={"Authorization": f"Bearer {daemon.token}"}, compression=None)
    return ws.__enter__()  # (websockets 17.1 warns about a connection not used as a context manager)


def _raw_read_until(ws, marker: bytes) -> bytes:  # type: ignore[no-untyped-def]
    seen = b""
    while marker not in seen:
        frame = shell_frames.decode(ws.recv(timeout=60))
        if frame.type == shell_frames.DATA:
            seen += frame.payload
    return seen


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x01\x00",  # shorter than a header
        b"\x01\x00\x00\x00\x09abc",  # the header says 9 bytes, 3 follow
        b"\x7f\x00\x00\x00\x00",  # an unknown type
        b"\x02\x00\x00\x00\x04abcd",  # a window size of 4 bytes
        shell_frames.window_size(70000, 10),  # beyond what a terminal holds
    ],
)
def test_a_malformed_frame_closes_that_session_only(daemon: RunningDaemon, sandbox: str, garbage: bytes) -> None:
    with _raw_shell(daemon, sandbox) as good, _raw_shell(daemon, sandbox) as bad:
        good.send(shell_frames.window_size(80, 24))
        bad.send(shell_frames.window_size(80, 24))
        bad.send("text messages are ignored")
        bad.send(garbage)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                bad.recv(timeout=60)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002
        assert "malformed frame" in closed.value.rcvd.reason
        good.send(shell_frames.data(b"echo still-$((1+1))\n"))
        assert b"still-2" in _raw_read_until(good, b"still-2")
        good.send(shell_frames.encode(shell_frames.SHUTDOWN))


def test_a_client_that_vanishes_leaves_nothing_in_the_guest(
    daemon: RunningDaemon, api: httpx.Client, sandbox: str
) -> None:
    ws = _raw_shell(daemon, sandbox)
    ws.send(shell_frames.window_size(80, 24))
    ws.send(shell_frames.data(b"(trap '' HUP; exec sleep 3141) & sleep 2718 & echo started-$((2+2)); sleep 2719\n"))
    _raw_read_until(ws, b"started-4")
    assert "sleep 3141" in sh(api, sandbox, "ps -eo args")
    ws.socket.close()  # no close frame: the client is simply gone
    deadline = time.monotonic() + 60
    left = "?"
    while time.monotonic() < deadline:
        left = sh(api, sandbox, "ps -eo args | grep '[s]leep 27\\|[s]leep 3141' || true")
        if not left.strip():
            break
        time.sleep(0.5)
    assert not left.strip(), left


def test_ten_shells_at_once(daemon: RunningDaemon, api: httpx.Client, sandbox: str) -> None:
    terminals = "ls /dev/pts | grep -c '^[0-9]' || true"
    before = sh(api, sandbox, terminals)

    async def one(sdk: AsyncSlicerClient, index: int) -> int | None:
        session = await sdk.shell(sandbox, shell="/bin/sh")
        try:
            await session.write(f"echo shell-$(({index}*1000)) $(tty); exit {index}\n".encode())
            seen = b""
            while data := await session.read():
                seen += data
            assert f"shell-{index * 1000} /dev/pts/".encode() in seen
            return session.exit_code
        finally:
            await session.close()

    async def main() -> list[int | None]:
        async with AsyncSlicerClient(daemon.url, token=daemon.token) as sdk:
            return await asyncio.gather(*(one(sdk, i) for i in range(10)))

    assert asyncio.run(main()) == list(range(10))
    deadline = time.monotonic() + 30
    while sh(api, sandbox, terminals) != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sh(api, sandbox, terminals) == before  # every terminal was given back
