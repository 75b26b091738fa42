"""The daemon's link holds a guest to the protocol: a misbehaving agent cannot grow the daemon's memory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from pyslicer.daemon.agent_link import AgentLink
from pyslicer.errors import AgentError, InvalidArgument
from pyslicer.protocol import (
    INITIAL_WINDOW,
    MAX_PAYLOAD,
    Channel,
    FrameDecoder,
    FrameType,
    clock_payload,
    encode,
    encode_json,
)


async def run_against(tmp_path: Path, misbehave: Callable[[asyncio.StreamWriter, int], None]) -> AgentError:
    async def fake_agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        while data := await reader.read(65536):
            for frame in decoder.feed(data):
                if frame.type == FrameType.HELLO:
                    writer.write(encode_json(FrameType.READY, 0, {"instance": "x"}))
                elif frame.type == FrameType.OPEN:
                    misbehave(writer, frame.stream)
            await writer.drain()

    path = tmp_path / "agent.sock"
    server = await asyncio.start_unix_server(fake_agent, str(path))
    link = AgentLink(path, "hostile")
    link.start()
    try:
        await link.wait_ready(5)
        stream = link.open({"op": "exec", "cmd": "x"})
        with pytest.raises(AgentError) as raised:
            async with asyncio.timeout(5):
                async for _ in stream:
                    pass  # never consumed: no credit goes back
        return raised.value
    finally:
        await link.close()
        server.close()


async def test_output_beyond_the_window_breaks_the_connection(tmp_path: Path) -> None:
    def flood(writer: asyncio.StreamWriter, stream: int) -> None:
        for _ in range(INITIAL_WINDOW // MAX_PAYLOAD + 1):
            writer.write(encode(FrameType.DATA, stream, b"x" * MAX_PAYLOAD, Channel.STDOUT))

    await run_against(tmp_path, flood)


async def test_an_event_flood_breaks_the_connection(tmp_path: Path) -> None:
    def flood(writer: asyncio.StreamWriter, stream: int) -> None:
        for _ in range(5000):
            writer.write(encode_json(FrameType.MESSAGE, stream, {"type": "noise"}))

    await run_against(tmp_path, flood)


async def test_a_request_too_large_for_one_frame_is_a_clear_400(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"

    async def agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(encode_json(FrameType.READY, 0, {"instance": "x"}))
        await writer.drain()
        await reader.read(65536)

    server = await asyncio.start_unix_server(agent, str(path))
    link = AgentLink(path, "big")
    link.start()
    try:
        await link.wait_ready(5)
        with pytest.raises(InvalidArgument, match="too large"):
            link.open({"op": "exec", "cmd": "echo", "args": ["x" * 70_000]})
    finally:
        await link.close()
        server.close()


async def test_a_time_frame_nobody_asked_for_breaks_the_connection(tmp_path: Path) -> None:
    def send_time(writer: asyncio.StreamWriter, stream: int) -> None:
        writer.write(encode(FrameType.TIME, 0, clock_payload(0)))  # only ever an answer to the host's CLOCK

    await run_against(tmp_path, send_time)


async def test_a_clock_frame_from_the_agent_breaks_the_connection(tmp_path: Path) -> None:
    def send_clock(writer: asyncio.StreamWriter, stream: int) -> None:
        writer.write(encode(FrameType.CLOCK, stream, clock_payload(0)))  # host -> agent only

    await run_against(tmp_path, send_clock)
