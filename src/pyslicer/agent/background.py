"""Background execs: processes the agent keeps, each writing into its own output ring.

They belong to the agent, not to a stream: the stream that starts one ends at once, and a HELLO (the host
reconnecting) drops streams but not these, so ids stay valid while the agent runs. Output is always read (the
child never blocks on a full pipe); the ring keeps the newest ``ring_bytes`` of it. The rings' caps together
stay within ``RING_BUDGET``: a start beyond it is refused (``budget_exhausted``) until an exec is deleted.

The host reaches them through short streams (``bg_*`` ops, one ``BackgroundSession`` each); a ``bg_logs``
stream sends NDJSON records under the host's credit and, following, wakes as records are added.
"""

from __future__ import annotations

import binascii
import os
import sys

from pyslicer.agent.ring import Record, Ring
from pyslicer.agent.session import StreamSession
from pyslicer.agent.spawn import LaunchError, build_launch, now, signal_name, spawn, watch_exit
from pyslicer.protocol import INITIAL_WINDOW, MAX_PAYLOAD, Channel, Event, FrameType, Op
from pyslicer.protocol.frames import dumps

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pyslicer.agent.loop import Loop, Timer
    from pyslicer.protocol import BgError, BgInfo, BgLogRecord, BgStarted

DEFAULT_RING_BYTES = 1024 * 1024
RING_BUDGET = 32 * 1024 * 1024  # over every exec still tracked (running, or ended and not deleted)
MAX_EXECS = 128  # tracked at once; also keeps a bg_list answer within one frame's worth of events
MAX_DELETED = 4096  # deleted ids remembered (410); older ones read as never existing (404)
MAX_READ = 64 * 1024
DEFAULT_GRACE_MS = 5000
MAX_GRACE_MS = 600_000
MAX_WAIT = 600.0
SIGNALS = ("TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2")


