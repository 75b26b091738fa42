"""Background execs: the ring's logic, and the real agent process (on the host, over a socketpair) driven by the
daemon's ``BackgroundExecs`` through an ``AgentLink``, including a reconnect of the link."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from pyslicer.agent.background import fitted
from pyslicer.agent.ring import REMEMBERED_EVICTIONS, Ring
from pyslicer.client._background_logs import LogFrameDecoder
from pyslicer.client._calls import (
    background_info_call,
    background_kill_call,
    background_logs_call,
    background_wait_call,
)
from pyslicer.client.errors import SlicerResponseError
from pyslicer.daemon.agent_link import AgentLink
from pyslicer.daemon.background import (
    BackgroundExecs,
    BackgroundRequest,
    KillRequest,
    LogExit,
    LogGap,
    LogOutput,
    LogRecord,
    LogStarted,
)
from pyslicer.errors import Conflict, Gone, InvalidArgument, NotFound, Unavailable
from pyslicer.protocol.frames import dumps
from tests.test_agent_link import link  # noqa: F401  (the fixture: a real agent process over a socketpair)

if TYPE_CHECKING:
    from pyslicer.protocol import BgInfo

# -- the ring -------------------------------------------------------------------------------------------


def test_ring_ids_and_reads_from_a_cursor() -> None:
    ring = Ring(100)
    ring.append("started")
    for word in (b"a", b"bb", b"ccc"):
        ring.append("stdout", word)
    assert [r.id for r in ring.read(1)] == [1, 2, 3, 4]
    assert [r.data for r in ring.read(3)] == [b"bb", b"ccc"]
    assert ring.read(5) == []
    assert ring.next_id == 5 and ring.bytes_written == 6 and ring.gap(1) is None


def test_ring_evicts_the_oldest_and_reports_the_gap_exactly() -> None:
    ring = Ring(10)
    ring.append("started")  # id 1, costs nothing
    for _ in range(5):
        ring.append("stdout", b"xxxx")  # ids 2-6, 4 bytes each: only two fit
    assert [r.id for r in ring.read(1)] == [5, 6]
    assert ring.size == 8 and ring.bytes_dropped == 12 and ring.frames_dropped == 4
    assert ring.gap(1) == (4, 12)  # started + three outputs
    assert ring.gap(3) == (2, 8)  # ids 3 and 4
    assert ring.gap(4) == (1, 4)
    assert ring.gap(5) is None and ring.gap(9) is None


def test_ring_keeps_the_end_of_a_chunk_larger_than_itself() -> None:
    ring = Ring(4)
    ring.append("stdout", b"0123456789")
    (record,) = ring.read(1)
    assert record.data == b"6789"
    assert ring.bytes_written == 10 and ring.bytes_dropped == 6


def test_ring_gap_for_a_cursor_older_than_what_it_remembers_is_a_lower_bound() -> None:
    ring = Ring(1)
    for _ in range(3 * REMEMBERED_EVICTIONS):
        ring.append("stdout", b"x")
    frames, size = ring.gap(2) or (0, 0)
    assert frames == 3 * REMEMBERED_EVICTIONS - 2
    assert REMEMBERED_EVICTIONS <= size <= frames
    assert ring.gap(1) == (3 * REMEMBERED_EVICTIONS - 1, 3 * REMEMBERED_EVICTIONS - 1)
    assert len(ring) == 1


def test_ring_refuses_no_capacity() -> None:
    with pytest.raises(ValueError):
        Ring(0)


# -- the agent, through the link ----------------------------------------------------------------------


def request(cmd: str, *args: str, **fields: object) -> BackgroundRequest:
    return BackgroundRequest.model_validate({"cmd": cmd, "args": list(args), **fields})


async def records(execs: BackgroundExecs, exec_id: str, **options: object) -> list[LogRecord]:
    logs = await execs.logs(exec_id, **options)  # type: ignore[arg-type]
    return [record async for record in logs.records()]


def output(found: list[LogRecord]) -> bytes:
    return b"".join(r.data for r in found if isinstance(r, LogOutput))


async def test_whole_life_through_the_agent(link: AgentLink) -> None:  # noqa: F811
    execs = BackgroundExecs(link, "test")
    started = await execs.start(request("/bin/sh", "-c", "echo one; echo two >&2; sleep 30"))
    assert started.exec_id.startswith("ex_") and started.pid > 0 and started.ring_bytes == 1024 * 1024
    listed = {info.exec_id: info for info in await execs.list()}
    assert listed[started.exec_id].running and listed[started.exec_id].command == "/bin/sh"
    with pytest.raises(Conflict):
        await execs.delete(started.exec_id)

    status = await execs.wait(started.exec_id, timeout=0.2)
    assert status.timed_out and status.running

    kill = await execs.kill(started.exec_id, KillRequest())
    assert kill.signal_sent == "TERM" and kill.pid == started.pid
    status = await execs.wait(started.exec_id, timeout=10)
    assert not status.running and not status.timed_out and status.signal == "SIGTERM"

    found = await records(execs, started.exec_id)
    assert isinstance(found[0], LogStarted) and isinstance(found[-1], LogExit)
    assert [r.id for r in found] == list(range(1, len(found) + 1))
    assert b"one" in output(found)
    later = await records(execs, started.exec_id, from_id=found[-1].id)  # type: ignore[union-attr]
    assert len(later) == 1 and isinstance(later[0], LogExit)

    assert await execs.delete(started.exec_id) == started.exec_id
    for call in (execs.info, execs.delete):
        with pytest.raises(Gone):
            await call(started.exec_id)
    with pytest.raises(NotFound):
        await execs.info("ex_0000000000000000")
    with pytest.raises(NotFound):
        await execs.info("../etc")


async def test_follow_waits_for_an_id_past_the_cursor_and_gaps_are_reported(link: AgentLink) -> None:  # noqa: F811
    execs = BackgroundExecs(link, "test")
    script = "for i in $(seq 1 50); do printf 'line-%03d\\n' $i; sleep 0.01; done"
    started = await execs.start(request("/bin/sh", "-c", script, ring_bytes=64))
    logs = await execs.logs(started.exec_id, follow=True, from_id=30)
    found = [record async for record in logs.records()]
    assert isinstance(found[-1], LogExit)
    ids = [r.id for r in found if not isinstance(r, LogGap)]
    assert ids[0] >= 30 and ids == sorted(ids)

    replay = await records(execs, started.exec_id)
    assert isinstance(replay[0], LogGap) and replay[0].dropped_frames > 0 and replay[0].dropped_bytes > 0
    assert b"line-050" in output(replay) and b"line-001" not in output(replay)
    info = await execs.info(started.exec_id)
    assert info.bytes_written == 50 * 9 and info.bytes_dropped == info.bytes_written - len(output(replay))
    await execs.delete(started.exec_id)


async def test_kill_escalates_after_the_grace(link: AgentLink) -> None:  # noqa: F811
    execs = BackgroundExecs(link, "test")
    started = await execs.start(request("/bin/sh", "-c", "trap 'echo got-term' TERM; while :; do sleep 0.05; done"))
    await asyncio.sleep(0.3)  # let the shell set its trap
    await execs.kill(started.exec_id, KillRequest(signal="term", grace_ms=300))
    status = await execs.wait(started.exec_id, timeout=10)
    assert status.signal == "SIGKILL" and status.exit_code == 137
    assert b"got-term" in output(await records(execs, started.exec_id))
    await execs.delete(started.exec_id)


async def test_budget_and_bad_requests(link: AgentLink) -> None:  # noqa: F811
    execs = BackgroundExecs(link, "test")
    with pytest.raises(InvalidArgument):
        await execs.start(request("true", ring_bytes=1 << 40))
    with pytest.raises(InvalidArgument) as missing:
        await execs.start(request("/nonexistent/binary"))
    assert missing.value.code == "command_not_found"
    big = await execs.start(request("true", ring_bytes=32 * 1024 * 1024))
    with pytest.raises(Unavailable) as exhausted:
        await execs.start(request("true"))
    assert exhausted.value.code == "budget_exhausted"
    await execs.wait(big.exec_id, timeout=10)
    await execs.delete(big.exec_id)
    small = await execs.start(request("true"))
    await execs.wait(small.exec_id, timeout=10)
    await execs.delete(small.exec_id)
    with pytest.raises(ValueError):
        KillRequest.model_validate({"signal": "BOGUS"})
    with pytest.raises(InvalidArgument):
        await execs.wait(small.exec_id, timeout=601)


async def test_execs_survive_a_reconnect_of_the_link(link: AgentLink) -> None:  # noqa: F811
    execs = BackgroundExecs(link, "test")
    started = await execs.start(request("/bin/sh", "-c", "echo before; sleep 1; echo after; sleep 30"))
    logs = await execs.logs(started.exec_id, follow=True)
    assert link._writer is not None
    link._writer.transport.abort()  # the connection drops under the follower; the link reconnects (HELLO)
    with pytest.raises(Exception):  # noqa: B017  (AgentError: the follower's stream is lost)
        async for _ in logs.records():
            pass
    await link.wait_ready(10)
    info = await execs.info(started.exec_id)
    assert info.running and info.pid == started.pid
    await asyncio.sleep(1.5)
    assert b"before" in output(await records(execs, started.exec_id))
    assert b"after" in output(await records(execs, started.exec_id))
    await execs.kill(started.exec_id, KillRequest(signal="KILL"))
    await execs.wait(started.exec_id, timeout=10)
    await execs.delete(started.exec_id)


# -- the client ----------------------------------------------------------------------------------------


def test_client_decodes_log_frames() -> None:
    decoder = LogFrameDecoder()
    lines = [
        '{"id":1,"type":"started","pid":7,"started_at":"t0","timestamp":"t0"}',
        "",
        '{"id":2,"type":"stdout","data":"aGk=","stdout":"aGk=","encoding":"base64","timestamp":"t1"}',
        '{"id":3,"type":"stderr","data":"plain","timestamp":"t2"}',
        '{"type":"gap","dropped_bytes":10,"dropped_frames":2,"message":"m","timestamp":"t3"}',
        '{"id":4,"type":"exit","exit_code":137,"signal":"SIGKILL","ended_at":"t4","timestamp":"t4"}',
    ]
    frames = [frame for line in lines for frame in decoder.feed(line)]
    assert [(f.type, f.id) for f in frames] == [("started", 1), ("stdout", 2), ("stderr", 3), ("gap", 0), ("exit", 4)]
    assert frames[0].pid == 7 and frames[1].data == b"hi" and frames[2].data == b"plain"
    assert (frames[3].dropped_bytes, frames[3].dropped_frames) == (10, 2)
    assert (frames[4].exit_code, frames[4].signal) == (137, "SIGKILL")
    for bad in ("not json", "[1]", '{"type":"stdout","data":"@@","encoding":"base64"}'):
        with pytest.raises(SlicerResponseError):
            list(decoder.feed(bad))


def test_client_checks_arguments_before_sending() -> None:
    with pytest.raises(ValueError):
        background_wait_call("vm-1", "ex_1", 601)
    with pytest.raises(ValueError):
        background_logs_call("vm-1", "ex_1", False, -1)
    with pytest.raises(ValueError):
        background_kill_call("vm-1", "ex_1", None, -5)
    with pytest.raises(ValueError):
        background_info_call("vm-1", "")
    assert background_info_call("vm-1", "../x").path == "/vm/vm-1/exec/..%2Fx"
    assert background_kill_call("vm-1", "ex_1", None, None).json == {}
    assert background_wait_call("vm-1", "ex_1", 2.5).params == (("timeout", "2.5"),)


def test_answers_fit_one_frame() -> None:
    info: BgInfo = {
        "exec_id": "ex_1",
        "pid": 1,
        "command": "c" * 70_000,
        "args": ["a" * 1000] * 60,
        "cwd": "/",
        "uid": 0,
        "started_at": "",
        "running": True,
        "exit_code": None,
        "ended_at": None,
        "bytes_written": 0,
        "bytes_dropped": 0,
        "next_id": 1,
        "ring_bytes": 1,
    }
    small = fitted(dict(info), 4096)  # type: ignore[arg-type]
    assert len(dumps(small)) <= 4096 and small["args"] == [] and small["command"].startswith("ccc")
    roomy = fitted({**info, "command": "sh", "args": ["-c", "x"]}, 4096)
    assert roomy["args"] == ["-c", "x"] and roomy["command"] == "sh"


def test_ring_caps_how_many_records_it_holds() -> None:
    ring = Ring(2048)  # 16 records at most
    for _ in range(100):
        ring.append("stdout", b"x")
    assert len(ring) == ring.max_records == 16 and ring.size == 16
    assert ring.gap(1) == (84, 84) and next(r.id for r in ring.read(1)) == 85
