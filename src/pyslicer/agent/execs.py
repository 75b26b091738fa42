"""One command run for one stream: stdout/stderr out under the host's credit, stdin in.

Output is read from the pipes only while the host has granted credit, at most that much, so nothing
piles up in the agent; a child that writes faster than the host reads blocks on its full pipe. Stdin
bytes are written as the pipe takes them, and each chunk's credit goes back to the host once written
(or at once when the child stopped reading), so the host never stalls.
"""

from __future__ import annotations

import os
import sys

from pyslicer.agent.session import StreamSession
from pyslicer.agent.spawn import (
    SIGKILL,
    LaunchError,
    build_launch,
    exit_event,
    launch_failure,
    now,
    spawn,
    watch_exit,
)
from pyslicer.protocol import (
    INITIAL_WINDOW,
    MAX_PAYLOAD,
    Channel,
    Event,
    FrameType,
    window_payload,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class ExecSession(StreamSession):
    """Runs ``request`` (an ``ExecRequest``, untrusted) for ``stream``.

    ``send`` takes encoded frames for the host; ``on_finish`` is called once the stream is done (the
    exit or error message sent), not after ``cancel``; it is where the stream's CLOSE goes out.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._credit = 0  # set by _start from the request's window
        self._read_threshold = MAX_PAYLOAD  # read output only with credit for a whole frame (docs/protocol.md)
        self._wants_stdin = bool(self._request.get("stdin"))
        self._pid = 0
        self._returncode: int | None = None
        self._stdout = -1  # our ends of the pipes; -1 once closed
        self._stderr = -1
        self._stdin = -1
        self._stdin_queue: list[bytes] = []
        self._stdin_offset = 0  # bytes of _stdin_queue[0] already written
        self._stdin_eof = False
        self._stdin_broken = False

    # -- from the host -------------------------------------------------------------------------
    def start(self) -> None:
        self._guard(self._start)

    def on_data(self, channel: int, data: bytes) -> None:
        if channel == Channel.STDIN and self._wants_stdin and not self._stdin_eof and not self._done:
            if self._stdin_broken:
                self._send(FrameType.WINDOW, window_payload(len(data)))
            else:
                self._stdin_queue.append(data)
                self._guard(self._write_stdin)

    def on_eof(self, channel: int) -> None:
        if channel == Channel.STDIN and self._wants_stdin and not self._stdin_eof:
            self._stdin_eof = True
            if not self._stdin_queue:
                self._close_stdin()

    def on_window(self, increment: int) -> None:
        self._credit += increment
        self._update_reading()

    def cancel(self) -> None:
        """The host is gone or gave up: kill the process group, drop the pipes, send nothing more."""
        self._cancelled = True
        self._kill()
        self._close_all()

    # -- sending -------------------------------------------------------------------------------
    def _finish(self) -> None:
        self._done = True
        self._close_all()
        if not self._cancelled:
            self._on_finish(self)

    def _guard(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:  # the host must always see an end to the stream
            if self._done or self._cancelled:
                print(f"slicer-agent: stream {self.stream}: {exc!r}", file=sys.stderr)
                return
            self._send_event({"type": Event.ERROR, "error": f"agent: {exc}", "exit_code": 1})
            self._kill()
            self._finish()

    # -- running -------------------------------------------------------------------------------
    def _start(self) -> None:
        self._credit = int(self._request.get("window") or INITIAL_WINDOW)
        self._read_threshold = max(1, min(MAX_PAYLOAD, self._credit))
        started_at = now()  # before the spawn, so ended_at - started_at is the whole guest-side cost
        child_ends: list[int] = []
        try:
            argv, env, cwd, uid, gid = build_launch(self._request)
            try:
                self._stdout, stdout_w = os.pipe()
                child_ends.append(stdout_w)
                self._stderr, stderr_w = os.pipe()
                child_ends.append(stderr_w)
                stdin_r: int | None = None
                if self._wants_stdin:
                    stdin_r, self._stdin = os.pipe()
                    child_ends.append(stdin_r)
                self._pid = spawn(argv, env, cwd, (stdin_r, stdout_w, stderr_w), uid=uid, gid=gid, new_session=True)
            finally:
                for fd in child_ends:
                    os.close(fd)
        except LaunchError as exc:
            self._fail_launch(str(exc), exc.exit_code)
            return
        except (OSError, ValueError) as exc:
            self._fail_launch(*launch_failure("exec", exc, self._request.get("cmd")))
            return

        self._send_event({"type": Event.STARTED, "pid": self._pid, "started_at": started_at})
        for fd in (self._stdout, self._stderr, self._stdin):
            if fd >= 0:
                os.set_blocking(fd, False)
        watch_exit(self._loop, self._pid, self._on_exit)
        self._update_reading()

    def _fail_launch(self, message: str, exit_code: int) -> None:
        self._send_event({"type": Event.ERROR, "error": message, "exit_code": exit_code})
        self._finish()

    def _on_exit(self, returncode: int) -> None:
        self._returncode = returncode
        self._guard(self._maybe_exit)

    def _maybe_exit(self) -> None:
        """The exit frame goes out once both outputs reached EOF and the child is reaped."""
        if self._done or self._cancelled or self._stdout >= 0 or self._stderr >= 0 or self._returncode is None:
            return
        self._send_event(exit_event(self._returncode))
        self._finish()

    def _kill(self) -> None:
        # The group outlives its leader while a member holds the pipes; its id cannot be reused meanwhile.
        running = self._returncode is None or self._stdout >= 0 or self._stderr >= 0
        if self._pid and running:
            try:
                os.killpg(self._pid, SIGKILL)
            except (ProcessLookupError, PermissionError):
                return  # gone already

    # -- output --------------------------------------------------------------------------------
    def _update_reading(self) -> None:
        reading = self._credit >= self._read_threshold and not self._cancelled and not self._done
        for fd, callback in ((self._stdout, self._on_stdout), (self._stderr, self._on_stderr)):
            if fd < 0:
                continue
            if reading:
                self._loop.add_reader(fd, callback)
            else:
                self._loop.remove_reader(fd)

    def _on_stdout(self) -> None:
        self._guard(lambda: self._read(Channel.STDOUT))

    def _on_stderr(self) -> None:
        self._guard(lambda: self._read(Channel.STDERR))

    def _read(self, channel: int) -> None:
        fd = self._stdout if channel == Channel.STDOUT else self._stderr
        if fd < 0 or self._credit < self._read_threshold:
            return
        try:
            data = os.read(fd, min(self._credit, MAX_PAYLOAD))
        except BlockingIOError:
            return
        if not data:
            self._loop.forget(fd)
            os.close(fd)
            if channel == Channel.STDOUT:
                self._stdout = -1
            else:
                self._stderr = -1
            self._send(FrameType.EOF, flags=channel)
            self._maybe_exit()
            return
        self._credit -= len(data)
        self._send(FrameType.DATA, data, channel)
        if self._credit < self._read_threshold:
            self._update_reading()

    # -- stdin ---------------------------------------------------------------------------------
    def _write_stdin(self) -> None:
        if self._stdin < 0:
            return
        while self._stdin_queue:
            chunk = self._stdin_queue[0]
            try:
                written = os.write(self._stdin, memoryview(chunk)[self._stdin_offset :])
            except BlockingIOError:
                self._loop.add_writer(self._stdin, self._on_stdin_writable)
                return
            except OSError:  # the child closed its stdin (EPIPE) or is gone
                self._stdin_broken = True
                self._close_stdin()
                return
            self._stdin_offset += written
            if self._stdin_offset == len(chunk):
                self._stdin_queue.pop(0)
                self._stdin_offset = 0
                self._send(FrameType.WINDOW, window_payload(len(chunk)))
        self._loop.remove_writer(self._stdin)
        if self._stdin_eof:
            self._close_stdin()

    def _on_stdin_writable(self) -> None:
        self._guard(self._write_stdin)

    def _close_stdin(self) -> None:
        if self._stdin >= 0:
            self._loop.forget(self._stdin)
            os.close(self._stdin)
            self._stdin = -1
        # whatever was still queued will never reach the child: its credit goes back all the same
        queued, self._stdin_queue, self._stdin_offset = self._stdin_queue, [], 0
        if self._stdin_broken:
            for chunk in queued:
                self._send(FrameType.WINDOW, window_payload(len(chunk)))

    def _close_all(self) -> None:
        for fd in (self._stdout, self._stderr, self._stdin):
            if fd >= 0:
                self._loop.forget(fd)
                os.close(fd)
        self._stdout = self._stderr = self._stdin = -1
        self._stdin_queue = []