class BackgroundError(Exception):
    def __init__(self, message: str, code: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.exit_code = exit_code

    def body(self) -> BgError:
        body: BgError = {"type": Event.ERROR, "error": str(self), "code": self.code}
        if self.exit_code is not None:
            body["exit_code"] = self.exit_code
        return body


def signal_number(name: str) -> int:
    import _signal  # type: ignore[import-not-found]  # (spawn imported it already)

    number: int = getattr(_signal, "SIG" + name)
    return number


class BackgroundExec:
    """One process and its ring. ``listeners`` are called (no arguments) whenever a record is added or the exec
    is deleted; ``running`` turns false once both outputs reached EOF and the process was reaped."""

    def __init__(self, loop: Loop, exec_id: str, request: dict[str, Any], ring_bytes: int) -> None:
        self.loop = loop
        self.exec_id = exec_id
        self.command = str(request.get("cmd") or "")
        args = request.get("args")
        self.args = [str(a) for a in args] if isinstance(args, list) else []
        self.stdio = "text" if request.get("stdio") == "text" else "base64"
        self.ring = Ring(ring_bytes)
        self.pid = 0
        self.cwd = ""
        self.uid = 0
        self.started_at = ""
        self.running = True
        self.deleted = False
        self.exit_code: int | None = None
        self.signal: str | None = None
        self.ended_at: str | None = None
        self.listeners: set[Any] = set()
        self._returncode: int | None = None
        self._outputs: dict[int, int] = {Channel.STDOUT: -1, Channel.STDERR: -1}
        self._kill_timer: Timer | None = None
        self._request = request

    def launch(self) -> None:
        """Raises BackgroundError (launch_failed) when the command cannot start."""
        self.started_at = now()
        child_ends: list[int] = []
        try:
            argv, env, cwd, uid, gid = build_launch(self._request)
            self.cwd, self.uid = cwd, uid
            try:
                for channel in (Channel.STDOUT, Channel.STDERR):
                    ours, theirs = os.pipe()
                    self._outputs[channel] = ours
                    child_ends.append(theirs)
                self.pid = spawn(
                    argv, env, cwd, (None, child_ends[0], child_ends[1]), uid=uid, gid=gid, new_session=True
                )
            finally:
                for fd in child_ends:
                    os.close(fd)
        except BaseException as exc:
            self._close_outputs()
            if isinstance(exc, LaunchError):
                raise BackgroundError(str(exc), "launch_failed", exc.exit_code) from None
            if isinstance(exc, FileNotFoundError):
                what = exc.filename or self.command
                raise BackgroundError(f"exec: {what}: not found", "launch_failed", 127) from None
            if isinstance(exc, PermissionError):
                raise BackgroundError(f"exec: {exc}", "launch_failed", 126) from None
            if isinstance(exc, (OSError, ValueError)):
                raise BackgroundError(f"exec: {exc}", "launch_failed", 1) from None
            raise
        self._request = {}
        self._add("started", meta={"pid": self.pid, "started_at": self.started_at})
        for output, fd in self._outputs.items():
            os.set_blocking(fd, False)
            self.loop.add_reader(fd, self._on_stdout if output == Channel.STDOUT else self._on_stderr)
        watch_exit(self.loop, self.pid, self._on_exit)

    # -- output --------------------------------------------------------------------------------
    def _on_stdout(self) -> None:
        self._guard(lambda: self._read(Channel.STDOUT))

    def _on_stderr(self) -> None:
        self._guard(lambda: self._read(Channel.STDERR))

    def _guard(self, step: Any) -> None:
        try:
            step()
        except Exception as exc:  # one exec's trouble must not stop the agent's loop
            print(f"slicer-agent: background exec {self.exec_id}: {exc!r}", file=sys.stderr)

    def _read(self, channel: int) -> None:
        fd = self._outputs[channel]
        if fd < 0:
            return
        try:
            data = os.read(fd, min(MAX_READ, self.ring.capacity))
        except BlockingIOError:
            return
        if data:
            self._add("stdout" if channel == Channel.STDOUT else "stderr", data)
            return
        self.loop.forget(fd)
        os.close(fd)
        self._outputs[channel] = -1
        self._maybe_ended()

    def _add(self, kind: str, data: bytes = b"", meta: dict[str, Any] | None = None) -> None:
        self.ring.append(kind, data, meta, now())
        self._notify()

    def _notify(self) -> None:
        for listener in list(self.listeners):
            listener()

    def _on_exit(self, returncode: int) -> None:
        self._returncode = returncode
        self._guard(self._maybe_ended)

    def _maybe_ended(self) -> None:
        if not self.running or self._returncode is None or any(fd >= 0 for fd in self._outputs.values()):
            return
        returncode = self._returncode
        self.exit_code = 128 - returncode if returncode < 0 else returncode
        self.signal = signal_name(-returncode) if returncode < 0 else None
        self.ended_at = now()
        self.running = False
        if self._kill_timer is not None:
            self._kill_timer.cancel()
            self._kill_timer = None
        meta: dict[str, Any] = {"exit_code": self.exit_code, "ended_at": self.ended_at}
        if self.signal is not None:
            meta["signal"] = self.signal
        self._add("exit", meta=meta)

    def _close_outputs(self) -> None:
        for channel, fd in self._outputs.items():
            if fd >= 0:
                self.loop.forget(fd)
                os.close(fd)
                self._outputs[channel] = -1

    # -- control -------------------------------------------------------------------------------
    def kill(self, name: str, grace_ms: int) -> bool:
        """Signal the process group; a TERM is followed by a KILL after ``grace_ms`` if it still runs. False
        when it had ended already (nothing sent)."""
        if not self.running:
            return False
        self._signal_group(signal_number(name))
        if name == "TERM" and self._kill_timer is None:
            self._kill_timer = self.loop.call_later(grace_ms / 1000, self._escalate)
        return True

    def _escalate(self) -> None:
        self._kill_timer = None
        if self.running:
            self._signal_group(signal_number("KILL"))

    def _signal_group(self, signo: int) -> None:
        # The group outlives its leader while a member holds the pipes; its id cannot be reused meanwhile.
        try:
            os.killpg(self.pid, signo)
        except (ProcessLookupError, PermissionError):
            return  # gone already

    def delete(self) -> None:
        self.deleted = True
        self._close_outputs()
        self._notify()
        self.listeners.clear()

    # -- answers -------------------------------------------------------------------------------
    def info(self) -> BgInfo:
        ring = self.ring
        info: BgInfo = {
            "exec_id": self.exec_id,
            "pid": self.pid,
            "command": self.command,
            "args": self.args,
            "cwd": self.cwd,
            "uid": self.uid,
            "started_at": self.started_at,
            "running": self.running,
            "exit_code": self.exit_code,
            "ended_at": self.ended_at,
            "bytes_written": ring.bytes_written,
            "bytes_dropped": ring.bytes_dropped,
            "next_id": ring.next_id,
            "ring_bytes": ring.capacity,
        }
        if self.signal is not None:
            info["signal"] = self.signal
        return info

    def exit_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"exec_id": self.exec_id, "running": self.running, "exit_code": self.exit_code}
        status["ended_at"] = self.ended_at
        if self.signal is not None:
            status["signal"] = self.signal
        return status


