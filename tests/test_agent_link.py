"""The real agent process, run on the host over a socketpair, driven by the daemon's AgentLink.

This checks the channel protocol end to end (streams, stdin, flow control, errors) without a VM;
the integration tests run the same agent inside real guests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from pyslicer.agent.loop import Loop
from pyslicer.agent.server import Agent, Clock
from pyslicer.daemon.agent_link import MAX_CLOCK_RETRIES, AgentLink, AgentStream, Message, Output
from pyslicer.protocol import (
    INITIAL_WINDOW,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    Channel,
    Frame,
    FrameDecoder,
    FrameType,
    adjust_delta,
    adjust_payload,
    clock_payload,
    clock_time,
    decode_json,
    encode,
    encode_json,
)

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


# -- identities, cwd, env ------------------------------------------------------------------------------


async def test_uid_and_gid_switching(link: AgentLink) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching users needs root")
    out, _, messages = await collect(
        link.open({"op": "exec", "cmd": "sh", "args": ["-c", "id -u; id -g; id -G"], "uid": 65534})
    )
    assert messages[-1]["exit_code"] == 0, messages
    assert out.split() == [b"65534", b"65534", b"65534"]  # the account's group, no supplementary groups
    out, _, _ = await collect(link.open({"op": "exec", "cmd": "id", "args": ["-u"], "uid": 65534, "gid": 4321}))
    assert out == b"65534\n"
    out, _, _ = await collect(
        link.open({"op": "exec", "cmd": "sh", "args": ["-c", "id -g; id -G"], "uid": 65534, "gid": 4321})
    )
    assert out.split() == [b"4321", b"4321"]
    out, _, _ = await collect(link.open({"op": "exec", "cmd": "id", "args": ["-u"]}))
    assert out == b"0\n"


async def test_errors_as_another_user(link: AgentLink, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching users needs root")
    _, _, messages = await collect(link.open({"op": "exec", "cmd": "no-such-tool", "uid": 65534}))
    assert messages == [{"type": "error", "error": "exec: no-such-tool: not found", "exit_code": 127}]
    missing = str(tmp_path / "gone")
    _, _, messages = await collect(link.open({"op": "exec", "cmd": "true", "uid": 65534, "cwd": missing}))
    assert messages == [{"type": "error", "error": f"exec: {missing}: not found", "exit_code": 127}]


async def test_cwd(link: AgentLink, tmp_path: Path) -> None:
    out, _, messages = await collect(link.open({"op": "exec", "cmd": "pwd", "cwd": str(tmp_path)}))
    assert out == f"{tmp_path}\n".encode() and messages[-1]["exit_code"] == 0
    missing = str(tmp_path / "gone")
    _, _, messages = await collect(link.open({"op": "exec", "cmd": "pwd", "cwd": missing}))
    assert messages == [{"type": "error", "error": f"exec: {missing}: not found", "exit_code": 127}]
    # the agent's own directory is untouched by a child's cwd
    out, _, _ = await collect(link.open({"op": "exec", "cmd": "./x", "cwd": str(tmp_path)}))
    assert out == b""


async def test_permission_denied_is_126(link: AgentLink, tmp_path: Path) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    _, _, messages = await collect(link.open({"op": "exec", "cmd": str(script)}))
    assert messages == [{"type": "error", "error": f"exec: [Errno 13] Permission denied: '{script}'", "exit_code": 126}]


async def test_env(link: AgentLink) -> None:
    request = {"op": "exec", "cmd": "env", "env": ["GREETING=hi there", "EMPTY=", "HOME=/elsewhere"]}
    out, _, messages = await collect(link.open(request))
    assert messages[-1]["exit_code"] == 0
    env = dict(line.split("=", 1) for line in out.decode().splitlines())
    assert env["GREETING"] == "hi there" and env["EMPTY"] == "" and env["HOME"] == "/elsewhere"
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert env["LANG"] == "C.UTF-8" and "SLICER_AGENT_FD" not in env and "PYTHONPATH" not in env
    _, _, messages = await collect(link.open({"op": "exec", "cmd": "env", "env": ["NOEQUALS"]}))
    assert messages == [{"type": "error", "error": "env entry 'NOEQUALS' is not KEY=VALUE", "exit_code": 1}]


async def test_shell_and_quoting(link: AgentLink) -> None:
    request = {"op": "exec", "cmd": "printf '%s|'", "args": ["a b", "it's", "", "$HOME"], "shell": "/bin/sh"}
    out, _, _ = await collect(link.open(request))
    assert out == b"a b|it's||$HOME|"


async def test_children_inherit_only_stdio(link: AgentLink) -> None:
    identities = [{}, {"uid": 65534}] if os.geteuid() == 0 else [{}]  # posix_spawn, and fork
    for identity in identities:
        out, _, _ = await collect(link.open({"op": "exec", "cmd": "ls", "args": ["/proc/self/fd"], **identity}))
        assert sorted(int(fd) for fd in out.split()) == [0, 1, 2, 3]  # 3: the directory ls is reading


async def test_unknown_op(link: AgentLink) -> None:
    assert await link.call({"op": "nope"}) == {"type": "error", "error": "unknown op 'nope'"}


# -- stdin, flow control, cancel ---------------------------------------------------------------------------


async def test_stdin_eof_with_a_child_that_does_not_read(link: AgentLink) -> None:
    stream = link.open({"op": "exec", "cmd": "sh", "args": ["-c", "sleep 0.5; echo done"], "stdin": True})

    async def feed() -> None:
        await stream.write(os.urandom(2 * 1024 * 1024))  # far more than the pipe and the window hold
        stream.close_input()

    feeder = asyncio.create_task(feed())
    out, _, messages = await asyncio.wait_for(collect(stream), 30)
    await asyncio.wait_for(feeder, 5)  # the credit came back although nobody read the bytes
    assert out == b"done\n" and messages[-1]["exit_code"] == 0


async def test_stdin_closed_at_once(link: AgentLink) -> None:
    stream = link.open({"op": "exec", "cmd": "wc", "args": ["-c"], "stdin": True})
    stream.close_input()
    out, _, messages = await asyncio.wait_for(collect(stream), 30)
    assert out.strip() == b"0" and messages[-1]["exit_code"] == 0


async def test_without_stdin_the_child_reads_dev_null(link: AgentLink) -> None:
    out, _, _ = await asyncio.wait_for(collect(link.open({"op": "exec", "cmd": "wc", "args": ["-c"]})), 30)
    assert out.strip() == b"0"


async def test_output_beyond_the_window_with_a_slow_consumer(link: AgentLink) -> None:
    size = 3 * INITIAL_WINDOW + 12345
    script = f"head -c {size} /dev/zero; echo finished >&2"
    stream = link.open({"op": "exec", "cmd": "sh", "args": ["-c", script]})
    events = aiter(stream)
    received = 0
    # Consume nothing: at most one window arrives, and at least all of it but one frame (the agent reads only
    # with credit for a whole frame), then the agent stops reading.
    await asyncio.sleep(1.5)
    while not stream._events.empty():
        event = stream._events.get_nowait()
        if isinstance(event, Output):
            assert event.channel == Channel.STDOUT
            received += len(event.data)
    assert INITIAL_WINDOW - MAX_PAYLOAD < received <= INITIAL_WINDOW  # the child is blocked on its full pipe
    stream.consumed(received)
    consumed = received
    most_outstanding = 0
    stderr = b""
    exit_code = None
    async for event in events:
        if isinstance(event, Output):
            received += len(event.data)
            most_outstanding = max(most_outstanding, received - consumed)
            if event.channel == Channel.STDERR:
                stderr += event.data
            await asyncio.sleep(0.002)  # a slow reader
            stream.consumed(len(event.data))
            consumed += len(event.data)
        elif isinstance(event, Message) and event.body["type"] == "exit":
            exit_code = event.body["exit_code"]
    assert most_outstanding <= INITIAL_WINDOW
    assert received == size + len(b"finished\n") and stderr == b"finished\n" and exit_code == 0


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


async def test_cancel_kills_the_process_group(link: AgentLink) -> None:
    stream = link.open({"op": "exec", "cmd": "sh", "args": ["-c", "sleep 300 & echo $!; wait"]})
    pids: list[int] = []
    async for event in stream:
        if isinstance(event, Message) and event.body["type"] == "started":
            pids.append(int(event.body["pid"]))
        elif isinstance(event, Output):
            pids.append(int(event.data))
            break
    assert len(pids) == 2 and not any(_gone(pid) for pid in pids)
    stream.cancel()
    deadline = asyncio.get_running_loop().time() + 10
    while not all(_gone(pid) for pid in pids):
        assert asyncio.get_running_loop().time() < deadline, f"still running: {pids}"
        await asyncio.sleep(0.05)
    assert (await link.call({"op": "health"}))["agent_uptime"] > 0


async def test_many_concurrent_streams(link: AgentLink) -> None:
    async def one(i: int) -> None:
        if i % 2:
            payload = os.urandom(100_000 + i)
            stream = link.open({"op": "exec", "cmd": "cat", "stdin": True})

            async def feed() -> None:
                await stream.write(payload)
                stream.close_input()

            feeder = asyncio.create_task(feed())
            out, err, messages = await collect(stream)
            await feeder
            assert out == payload
        else:
            script = f"head -c {300_000 + i} /dev/zero | tr '\\0' x; echo {i} >&2"
            out, err, messages = await collect(link.open({"op": "exec", "cmd": "sh", "args": ["-c", script]}))
            assert out == b"x" * (300_000 + i) and err == f"{i}\n".encode()
        assert messages[0]["type"] == "started" and messages[-1] == {**messages[-1], "exit_code": 0}

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(60))), 120)
    assert (await link.call({"op": "health"}))["agent_uptime"] > 0


async def test_hello_drops_every_stream(link: AgentLink) -> None:
    stream = link.open({"op": "exec", "cmd": "sh", "args": ["-c", "echo $$; exec sleep 300"]})
    pid = None
    async for event in stream:
        if isinstance(event, Output):
            pid = int(event.data)
            break
    assert pid is not None
    link.send(encode_json(FrameType.HELLO, 0, {"version": PROTOCOL_VERSION}))  # as a reconnecting host would
    deadline = asyncio.get_running_loop().time() + 10
    while not _gone(pid):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)


# -- the agent's own copies of stdlib behaviour ----------------------------------------------------------


def test_shell_quote_is_shlex_quote() -> None:
    import shlex

    from pyslicer.agent.spawn import shell_quote

    for word in ["", "plain", "a b", "it's", "$HOME", "é", "x=1,y:2/z@%+.-_", "tab\tnewline\n", "'", '"', "*?[]"]:
        assert shell_quote(word) == shlex.quote(word)


def test_signal_names_are_signal_module_names() -> None:
    import signal

    from pyslicer.agent.spawn import signal_name

    for signo in range(1, signal.NSIG):
        try:
            expected = signal.Signals(signo).name
        except ValueError:  # glibc's own two, then the real-time ones
            unnamed = f"SIGRTMIN+{signo - signal.SIGRTMIN}" if signo > signal.SIGRTMIN else f"SIG{signo}"
            assert signal_name(signo) == unnamed
        else:
            assert signal_name(signo) == expected


def test_now_is_datetime_isoformat() -> None:
    import datetime

    from pyslicer.agent.spawn import now

    for _ in range(1000):
        before = datetime.datetime.now(datetime.UTC)
        stamp = now()
        after = datetime.datetime.now(datetime.UTC)
        parsed = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert before - datetime.timedelta(microseconds=1) <= parsed <= after
        assert stamp == parsed.isoformat().replace("+00:00", "Z")
        assert stamp.endswith("Z") and ("." in stamp) == (parsed.microsecond != 0)


def test_the_agent_imports_little() -> None:
    """What costs under TCG stays out: no asyncio, logging, subprocess, json, enum, re, typing, ...

    Run as the image runs it (-S -P); the protocol is imported, and imports nothing heavy either."""
    code = "import sys, pyslicer.agent.server as s; s.preload(); print(' '.join(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    loaded = set(
        subprocess.run(
            [sys.executable, "-S", "-P", "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert {"pyslicer.protocol", "pyslicer.protocol.frames", "pyslicer.protocol.messages"} <= loaded
    heavy = {
        "asyncio",
        "logging",
        "concurrent",
        "inspect",
        "ssl",
        "subprocess",
        "socket",
        "selectors",
        "json",
        "enum",
        "re",
        "typing",
        "dataclasses",
        "datetime",
        "signal",
        "threading",
        "collections",
        "functools",
        "contextlib",
        "pathlib",
        "shlex",
        "secrets",
        "glob",
        "json.decoder",
        "pyslicer.agent.wire",
    }
    assert loaded & heavy == set()


PRELOAD_PROBE = """
import sys
from pyslicer.agent.server import Agent, Loop
from pyslicer.protocol import Frame, FrameType, clock_payload
agent = Agent(Loop())
agent.link = type("Link", (), {"send": lambda self, data: None})()
LATER = ("pyslicer.agent.execs", "pyslicer.agent.spawn", "pyslicer.agent.userdata")
before = any(name in sys.modules for name in LATER)
agent.on_frames([Frame(FrameType.CLOCK, 0, clock_payload(0))])
queued = any(name in sys.modules for name in LATER)
agent.loop._run_timers()
print(before, queued, all(name in sys.modules for name in LATER))
"""


def test_what_requests_need_is_imported_after_ready_once_the_time_is_set() -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run(
        [sys.executable, "-S", "-P", "-c", PRELOAD_PROBE], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False", "True"]


def test_ready_unsolicited_then_on_hello_and_no_spin_without_a_host() -> None:
    host_end, agent_end = socket.socketpair()
    env = {**os.environ, "SLICER_AGENT_FD": str(agent_end.fileno()), "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-m", "pyslicer.agent"], env=env, pass_fds=[agent_end.fileno()])
    agent_end.close()
    try:
        host_end.settimeout(10)
        decoder = FrameDecoder()

        def next_frame() -> dict[str, object]:
            while not (frames := decoder.feed(host_end.recv(65536))):
                pass
            assert frames[0].type == FrameType.READY
            return decode_json(frames[0])

        first = next_frame()  # before any HELLO
        assert first["version"] == PROTOCOL_VERSION and first["hostname"] == socket.gethostname()
        host_end.sendall(encode_json(FrameType.HELLO, 0, {"version": PROTOCOL_VERSION}))
        assert next_frame()["instance"] == first["instance"]
        host_end.close()  # no host: every read is EOF at once; the agent must back off, not spin

        def cpu_ticks() -> int:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])  # utime + stime

        before = cpu_ticks()
        time.sleep(1)
        assert cpu_ticks() - before < 30  # a spinning agent burns ~100 ticks a second
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


# -- the guest's clock: the host's time on READY, then every few seconds ------------------------------------


class ScriptedAgent:
    """A stand-in agent on a unix socket that says READY (at once, and on HELLO), answers CLOCK with TIME (its
    clock ``ahead_ns`` ahead of the host's) and records, in order, every frame the host sends, with the host's
    time when it arrived."""

    def __init__(self, version: int = PROTOCOL_VERSION, ahead_ns: int = 0, slow_clocks: int = 0) -> None:
        self.version = version
        self.ahead_ns = ahead_ns
        self.slow_clocks = slow_clocks  # how many CLOCKs it reads late (as a guest whose vCPU waited for a core)
        self.received: list[tuple[int, Frame]] = []
        self.changed = asyncio.Event()

    def ready(self) -> bytes:
        return encode_json(FrameType.READY, 0, {"version": self.version, "instance": "scripted", "hostname": "x"})

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self.ready())  # unsolicited, as a starting agent does
        decoder = FrameDecoder()
        while data := await reader.read(65536):
            arrived = time.time_ns()
            for frame in decoder.feed(data):
                self.received.append((arrived, frame))
                if frame.type == FrameType.HELLO:
                    writer.write(self.ready())
                elif frame.type == FrameType.CLOCK and self.version >= 3:
                    if self.slow_clocks:
                        self.slow_clocks -= 1
                        await asyncio.sleep(0.1)
                    writer.write(encode(FrameType.TIME, 0, clock_payload(time.time_ns() + self.ahead_ns)))
                elif frame.type == FrameType.OPEN:
                    writer.write(encode_json(FrameType.MESSAGE, frame.stream, {"ok": True}))
                    writer.write(encode(FrameType.CLOSE, frame.stream))
            self.changed.set()
            await writer.drain()

    def types(self) -> list[str]:
        return [frame.name for _, frame in self.received]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def scripted_link(
    tmp_path: Path,
    agent: ScriptedAgent,
    on_ready: Callable[[AgentLink], None] | None = None,
    clock_interval: float = 10,
) -> AsyncIterator[AgentLink]:
    path = tmp_path / "scripted.sock"
    server = await asyncio.start_unix_server(agent.serve, str(path))
    scripted = AgentLink(path, "scripted", on_ready=None if on_ready is None else lambda: on_ready(scripted))
    scripted.clock_interval = clock_interval
    scripted.start()
    try:
        await scripted.wait_ready(5)
        yield scripted
    finally:
        await scripted.close()
        server.close()


async def test_the_host_sends_its_time_on_ready_ahead_of_any_request(tmp_path: Path) -> None:
    agent = ScriptedAgent()
    early: list[AgentStream] = []

    def on_ready(link: AgentLink) -> None:  # a request opened the moment the link is ready, as userdata is
        if not early:
            early.append(link.open({"op": "health"}))

    started = time.time_ns()
    async with scripted_link(tmp_path, agent, on_ready) as link:
        assert await link.call({"op": "health"}) == {"ok": True}
        await agent.wait_for(lambda: agent.types().count("CLOCK") >= 2 and agent.types().count("OPEN") >= 2)
    types = agent.types()
    hello = decode_json(agent.received[0][1])
    assert early and types[0] == "HELLO" and hello["version"] == PROTOCOL_VERSION
    assert set(hello) == {"version", "time"}  # the time is for version-1 agents; ours ignore it
    # the time goes out before the link counts as ready (both READYs were in before the first answer)
    assert types[1] == types[2] == "CLOCK" and types[3] == "OPEN"
    for arrived, frame in agent.received:
        if frame.type == FrameType.CLOCK:
            assert started <= clock_time(frame) <= arrived  # the host's time as it sent the frame
    # every READY (the unsolicited one and the answer to HELLO) is followed by the time
    assert types.count("CLOCK") == 2


async def test_the_host_sends_its_time_again_while_connected(tmp_path: Path) -> None:
    agent = ScriptedAgent()
    async with scripted_link(tmp_path, agent, clock_interval=0.05):
        await agent.wait_for(lambda: agent.types().count("CLOCK") >= 6)
    times = [clock_time(frame) for _, frame in agent.received if frame.type == FrameType.CLOCK]
    assert times == sorted(times)
    # two follow the two READYs; the rest are paced by the interval, not a flood
    assert len(times) <= 2 + (times[-1] - times[0]) / 50_000_000 + 1


async def test_a_clock_answered_late_is_sent_again_before_the_link_is_ready(tmp_path: Path) -> None:
    agent = ScriptedAgent(slow_clocks=2)  # both first CLOCKs (one a READY) are read late
    async with scripted_link(tmp_path, agent) as link:
        assert await link.call({"op": "health"}) == {"ok": True}
    types = agent.types()
    assert types.count("CLOCK") == 3 and types.index("OPEN") > max(i for i, t in enumerate(types) if t == "CLOCK")


async def test_a_link_whose_clocks_are_always_late_gets_ready_all_the_same(tmp_path: Path) -> None:
    agent = ScriptedAgent(slow_clocks=100)
    async with scripted_link(tmp_path, agent) as link:
        assert await link.call({"op": "health"}) == {"ok": True}
    assert agent.types().count("CLOCK") == 2 + MAX_CLOCK_RETRIES


async def test_an_agent_ahead_of_the_host_is_stepped_back(tmp_path: Path) -> None:
    agent = ScriptedAgent(ahead_ns=300_000_000)
    async with scripted_link(tmp_path, agent) as link:
        assert await link.call({"op": "health"}) == {"ok": True}
        await agent.wait_for(lambda: "ADJUST" in agent.types())
    adjusts = [adjust_delta(frame) for _, frame in agent.received if frame.type == FrameType.ADJUST]
    # back by at least what the TIME frame proves, never by more than the agent is ahead
    assert adjusts and all(-300_000_000 <= delta < -290_000_000 for delta in adjusts)
    assert agent.types().index("ADJUST") < agent.types().index("OPEN")  # before the first request
    # the two CLOCKs of the two READYs were both answered before the agent saw the ADJUST: one step, not two
    assert agent.types()[: agent.types().index("OPEN")].count("ADJUST") == 1


async def test_an_agent_on_time_or_behind_is_not_adjusted(tmp_path: Path) -> None:
    for ahead_ns in (0, -300_000_000):  # behind: the agent steps itself forward on CLOCK
        agent = ScriptedAgent(ahead_ns=ahead_ns)
        async with scripted_link(tmp_path, agent) as link:
            assert await link.call({"op": "health"}) == {"ok": True}
        assert "ADJUST" not in agent.types()


async def test_no_clock_for_an_agent_of_version_1(tmp_path: Path) -> None:
    agent = ScriptedAgent(version=1)
    async with scripted_link(tmp_path, agent, clock_interval=0.02) as link:
        assert await link.call({"op": "health"}) == {"ok": True}
        await asyncio.sleep(0.2)
    assert "CLOCK" not in agent.types()


class RecordingLink:
    def __init__(self) -> None:
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []

    def send(self, data: bytes) -> None:
        self.frames += self.decoder.feed(data)


def in_process_agent(now_ns: int) -> tuple[Agent, RecordingLink, list[int]]:
    """The agent's dispatch, run in this process with a clock that records what it would set."""
    steps: list[int] = []
    agent = Agent(Loop(), Clock(steps.append, read_time=lambda: now_ns))
    recorder = RecordingLink()
    agent.link = recorder  # type: ignore[assignment]  # only send() is used
    return agent, recorder, steps


def test_the_agent_takes_the_host_time_as_a_lower_bound() -> None:
    now = 1_700_000_000 * 10**9
    agent, sent, steps = in_process_agent(now)
    ms = 1_000_000
    # A frame is never early, so a host time behind ours is a late frame: it never sets the clock back...
    for offset in (-1 * ms, -50 * ms, -999 * ms, 0, 1 * ms):
        agent.on_frames([Frame(FrameType.CLOCK, 0, clock_payload(now + offset))])
    assert steps == []
    # ... unless ours is ahead by more than a second; a host time ahead of ours means we are behind.
    for offset in (-1001 * ms, 1 * ms + 1, 5 * ms, 4_400 * ms):
        agent.on_frames([Frame(FrameType.CLOCK, 0, clock_payload(now + offset))])
    assert steps == [now - 1001 * ms, now + 1 * ms + 1, now + 5 * ms, now + 4_400 * ms]
    assert agent.clock.steps == 4
    # each CLOCK is answered by one TIME with the agent's clock (this one's reads `now` throughout)
    assert [(frame.name, clock_time(frame)) for frame in sent.frames] == [("TIME", now)] * 9


def test_a_late_clock_frame_does_not_set_the_clock_back() -> None:
    """Two CLOCK frames (one per READY) where the second was read 90 ms late: the clock stays right."""
    host = [1_700_000_000 * 10**9]
    guest = [host[0] - 1_300_000_000]  # from the RTC: whole seconds, and boot time
    clock = Clock(lambda time_ns: guest.__setitem__(0, time_ns), read_time=lambda: guest[0])
    first, second = host[0], host[0] + 2_000_000
    assert clock.follow(first)  # read at once
    for elapsed in (2_000_000, 90_000_000):  # the second one waited while the agent imported its exec code
        host[0] += elapsed
        guest[0] += elapsed
    assert not clock.follow(second)
    assert guest[0] == host[0]


def test_the_agent_ignores_the_time_in_hello_and_health() -> None:
    now = 1_700_000_000 * 10**9
    agent, sent, steps = in_process_agent(now)
    stale = (now + 4_400_000_000) / 1e9  # a time that would set the clock, if HELLO's were taken
    agent.on_frames([Frame(FrameType.HELLO, 0, json.dumps({"version": 1, "time": stale}).encode())])
    agent.on_frames([Frame(FrameType.OPEN, 5, json.dumps({"op": "health", "time": stale}).encode())])
    assert steps == []
    assert [frame.name for frame in sent.frames] == ["READY", "MESSAGE", "CLOSE"]


def test_the_agent_steps_its_clock_by_an_adjust() -> None:
    now = 1_700_000_000 * 10**9
    agent, sent, steps = in_process_agent(now)
    agent.on_frames([Frame(FrameType.ADJUST, 0, adjust_payload(-123_456_789)), Frame(FrameType.ADJUST, 0, b"\0")])
    assert steps == [now - 123_456_789] and sent.frames == []  # the bad one is dropped


def test_a_bad_clock_frame_is_dropped_and_the_agent_goes_on() -> None:
    agent, sent, steps = in_process_agent(0)
    agent.on_frames([Frame(FrameType.CLOCK, 0, b"\0\0\0\1"), Frame(FrameType.CLOCK, 0, clock_payload(10**18))])
    assert steps == [10**18] and [frame.name for frame in sent.frames] == ["TIME"]  # only the good one is answered


def test_the_clock_stops_trying_when_it_may_not_be_set() -> None:
    calls: list[int] = []

    def refuse(time_ns: int) -> None:
        calls.append(time_ns)
        raise PermissionError(1, "Operation not permitted")

    clock = Clock(refuse, read_time=lambda: 0)
    assert clock.follow(10**18) is False and clock.follow(2 * 10**18) is False
    assert calls == [10**18] and clock.steps == 0
    assert Clock(None).follow(10**18) is False


class RestoredAgent(ScriptedAgent):
    """A guest restored from a saved state: the answer to a CLOCK of the connection before the save comes first."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode(FrameType.TIME, 0, clock_payload(time.time_ns())))
        await super().serve(reader, writer)


async def test_a_stale_time_before_ready_is_not_a_protocol_error(tmp_path: Path) -> None:
    agent = RestoredAgent()
    async with scripted_link(tmp_path, agent) as link:
        assert await link.call({"op": "health"}) == {"ok": True}
    assert agent.types().count("HELLO") == 1  # one connection: the link did not drop it
