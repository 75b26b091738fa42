"""The real agent process, run on the host over a socketpair, driven by the daemon's AgentLink.

This checks the channel protocol end to end (streams, stdin, flow control, errors) without a VM;
the integration tests run the same agent inside real guests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pyslicer.daemon.agent_link import AgentLink, AgentStream, Message, Output
from pyslicer.protocol import Channel

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
async def link(tmp_path: Path) -> AsyncIterator[AgentLink]:
    host_end, agent_end = socket.socketpair()
    env = {**os.environ, "SLICER_AGENT_FD": str(agent_end.fileno()), "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-m", "pyslicer.agent"], env=env, pass_fds=[agent_end.fileno()])
    agent_end.close()
    host_end.setblocking(False)
    loop = asyncio.get_running_loop()
    bridges: list[asyncio.Task[object]] = []

    async def bridge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def upstream() -> None:
            while data := await reader.read(65536):
                await loop.sock_sendall(host_end, data)

        async def downstream() -> None:
            while data := await loop.sock_recv(host_end, 65536):
                writer.write(data)
                await writer.drain()

        async def both() -> None:
            await asyncio.gather(upstream(), downstream())

        task = loop.create_task(both())
        bridges.append(task)
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await task

    path = tmp_path / "agent.sock"
    server = await asyncio.start_unix_server(bridge, str(path))
    agent_link = AgentLink(path, "test")
    agent_link.start()
    try:
        await agent_link.wait_ready(10)
        yield agent_link
    finally:
        await agent_link.close()
        server.close()
        for task in bridges:
            task.cancel()
        await asyncio.gather(*bridges, return_exceptions=True)
        proc.kill()
        proc.wait()
        host_end.close()


async def collect(stream: AgentStream) -> tuple[bytes, bytes, list[dict[str, object]]]:
    out = {Channel.STDOUT: b"", Channel.STDERR: b""}
    messages = []
    async for event in stream:
        if isinstance(event, Output):
            out[event.channel] += event.data
            stream.consumed(len(event.data))
        elif isinstance(event, Message):
            messages.append(event.body)
    return out[Channel.STDOUT], out[Channel.STDERR], messages


async def test_health(link: AgentLink) -> None:
    health = await link.call({"op": "health"})
    assert health["agent_uptime"] > 0 and health["agent_version"]


async def test_exec_streams_and_exit_code(link: AgentLink) -> None:
    stream = link.open({"op": "exec", "cmd": "sh", "args": ["-c", "echo out; echo err >&2; exit 3"]})
    out, err, messages = await collect(stream)
    assert (out, err) == (b"out\n", b"err\n")
    assert messages[0]["type"] == "started" and messages[-1]["type"] == "exit"
    assert messages[-1]["exit_code"] == 3


async def test_missing_binary_is_127(link: AgentLink) -> None:
    _, _, messages = await collect(link.open({"op": "exec", "cmd": "/no/such/binary"}))
    assert messages == [{"type": "error", "error": "exec: /no/such/binary: not found", "exit_code": 127}]


async def test_stdin_full_duplex_and_flow_control(link: AgentLink) -> None:
    payload = os.urandom(3 * 1024 * 1024)  # several windows each way
    stream = link.open({"op": "exec", "cmd": "cat", "stdin": True})

    async def feed() -> None:
        await stream.write(payload)
        stream.close_input()

    feeder = asyncio.create_task(feed())
    out, _, messages = await collect(stream)
    await feeder
    assert out == payload
    assert messages[-1]["exit_code"] == 0


async def test_concurrent_streams_and_cancel(link: AgentLink) -> None:
    slow = link.open({"op": "exec", "cmd": "sleep", "args": ["30"]})
    quick = [link.open({"op": "exec", "cmd": "echo", "args": [str(i)]}) for i in range(20)]
    results = await asyncio.gather(*(collect(s) for s in quick))
    assert [r[0] for r in results] == [f"{i}\n".encode() for i in range(20)]
    slow.cancel()
    assert (await link.call({"op": "health"}))["agent_uptime"] > 0


async def test_signal_is_reported(link: AgentLink) -> None:
    _, _, messages = await collect(link.open({"op": "exec", "cmd": "sh", "args": ["-c", "kill -9 $$"]}))
    assert messages[-1]["signal"] == "SIGKILL" and messages[-1]["exit_code"] == 137