class Registry:
    """Every background exec of this agent, by id, and the ids deleted lately."""

    def __init__(self, loop: Loop, budget: int = RING_BUDGET, max_execs: int = MAX_EXECS) -> None:
        self.loop = loop
        self.budget = budget
        self.max_execs = max_execs
        self.execs: dict[str, BackgroundExec] = {}
        self._deleted: dict[str, None] = {}  # insertion-ordered: the oldest is forgotten first

    @property
    def reserved(self) -> int:
        return sum(e.ring.capacity for e in self.execs.values())

    def start(self, request: dict[str, Any]) -> BgStarted:
        ring_bytes = request.get("ring_bytes") or DEFAULT_RING_BYTES
        if not isinstance(ring_bytes, int) or isinstance(ring_bytes, bool) or ring_bytes < 0:
            raise BackgroundError("ring_bytes must be a non-negative integer", "invalid_ring")
        if ring_bytes > self.budget:
            raise BackgroundError(
                f"ring_bytes {ring_bytes} is larger than the agent's ring budget of {self.budget} bytes", "invalid_ring"
            )
        if len(self.execs) >= self.max_execs:
            raise BackgroundError(
                f"{len(self.execs)} background execs are tracked (at most {self.max_execs}); delete some first",
                "too_many",
            )
        free = self.budget - self.reserved
        if ring_bytes > free:
            raise BackgroundError(
                f"the ring budget is exhausted: {free} of {self.budget} bytes free, {ring_bytes} asked; "
                "delete ended execs to free theirs",
                "budget_exhausted",
            )
        exec_id = "ex_" + os.urandom(8).hex()
        bg = BackgroundExec(self.loop, exec_id, request, ring_bytes)
        bg.launch()
        self.execs[exec_id] = bg
        return {
            "type": Event.STARTED,
            "exec_id": exec_id,
            "pid": bg.pid,
            "started_at": bg.started_at,
            "ring_bytes": ring_bytes,
        }

    def get(self, exec_id: object) -> BackgroundExec:
        bg = self.execs.get(exec_id) if isinstance(exec_id, str) else None
        if bg is not None:
            return bg
        if isinstance(exec_id, str) and exec_id in self._deleted:
            raise BackgroundError(f"background exec {exec_id} was deleted", "gone")
        raise BackgroundError(f"no background exec {exec_id}", "not_found")

    def delete(self, exec_id: object) -> None:
        bg = self.get(exec_id)
        if bg.running:
            raise BackgroundError(f"background exec {bg.exec_id} is still running; kill it first", "running")
        del self.execs[bg.exec_id]
        bg.delete()
        self._deleted[bg.exec_id] = None
        while len(self._deleted) > MAX_DELETED:
            del self._deleted[next(iter(self._deleted))]


