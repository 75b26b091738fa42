"""A login shell on a PTY for one stream: the terminal's output goes out under the host's credit, keystrokes
come in as DATA on stdin, resizes as MESSAGEs.

The shell runs as the requested user with a login environment (argv[0] ``-bash``, so it reads the
profile files), in a session of its own whose controlling terminal is the PTY. It ends in one of two ways:
the shell exits (its remaining output goes out, then the exit; the PTY is closed, which hangs up whatever
still holds it, as a logout does), or the host cancels (the client went away): every process of the
session gets SIGHUP at once and SIGKILL after ``HANGUP_GRACE`` seconds, so nothing is left.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]
import errno
import fcntl
import os
import pwd
import struct
import sys
import termios

from pyslicer.agent.accounts import DEFAULT_UID
from pyslicer.agent.session import StreamSession
from pyslicer.agent.spawn import DEFAULT_PATH, exit_event, launch_failure, now, watch_exit
from pyslicer.protocol import INITIAL_WINDOW, MAX_PAYLOAD, Channel, Event, FrameType, window_payload

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn


HANGUP_GRACE = 2.0
FALLBACK_SHELLS = ("/bin/bash", "/bin/sh")
MAX_DIMENSION = 0xFFFF  # struct winsize holds unsigned shorts
_RESTORED_SIGNALS: tuple[int, ...] = (_signal.SIGPIPE, _signal.SIGXFSZ)


def set_window_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def dimension(value: object, default: int) -> int:
    """A terminal dimension from untrusted JSON; out of range or not an int -> ValueError."""
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_DIMENSION:
        raise ValueError(f"invalid terminal size {value!r}")
    return value


def find_program(name: str) -> str:
    if "/" in name:
        return name
    for entry in DEFAULT_PATH.split(":"):
        candidate = os.path.join(entry, name)
        if os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def session_members(sid: int) -> list[int]:
    """The pids of every process in session ``sid``."""
    members: list[int] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return members
    for name in names:
        if name.isdigit():
            try:
                if os.getsid(int(name)) == sid:
                    members.append(int(name))
            except OSError:
                continue
    return members


def signal_session(sid: int, signo: int) -> None:
    for pid in session_members(sid):
        try:
            os.kill(pid, signo)
        except OSError:
            continue


class Login:
    """Who the shell runs as, what it runs and where: from a ``ShellRequest`` (untrusted)."""

    def __init__(self, request: dict[str, Any]) -> None:
        uid, gid = request.get("uid"), request.get("gid")
        for value in (uid, gid):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"invalid user or group id {value!r}")
        self.uid: int = DEFAULT_UID if uid is None else uid
        try:
            account: pwd.struct_passwd | None = pwd.getpwuid(self.uid)
        except KeyError:
            account = None
        self.user = account.pw_name if account else ""
        self.gid: int = gid if isinstance(gid, int) else (account.pw_gid if account else self.uid)
        self.home = account.pw_dir if account and account.pw_dir else "/"
        shell = request.get("shell")
        if shell is not None and (not isinstance(shell, str) or not shell or "\0" in shell):
            raise ValueError(f"invalid shell {shell!r}")
        if shell:
            self.shell = find_program(shell)
        else:
            options = ((account.pw_shell,) if account and account.pw_shell else ()) + FALLBACK_SHELLS
            self.shell = next((s for s in options if os.access(s, os.X_OK)), FALLBACK_SHELLS[-1])
        cwd = request.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or "\0" in cwd):
            raise ValueError(f"invalid cwd {cwd!r}")
        self.cwd = cwd or (self.home if os.path.isdir(self.home) else "/")
        term = request.get("term")
        self.term = term if isinstance(term, str) and term and "\0" not in term else "xterm-256color"

    def environment(self) -> dict[str, str]:
        name = self.user or str(self.uid)
        return {
            "TERM": self.term,
            "HOME": self.home,
            "PATH": DEFAULT_PATH,
            "USER": name,
            "LOGNAME": name,
            "SHELL": self.shell,
            "LANG": "C.UTF-8",
        }


def start_login(login: Login, slave: int, master: int) -> int:
    """Fork the shell onto the PTY ``slave``; return its pid. Raises the OSError the child hit (a missing
    shell or cwd: FileNotFoundError naming it)."""
    environ = {os.fsencode(k): os.fsencode(v) for k, v in login.environment().items()}
    argv = [b"-" + os.fsencode(os.path.basename(login.shell))]
    error_read, error_write = os.pipe()  # close-on-exec: EOF as soon as the child execs
    try:
        pid = os.fork()
        if pid == 0:
            _child(login, slave, master, argv, environ, error_write)
        os.close(error_write)
        error_write = -1
        report = b""
        while chunk := os.read(error_read, 64):
            report += chunk
    finally:
        os.close(error_read)
        if error_write >= 0:
            os.close(error_write)
    if not report:
        return pid
    os.waitpid(pid, 0)
    stage, _, code_text = report.decode().partition(":")
    code = int(code_text or 0) or errno.EINVAL
    raise OSError(code, os.strerror(code), login.cwd if stage == "chdir" else login.shell)


def _child(
    login: Login, slave: int, master: int, argv: list[bytes], environ: dict[bytes, bytes], error_write: int
) -> NoReturn:
    stage = "setup"
    code = 0
    try:
        os.close(master)
        os.login_tty(slave)  # a new session, the PTY its controlling terminal and fds 0-2
        for signo in _RESTORED_SIGNALS:
            _signal.signal(signo, _signal.SIG_DFL)
        if login.user:
            os.initgroups(login.user, login.gid)
        else:
            os.setgroups([])
        os.setregid(login.gid, login.gid)
        os.setreuid(login.uid, login.uid)
        stage = "chdir"
        os.chdir(login.cwd)  # as the user, as login does
        stage = "exec"
        os.execve(login.shell, argv, environ)
    except OSError as exc:
        code = exc.errno or errno.EINVAL
    except BaseException:
        code = errno.EINVAL
    finally:
        try:
            os.write(error_write, f"{stage}:{code}".encode())
        finally:
            os._exit(127)


class ShellSession(StreamSession):
    """Runs ``request`` (a ``ShellRequest``, untrusted) for ``stream``."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._credit = 0
        self._read_threshold = MAX_PAYLOAD
        self._pid = 0
        self._master = -1
        self._returncode: int | None = None
        self._input: list[bytes] = []
        self._input_offset = 0

    # -- from the host -------------------------------------------------------------------------
    def start(self) -> None:
        self._guard(self._start)

    def on_data(self, channel: int, data: bytes) -> None:
        if channel != Channel.STDIN or self._done:
            return
        if self._master < 0 or self._returncode is not None:
            self._send(FrameType.WINDOW, window_payload(len(data)))  # nobody will read it: credit back
            return
        self._input.append(data)
        self._guard(self._write_input)

    def on_eof(self, channel: int) -> None:
        """A terminal has no end of input but ^D, which the client sends as data when it means it."""

    def on_window(self, increment: int) -> None:
        self._credit += increment
        self._guard(self._update_reading)

    def on_message(self, body: dict[str, Any]) -> None:
        if body.get("type") != Event.RESIZE or self._master < 0:
            return
        try:
            cols, rows = dimension(body.get("cols"), 80), dimension(body.get("rows"), 24)
        except ValueError as exc:
            print(f"slicer-agent: stream {self.stream}: {exc}", file=sys.stderr)
            return
        self._guard(lambda: set_window_size(self._master, cols, rows))

    def cancel(self) -> None:
        """The host is gone: hang the session up now, kill what ignores that later, send nothing more."""
        self._cancelled = True
        self._close_master()
        if self._pid and self._returncode is None:
            self._hang_up(self._pid)

    def _hang_up(self, sid: int) -> None:
        signal_session(sid, _signal.SIGHUP)
        signal_session(sid, _signal.SIGCONT)  # a stopped job sees the SIGHUP only once it runs
        self._loop.call_later(HANGUP_GRACE, lambda: signal_session(sid, _signal.SIGKILL))

    # -- running -------------------------------------------------------------------------------
    def _guard(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:  # the host must always see an end to the stream
            if self._done or self._cancelled:
                print(f"slicer-agent: stream {self.stream}: {exc!r}", file=sys.stderr)
                return
            self._send_event({"type": Event.ERROR, "error": f"agent: {exc}", "exit_code": 1})
            if self._pid and self._returncode is None:
                self._hang_up(self._pid)
            self._finish()

    def _finish(self) -> None:
        self._done = True
        self._close_master()
        if not self._cancelled:
            self._on_finish(self)

    def _start(self) -> None:
        self._credit = int(self._request.get("window") or INITIAL_WINDOW)
        self._read_threshold = max(1, min(MAX_PAYLOAD, self._credit))
        started_at = now()
        try:
            login = Login(self._request)
            cols = dimension(self._request.get("cols"), 80)
            rows = dimension(self._request.get("rows"), 24)
            master, slave = os.openpty()
            try:
                set_window_size(slave, cols, rows)
                self._pid = start_login(login, slave, master)
            except BaseException:
                os.close(master)
                raise
            finally:
                os.close(slave)
        except (OSError, ValueError) as exc:
            self._fail(*launch_failure("shell", exc, self._request.get("shell")))
            return
        self._master = master
        os.set_blocking(master, False)
        self._send_event({"type": Event.STARTED, "pid": self._pid, "started_at": started_at})
        watch_exit(self._loop, self._pid, self._on_exit)
        self._update_reading()

    def _fail(self, message: str, exit_code: int) -> None:
        self._send_event({"type": Event.ERROR, "error": message, "exit_code": exit_code})
        self._finish()

    def _on_exit(self, returncode: int) -> None:
        self._returncode = returncode
        self._input = []
        if not self._cancelled and not self._done:
            self._guard(self._update_reading)

    # -- output --------------------------------------------------------------------------------
    def _update_reading(self) -> None:
        if self._master < 0 or self._done or self._cancelled:
            return
        if self._credit < self._read_threshold:
            self._loop.remove_reader(self._master)
        elif self._returncode is None:
            self._loop.add_reader(self._master, self._on_readable)
        else:
            self._drain()  # the shell has gone: send what it left, then the exit

    def _on_readable(self) -> None:
        self._guard(self._read_once)

    def _read_once(self) -> None:
        self._read()

    def _read(self) -> bool:
        """One read of the terminal's output; False once nothing more is there (for now, or ever)."""
        if self._master < 0 or self._credit < self._read_threshold:
            return False
        try:
            data = os.read(self._master, min(self._credit, MAX_PAYLOAD))
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: no process holds the terminal any more
                raise
            data = b""
        if not data:
            self._loop.remove_reader(self._master)
            if self._returncode is None:
                return False  # every holder closed it, the shell has not been reaped yet: the exit comes
            self._exit()
            return False
        self._credit -= len(data)
        self._send(FrameType.DATA, data, Channel.STDOUT)
        if self._credit < self._read_threshold:
            self._loop.remove_reader(self._master)
        return True

    def _drain(self) -> None:
        while self._read():
            pass
        if not self._done and self._credit >= self._read_threshold:
            self._exit()  # nothing left to read now: what a background job writes later is not the shell's

    def _exit(self) -> None:
        if self._done or self._returncode is None:
            return
        self._send(FrameType.EOF, flags=Channel.STDOUT)
        self._send_event(exit_event(self._returncode))
        self._finish()

    # -- input ---------------------------------------------------------------------------------
    def _write_input(self) -> None:
        while self._input and self._master >= 0:
            chunk = self._input[0]
            try:
                written = os.write(self._master, memoryview(chunk)[self._input_offset :])
            except BlockingIOError:
                self._loop.add_writer(self._master, self._on_writable)
                return
            except OSError:  # the terminal is gone (EIO): drop the rest, give the credit back
                self._give_back_input()
                return
            self._input_offset += written
            if self._input_offset == len(chunk):
                self._input.pop(0)
                self._input_offset = 0
                self._send(FrameType.WINDOW, window_payload(len(chunk)))
        if self._master >= 0:
            self._loop.remove_writer(self._master)

    def _on_writable(self) -> None:
        self._guard(self._write_input)

    def _give_back_input(self) -> None:
        queued, self._input, self._input_offset = self._input, [], 0
        for chunk in queued:
            self._send(FrameType.WINDOW, window_payload(len(chunk)))
        if self._master >= 0:
            self._loop.remove_writer(self._master)

    def _close_master(self) -> None:
        if self._master >= 0:
            self._loop.forget(self._master)
            os.close(self._master)
            self._master = -1
        self._input = []
