"""One command run for one stream: stdout/stderr out under the host's credit, stdin in."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import pwd
import shlex
import signal
from typing import TYPE_CHECKING, Any

from pyslicer.protocol import INITIAL_WINDOW, MAX_PAYLOAD, Channel, FrameType, window_payload

if TYPE_CHECKING:
    from pyslicer.agent.server import Agent

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


class LaunchError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def build_launch(request: dict[str, Any]) -> tuple[list[str], dict[str, str], str, int, int]:
    cmd = request.get("cmd")
    args = request.get("args") or []
    if not isinstance(cmd, str) or not cmd:
        raise LaunchError("cmd is required", 1)
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise LaunchError("args must be a list of strings", 1)
    shell = request.get("shell") or ""
    argv = [shell, "-c", " ".join([cmd, *map(shlex.quote, args)])] if shell else [cmd, *args]

    uid = int(request.get("uid") or 0)
    try:
        account: pwd.struct_passwd | None = pwd.getpwuid(uid)
    except KeyError:
        account = None
    gid_value = request.get("gid")
    gid = int(gid_value) if gid_value is not None else (account.pw_gid if account else uid)
    home = account.pw_dir if account else "/"
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": home,
        "USER": account.pw_name if account else str(uid),
        "LOGNAME": account.pw_name if account else str(uid),
        "LANG": "C.UTF-8",
    }
    for item in request.get("env") or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise LaunchError(f"env entry {item!r} is not KEY=VALUE", 1)
        env[key] = value
    cwd = request.get("cwd") or (home if os.path.isdir(home) else "/")
    return argv, env, str(cwd), uid, gid


class ExecSession:
    def __init__(self, agent: Agent, stream: int, request: dict[str, Any]) -> None:
        self._agent = agent
        self._stream = stream
        self._request = request
        self._credit = int(request.get("window") or INITIAL_WINDOW)
        self._credit_changed = asyncio.Event()
        self._stdin_queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._proc: asyncio.subprocess.Process | None = None
        self._cancelled = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    # -- from the host -------------------------------------------------------------------------
    def on_data(self, channel: Channel, data: bytes) -> None:
        if channel is Channel.STDIN:
            self._stdin_queue.put_nowait(data)

    def on_eof(self, channel: Channel) -> None:
        if channel is Channel.STDIN:
            self._stdin_queue.put_nowait(None)

    def on_window(self, increment: int) -> None:
        self._credit += increment
        self._credit_changed.set()

    def cancel(self) -> None:
        self._cancelled = True
        self._kill(signal.SIGKILL)
        self._task.cancel()

    # -- running -------------------------------------------------------------------------------
    def _send_json(self, body: dict[str, Any]) -> None:
        if not self._cancelled:
            self._agent.send_json(FrameType.MESSAGE, self._stream, body)

    def _kill(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, sig)

    async def _run(self) -> None:
        try:
            await self._execute()
        except asyncio.CancelledError:
            self._kill(signal.SIGKILL)
            raise
        except Exception as exc:  # the host must always see an end to the stream
            self._send_json({"type": "error", "error": f"agent: {exc}", "exit_code": 1})
        finally:
            if not self._cancelled:
                self._agent.finish(self._stream, self)

    async def _execute(self) -> None:
        wants_stdin = bool(self._request.get("stdin"))
        started_at = now()  # before the spawn, so ended_at - started_at is the whole guest-side cost
        try:
            argv, env, cwd, uid, gid = build_launch(self._request)
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if wants_stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=cwd,
                env=env,
                user=uid,
                group=gid,
                extra_groups=[],
                start_new_session=True,
            )
        except LaunchError as exc:
            self._send_json({"type": "error", "error": str(exc), "exit_code": exc.exit_code})
            return
        except FileNotFoundError as exc:
            what = exc.filename or self._request.get("cmd")
            self._send_json({"type": "error", "error": f"exec: {what}: not found", "exit_code": 127})
            return
        except PermissionError as exc:
            self._send_json({"type": "error", "error": f"exec: {exc}", "exit_code": 126})
            return
        except (OSError, ValueError) as exc:
            self._send_json({"type": "error", "error": f"exec: {exc}", "exit_code": 1})
            return

        proc = self._proc
        self._send_json({"type": "started", "pid": proc.pid, "started_at": started_at})
        stdin_task = asyncio.get_running_loop().create_task(self._feed_stdin()) if wants_stdin else None
        assert proc.stdout is not None and proc.stderr is not None
        try:
            await asyncio.gather(self._pump(proc.stdout, Channel.STDOUT), self._pump(proc.stderr, Channel.STDERR))
            returncode = await proc.wait()
        finally:
            if stdin_task is not None:
                stdin_task.cancel()
        frame: dict[str, Any] = {"type": "exit", "exit_code": returncode, "ended_at": now()}
        if returncode < 0:
            frame["exit_code"] = 128 - returncode
            frame["signal"] = signal.Signals(-returncode).name
        self._send_json(frame)

    async def _pump(self, reader: asyncio.StreamReader, channel: Channel) -> None:
        while True:
            while self._credit <= 0:
                self._credit_changed.clear()
                await self._credit_changed.wait()
            data = await reader.read(min(self._credit, MAX_PAYLOAD))
            if not data:
                if not self._cancelled:
                    self._agent.send(FrameType.EOF, self._stream, flags=channel)
                return
            self._credit -= len(data)
            if not self._cancelled:
                self._agent.send(FrameType.DATA, self._stream, data, flags=channel)

    async def _feed_stdin(self) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        stdin = self._proc.stdin
        broken = False
        while True:
            chunk = await self._stdin_queue.get()
            if chunk is None:
                break
            if not broken:
                try:
                    stdin.write(chunk)
                    await stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    broken = True
            # credit goes back even when the child stopped reading, so the host never stalls
            if not self._cancelled:
                self._agent.send(FrameType.WINDOW, self._stream, window_payload(len(chunk)))
        with contextlib.suppress(OSError):
            stdin.close()