_registry: Registry | None = None


def registry(loop: Loop) -> Registry:
    """The agent's one registry (module state: it outlives every stream and every host connection)."""
    global _registry
    if _registry is None:
        _registry = Registry(loop)
    return _registry


def fitted(info: BgInfo, size: int) -> BgInfo:
    """``info`` within ``size`` encoded bytes, so an answer fits one frame: the echoed command line is cut
    (arguments dropped from the end, then the command shortened) when it is too long."""
    while len(dumps(info)) > size and info["args"]:
        info["args"] = info["args"][: len(info["args"]) // 2]
    excess = len(dumps(info)) - size
    if excess > 0:
        info["command"] = info["command"][: max(0, len(info["command"]) - excess)]
    return info


# -- log records ---------------------------------------------------------------------------------------


def record_line(record: Record) -> bytes:
    body: BgLogRecord = {"id": record.id, "type": record.kind, "timestamp": record.timestamp}  # type: ignore[typeddict-item]
    if record.meta:
        body.update(record.meta)  # type: ignore[typeddict-item]
    if record.kind in ("stdout", "stderr"):
        body["data"] = binascii.b2a_base64(record.data, newline=False).decode()
    return dumps(body).encode() + b"\n"


def gap_line(frames: int, size: int) -> bytes:
    body: BgLogRecord = {
        "type": "gap",
        "dropped_frames": frames,
        "dropped_bytes": size,
        "timestamp": now(),
    }
    return dumps(body).encode() + b"\n"


# -- streams -------------------------------------------------------------------------------------------


class BackgroundSession(StreamSession):
    """One ``bg_*`` request. Most are answered by one message; ``bg_wait`` waits for the end (or its timeout),
    ``bg_logs`` streams records under credit."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._registry = registry(self._loop)
        self._exec: BackgroundExec | None = None
        self._timer: Timer | None = None
        self._credit = 0
        self._cursor = 0
        self._pending = bytearray()  # encoded records not yet sent
        self._follow = False

    def start(self) -> None:
        op = self._request.get("op")
        try:
            if op == Op.BG_START:
                self._answer(self._registry.start(self._request))
            elif op == Op.BG_LIST:
                infos = [bg.info() for bg in self._registry.execs.values()]
                share = (MAX_PAYLOAD - 1024) // max(1, len(infos))
                self._answer({"type": "list", "execs": [fitted(info, share) for info in infos]})
            elif op == Op.BG_INFO:
                info = self._registry.get(self._request.get("exec_id")).info()
                self._answer({"type": "info", **fitted(info, MAX_PAYLOAD - 1024)})
            elif op == Op.BG_DELETE:
                exec_id = self._request.get("exec_id")
                self._registry.delete(exec_id)
                self._answer({"type": Event.DONE, "exec_id": exec_id, "reaped": True})
            elif op == Op.BG_KILL:
                self._kill()
            elif op == Op.BG_WAIT:
                self._wait()
            elif op == Op.BG_LOGS:
                self._logs()
            else:
                raise BackgroundError(f"unknown op {op!r}", "invalid_request")
        except BackgroundError as exc:
            self._answer(exc.body())
        except Exception as exc:  # the host must always see an end to the stream
            self._answer({"type": Event.ERROR, "error": f"agent: {exc}", "code": "failed"})

    def _answer(self, body: Any) -> None:
        self._send_event(body)
        self._end()

    def _end(self) -> None:
        if self._done:
            return
        self._done = True
        self._release()
        if not self._cancelled:
            self._on_finish(self)

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._exec is not None:
            self._exec.listeners.discard(self._on_change)

    def on_data(self, channel: int, data: bytes) -> None:
        pass  # nothing is read from the host

    def on_eof(self, channel: int) -> None:
        pass

    def on_window(self, increment: int) -> None:
        self._credit += increment
        if self._exec is not None and not self._done:
            self._pump()

    def cancel(self) -> None:
        self._cancelled = True
        self._done = True
        self._release()

    # -- kill and wait -------------------------------------------------------------------------
    def _kill(self) -> None:
        bg = self._registry.get(self._request.get("exec_id"))
        name = str(self._request.get("signal") or "TERM").upper().removeprefix("SIG")
        if name not in SIGNALS:
            raise BackgroundError(f"unknown signal {name!r}: one of {', '.join(SIGNALS)}", "invalid_signal")
        grace = self._request.get("grace_ms")
        grace_ms = grace if isinstance(grace, int) and not isinstance(grace, bool) and grace > 0 else DEFAULT_GRACE_MS
        sent = bg.kill(name, min(grace_ms, MAX_GRACE_MS))
        self._answer(
            {
                "type": Event.DONE,
                "exec_id": bg.exec_id,
                "pid": bg.pid,
                "running": bg.running,
                "signal_sent": name if sent else "",
            }
        )

    def _wait(self) -> None:
        bg = self._registry.get(self._request.get("exec_id"))
        if not bg.running:
            self._answer({"type": Event.DONE, **bg.exit_status(), "timed_out": False})
            return
        timeout = self._request.get("timeout")
        seconds = float(timeout) if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) else 30.0
        self._exec = bg
        bg.listeners.add(self._on_change)
        self._timer = self._loop.call_later(min(max(seconds, 0.0), MAX_WAIT), self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        if self._exec is not None and not self._done:
            self._answer({"type": Event.DONE, **self._exec.exit_status(), "timed_out": True})

    def _on_change(self) -> None:
        bg = self._exec
        if bg is None or self._done:
            return
        if self._request.get("op") == Op.BG_WAIT:
            if bg.deleted:
                self._answer(BackgroundError(f"background exec {bg.exec_id} was deleted", "gone").body())
            elif not bg.running:
                self._answer({"type": Event.DONE, **bg.exit_status(), "timed_out": False})
        else:
            self._pump()

    # -- logs ----------------------------------------------------------------------------------
    def _logs(self) -> None:
        bg = self._registry.get(self._request.get("exec_id"))
        from_id = self._request.get("from_id")
        self._cursor = from_id if isinstance(from_id, int) and not isinstance(from_id, bool) and from_id > 0 else 1
        self._follow = self._request.get("follow") is True
        self._credit = int(self._request.get("window") or INITIAL_WINDOW)
        self._exec = bg
        bg.listeners.add(self._on_change)
        self._send_event({"type": Event.STARTED, "stdio": bg.stdio, "next_id": bg.ring.next_id})
        self._pump()

    def _pump(self) -> None:
        """Send what the ring holds past the cursor, as credit allows; end once a reader that does not follow
        has it all, or a follower has had the exit record (or the exec was deleted)."""
        bg = self._exec
        assert bg is not None
        ring = bg.ring
        while not self._done:
            if len(self._pending) < MAX_PAYLOAD and not bg.deleted:
                gap = ring.gap(self._cursor)
                if gap is not None:
                    self._pending += gap_line(*gap)
                    self._cursor = ring.first_id
                for record in ring.read(self._cursor, limit=64):
                    self._pending += record_line(record)
                    self._cursor = record.id + 1
                    if len(self._pending) >= MAX_PAYLOAD:
                        break
            if self._pending:
                size = min(len(self._pending), MAX_PAYLOAD, self._credit)
                # wait for credit for a whole frame (or all that is left): see docs/protocol.md
                if size < min(len(self._pending), MAX_PAYLOAD):
                    return
                self._send(FrameType.DATA, bytes(self._pending[:size]), Channel.STDOUT)
                del self._pending[:size]
                self._credit -= size
                continue
            caught_up = self._cursor >= ring.next_id
            if bg.deleted or (caught_up and (not self._follow or not bg.running)):
                self._send(FrameType.EOF, flags=Channel.STDOUT)
                self._answer({"type": Event.DONE})
            return
