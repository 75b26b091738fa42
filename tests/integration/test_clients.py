"""The Python SDK and the `slicer` CLI against the real daemon and a real guest."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from pyslicer.client import AsyncSlicerClient, SlicerAPIError, SlicerClient
from pyslicer.client._socket_exec import SocketExecClient
from tests.integration.conftest import RunningDaemon


def cli(daemon: RunningDaemon, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "SLICER_URL": daemon.url, "SLICER_TOKEN": daemon.token}
    return subprocess.run(
        [sys.executable, "-m", "pyslicer.cli.main", *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=env,
        timeout=300,
    )


def test_sdk_sync(daemon: RunningDaemon, sandbox: str) -> None:
    with SlicerClient(daemon.url, token=daemon.token) as slicer:
        assert slicer.info().platform == "linux"
        assert sandbox in {node.hostname for node in slicer.group_nodes("sbox")}
        listed = next(node for node in slicer.nodes() if node.hostname == sandbox)
        assert (listed.hostgroup, listed.persistent) == ("sbox", False)
        assert slicer.health(sandbox).agent_uptime > 0
        assert slicer.is_ready(sandbox)
        result = slicer.exec_buffered(sandbox, "sh", ["-c", "echo $((6 * 7)); exit 5"])
        assert (result.stdout, result.exit_code) == (b"42\n", 5)
        frames = list(slicer.exec(sandbox, "tr", ["a-z", "A-Z"], stdin=b"shout\n"))
        assert b"".join(f.data for f in frames if f.type == "stdout") == b"SHOUT\n"
        assert frames[-1].type == "exit" and frames[-1].exit_code == 0
        with pytest.raises(SlicerAPIError) as raised:
            slicer.health("no-such-vm")
        assert raised.value.status == 404


def test_socket_exec_client(daemon: RunningDaemon, sandbox: str) -> None:
    """The CLI's exec without httpx, against the real daemon: streamed stdin, exit codes, errors."""
    client = SocketExecClient(daemon.url, token=daemon.token)
    frames = list(client.exec(sandbox, "sh", ["-c", "tr a-z A-Z; exit 3"], stdin=b"shout\n", base64=True))
    assert b"".join(f.data for f in frames if f.type == "stdout") == b"SHOUT\n"
    assert frames[-1].type == "exit" and frames[-1].exit_code == 3
    with pytest.raises(SlicerAPIError) as raised:
        list(client.exec("no-such-vm", "true"))
    assert raised.value.status == 404


def test_sdk_async(daemon: RunningDaemon, sandbox: str) -> None:
    async def run() -> list[int]:
        async with AsyncSlicerClient(daemon.url, token=daemon.token) as slicer:
            results = await asyncio.gather(
                *(slicer.exec_buffered(sandbox, "sh", ["-c", f"exit {code}"]) for code in range(5))
            )
            return [r.exit_code for r in results]

    assert asyncio.run(run()) == [0, 1, 2, 3, 4]


def test_cli_exec_streams_and_exits_with_the_command_code(daemon: RunningDaemon, sandbox: str) -> None:
    done = cli(daemon, "vm", "exec", sandbox, "--", "sh", "-c", "echo to-out; echo to-err >&2; exit 7")
    assert done.returncode == 7
    assert done.stdout == b"to-out\n" and done.stderr == b"to-err\n"
    piped = cli(daemon, "vm", "exec", sandbox, "--", "wc", "-c", stdin=b"12345")
    assert piped.returncode == 0 and piped.stdout.strip() == b"5"
    missing = cli(daemon, "vm", "exec", sandbox, "--", "no-such-command")
    assert missing.returncode == 127 and b"not found" in missing.stderr


def test_cli_lists_and_reports_errors(daemon: RunningDaemon, sandbox: str) -> None:
    listed = cli(daemon, "vm", "list")
    assert listed.returncode == 0 and sandbox.encode() in listed.stdout
    assert cli(daemon, "vm", "ready", sandbox, "--timeout", "30s").returncode == 0
    assert b"userdata" in cli(daemon, "vm", "health", sandbox).stdout
    assert cli(daemon, "info", "--json").stdout.startswith(b"{")
    gone = cli(daemon, "vm", "delete", "no-such-vm")
    assert gone.returncode == 1 and gone.stderr.startswith(b"error:") and b"Traceback" not in gone.stderr
    bad = cli(daemon, "vm", "add", "sbox", "--cpus", "99")
    assert bad.returncode == 1 and b"cpus" in bad.stderr
