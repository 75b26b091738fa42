"""The agent's shell and forward sessions, driven over a real channel by the daemon's own types (the agent
runs on this host, as in test_agent_link)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from pathlib import Path

import pytest

from pyslicer.daemon.agent_link import AgentLink
from pyslicer.daemon.forward import ForwardClosed, ForwardConnection, ForwardData, ForwardEnd, ForwardTarget
from pyslicer.daemon.shell import ShellExited, ShellOutput, ShellRequest, ShellSession
from pyslicer.errors import NotFound, UpstreamUnreachable
from tests.test_agent_link import link

__all__ = ["link"]


async def read_until(events: object, marker: bytes, seen: bytearray) -> None:
    async for event in events:  # type: ignore[attr-defined]
        if isinstance(event, ShellOutput):
            seen += event.data
            if marker in seen:
                return
        else:
            raise AssertionError(f"shell ended before {marker!r}: {bytes(seen)!r}")


async def test_shell_runs_resizes_and_exits(link: AgentLink) -> None:
    request = ShellRequest(shell="/bin/sh", cols=100, rows=30)
    session = await ShellSession.open(link.open(request.to_wire()))
    events = session.events()
    seen = bytearray()
    await session.write(b"stty size; echo mark-$((6*7))\n")
    await asyncio.wait_for(read_until(events, b"mark-42", seen), 10)
    assert b"30 100" in seen
    session.resize(132, 50)
    await session.write(b"stty size; tty; exit 3\n")
    rest = bytearray()
    exited = None
    async for event in events:
        if isinstance(event, ShellOutput):
            rest += event.data
        else:
            exited = event
    assert b"50 132" in rest and b"/dev/pts/" in rest
    assert exited == ShellExited(3, None)


async def test_shell_login_environment(link: AgentLink) -> None:
    session = await ShellSession.open(link.open(ShellRequest(shell="/bin/sh", term="vt100").to_wire()))
    events = session.events()
    seen = bytearray()
    await session.write(b'echo "T=$TERM H=$HOME U=$USER S=$SHELL"; exit\n')
    await asyncio.wait_for(read_until(events, b"S=/bin/sh", seen), 10)
    assert b"T=vt100" in seen and b"U=root" in seen
    session.hang_up()


async def test_missing_shell_is_not_found(link: AgentLink) -> None:
    with pytest.raises(NotFound) as caught:
        await ShellSession.open(link.open(ShellRequest(shell="/no/such/shell").to_wire()))
    assert "/no/such/shell" in caught.value.message


async def test_hang_up_leaves_nothing(link: AgentLink, tmp_path: Path) -> None:
    session = await ShellSession.open(link.open(ShellRequest(shell="/bin/sh").to_wire()))
    pid_file = tmp_path / "pids"
    # a foreground sleep and one that ignores SIGHUP in the background
    await session.write(f"(trap '' HUP; sleep 300) & echo $! > {pid_file}; sleep 300\n".encode())
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        await asyncio.sleep(0.05)
    background = int(pid_file.read_text())
    sid = os.getsid(background)
    session.hang_up()
    for _ in range(100):
        left = [p for p in os.listdir("/proc") if p.isdigit() and _sid(int(p)) == sid]
        if not left:
            break
        await asyncio.sleep(0.1)
    assert not left


def _sid(pid: int) -> int:
    try:
        return os.getsid(pid)
    except OSError:
        return -1


async def test_forward_both_ways_with_half_close(link: AgentLink) -> None:
    received = bytearray()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.read())  # until the half-close
        writer.write(hashlib.sha256(received).hexdigest().encode() + b"\n" + bytes(3 * 1024 * 1024))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        target = ForwardTarget.parse(f"127.0.0.1:{port}")
        connection = await ForwardConnection.open(link.open(target.to_wire()), target)
        payload = os.urandom(2 * 1024 * 1024 + 5)
        await connection.write(payload)
        connection.close_input()
        answer = bytearray()
        kinds = []
        async for event in connection.events():
            kinds.append(type(event))
            if isinstance(event, ForwardData):
                answer += event.data
        assert kinds[-2:] == [ForwardEnd, ForwardClosed]
        assert bytes(received) == payload
        assert answer == hashlib.sha256(payload).hexdigest().encode() + b"\n" + bytes(3 * 1024 * 1024)
    finally:
        server.close()


async def test_forward_to_a_closed_port_says_refused(link: AgentLink) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = ForwardTarget.parse(f"127.0.0.1:{port}")
    with pytest.raises(UpstreamUnreachable) as caught:
        await ForwardConnection.open(link.open(target.to_wire()), target)
    assert caught.value.code == "connection_refused"
    assert "refused" in caught.value.message


async def test_forward_to_a_unix_socket(link: AgentLink, tmp_path: Path) -> None:
    path = tmp_path / "s.sock"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello " + await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(serve, str(path))
    try:
        target = ForwardTarget.parse(f"unix:{path}")
        connection = await ForwardConnection.open(link.open(target.to_wire()), target)
        await connection.write(b"there\n")
        data = bytearray()
        async for event in connection.events():
            if isinstance(event, ForwardEnd):
                break  # the server closed; our side stays open until we half-close or cancel
            assert isinstance(event, ForwardData)
            data += event.data
        connection.cancel()
        assert data == b"hello there\n"
        missing = ForwardTarget.parse(f"unix:{tmp_path}/none.sock")
        with pytest.raises(UpstreamUnreachable) as caught:
            await ForwardConnection.open(link.open(missing.to_wire()), missing)
        assert caught.value.code == "socket_not_found"
    finally:
        server.close()


async def test_forwards_to_a_unix_socket_with_a_full_backlog_wait_for_room(link: AgentLink, tmp_path: Path) -> None:
    """A unix socket's connect fails with EAGAIN while its backlog is full; the agent dials again, as a blocking
    connect would wait, instead of taking the socket for connected."""
    path = tmp_path / "busy.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    target = ForwardTarget.parse(f"unix:{path}")

    async def echo_one(payload: bytes) -> bytes:
        connection = await ForwardConnection.open(link.open(target.to_wire()), target)
        await connection.write(payload)
        connection.close_input()
        answer = bytearray()
        async for event in connection.events():
            if isinstance(event, ForwardData):
                answer += event.data
        return bytes(answer)

    async def serve(count: int) -> None:
        await asyncio.sleep(0.5)  # every dial beyond the backlog has been refused with EAGAIN by now
        for _ in range(count):
            peer, _ = await loop.sock_accept(listener)
            with peer:
                data = b""
                while chunk := await loop.sock_recv(peer, 65536):
                    data += chunk
                await loop.sock_sendall(peer, data)

    payloads = [os.urandom(1000) + bytes([n]) for n in range(6)]
    try:
        async with asyncio.timeout(60):
            server = asyncio.create_task(serve(len(payloads)))
            answers = await asyncio.gather(*(echo_one(payload) for payload in payloads))
            await server
    finally:
        listener.close()
    assert answers == payloads
