"""Starting commands: what to run (from an exec request) and the spawn itself, without subprocess.

``spawn`` behaves like ``subprocess.Popen(argv, env=..., cwd=..., user=..., group=..., extra_groups=[],
start_new_session=..., close_fds=True)`` and raises the same exceptions for the same failures (a missing
cwd or binary, a permission), so the error frames the host sees are unchanged. When the command runs
as the agent itself (root, no supplementary groups: the usual case) it is one ``posix_spawn`` (a vfork,
no copy of the agent's memory: ~5 ms instead of ~30 ms under TCG); another identity needs ``fork``, to
switch ids before ``execve``. One trace of posix_spawn shows in the child: glibc (2.36) leaves its two
internal signals (32 and 33) ignored; glibc programs install their own handlers for them when needed.

Children are reaped through a pidfd, which becomes readable when the child exits.
"""

from __future__ import annotations

# The C half of `signal`: the same functions and constants, without the enum classes `signal` builds
# (and so without importing enum, a slow import under TCG).
import _signal  # type: ignore[import-not-found]
import errno
import os
import pwd
import time

from pyslicer.protocol import Event

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

    from pyslicer.agent.loop import Loop
    from pyslicer.protocol import ExecExit

SIGKILL: int = _signal.SIGKILL
# Python ignores these; subprocess (restore_signals=True) gives children the default action back.
_RESTORED_SIGNALS: tuple[int, ...] = (_signal.SIGPIPE, _signal.SIGXFSZ)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NOT_THERE = (errno.ENOENT, errno.ENOTDIR)
_REAP_POLL = 0.02  # only without pidfds (a kernel older than 5.3)


def now() -> str:
    """``datetime.now(UTC).isoformat()`` with a ``Z``, without importing datetime."""
    micros = time.time_ns() // 1000
    seconds, micro = divmod(micros, 1_000_000)
    t = time.gmtime(seconds)
    stamp = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{min(t.tm_sec, 59):02d}"
    return f"{stamp}.{micro:06d}Z" if micro else f"{stamp}Z"


_signal_names: dict[int, str] = {}


def signal_name(signo: int) -> str:
    """``signal.Signals(signo).name`` (the same pick among aliases); ``SIGRTMIN+n`` for the unnamed ones."""
    if not _signal_names:
        members = [
            (value, name)
            for name, value in vars(_signal).items()
            if name.isupper() and name.startswith("SIG") and not name.startswith("SIG_")
        ]
        for value, name in sorted(members):
            _signal_names.setdefault(value, name)
    name = _signal_names.get(signo)
    if name is not None:
        return name
    rtmin: int = _signal.SIGRTMIN
    return f"SIGRTMIN+{signo - rtmin}" if signo > rtmin else f"SIG{signo}"


def exit_event(returncode: int) -> ExecExit:
    """The EXIT event for a reaped child: its exit code, or 128 + the signal that ended it, and the signal's name."""
    event: ExecExit = {"type": Event.EXIT, "exit_code": returncode, "ended_at": now()}
    if returncode < 0:
        event["exit_code"] = 128 - returncode
        event["signal"] = signal_name(-returncode)
    return event


def launch_failure(what: str, exc: OSError | ValueError, name: object) -> tuple[str, int]:
    """What a failed start of ``name`` says and the exit code it gets, as a shell would: 127 when it is not there,
    126 when it may not run, else 1. ``what`` names the operation (``exec``, ``shell``)."""
    if isinstance(exc, FileNotFoundError):
        return f"{what}: {exc.filename or name}: not found", 127
    if isinstance(exc, PermissionError):
        return f"{what}: {exc}", 126
    return f"{what}: {exc}", 1


class LaunchError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_SHELL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-")


def shell_quote(word: str) -> str:
    """``shlex.quote`` (shlex imports re)."""
    if not word:
        return "''"
    if all(c in _SHELL_SAFE for c in word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def build_launch(request: dict[str, Any]) -> tuple[list[str], dict[str, str], str, int, int]:
    cmd = request.get("cmd")
    args = request.get("args") or []
    if not isinstance(cmd, str) or not cmd:
        raise LaunchError("cmd is required", 1)
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise LaunchError("args must be a list of strings", 1)
    shell = request.get("shell") or ""
    argv = [shell, "-c", " ".join([cmd, *map(shell_quote, args)])] if shell else [cmd, *args]

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


# -- spawning ----------------------------------------------------------------------------------------


def _encode(value: str) -> bytes:
    encoded = os.fsencode(value)
    if b"\0" in encoded:
        raise ValueError("embedded null byte")
    return encoded


def spawn(
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    stdio: tuple[int | None, int, int],
    *,
    uid: int | None = None,
    gid: int | None = None,
    new_session: bool = False,
) -> int:
    """Start argv with stdio as fds 0, 1, 2 (None: /dev/null); return its pid.

    With uid/gid, the child also drops every supplementary group (``extra_groups=[]``).
    """
    if gid is not None and gid < 0:
        raise ValueError(f"Group ID cannot be negative, got {gid}")
    if uid is not None and uid < 0:
        raise ValueError(f"User ID cannot be negative, got {uid}")
    args = [_encode(a) for a in argv]
    environ: dict[bytes, bytes] = {}
    for key, value in env.items():
        name = _encode(key)
        if b"=" in name:
            raise ValueError("illegal environment variable name")
        environ[name] = _encode(value)
    _encode(cwd)
    # subprocess's PATH search: the child's PATH, every entry tried in order.
    executable = args[0]
    if os.path.dirname(executable):
        candidates = [executable]
    else:
        path = environ.get(b"PATH", os.fsencode(os.defpath))
        candidates = [os.path.join(entry, executable) for entry in path.split(b":")]
    if (uid is None or uid == os.getuid() == os.geteuid()) and (
        gid is None or (gid == os.getgid() == os.getegid() and not os.getgroups())
    ):
        return _posix_spawn(argv[0], args, environ, cwd, candidates, stdio, new_session)
    return _fork_exec(argv[0], args, environ, cwd, candidates, stdio, new_session, uid, gid)


def _exec_error(code: int, filename: str | None) -> OSError:
    # OSError(errno, ...) picks the subclass, as subprocess's re-raise does: FileNotFoundError, ...
    if filename is None:
        return OSError(code, os.strerror(code))
    return OSError(code, os.strerror(code), filename)


_home_fd = -1


def _posix_spawn(
    name: str,
    args: list[bytes],
    environ: dict[bytes, bytes],
    cwd: str,
    candidates: list[bytes],
    stdio: tuple[int | None, int, int],
    new_session: bool,
) -> int:
    global _home_fd
    actions: list[tuple[Any, ...]] = []
    for target, fd in enumerate(stdio):
        if fd is None:
            actions.append((os.POSIX_SPAWN_OPEN, target, "/dev/null", os.O_RDWR, 0))
        else:
            actions.append((os.POSIX_SPAWN_DUP2, fd, target))
    # posix_spawn has no cwd (before glibc's addchdir_np, which Python 3.11 does not offer): the agent is
    # single-threaded, so it changes its own directory around the spawn.
    if _home_fd < 0:
        _home_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    os.chdir(cwd)  # raises an OSError naming cwd, as subprocess does
    try:
        first_error = last_error = 0
        for candidate in candidates:
            try:
                os.stat(candidate)  # skip the PATH entries that do not have it without a spawn each
            except OSError as exc:
                if exc.errno in _NOT_THERE:
                    last_error = exc.errno
                    continue
            try:
                return os.posix_spawn(
                    candidate,
                    args,
                    environ,
                    file_actions=actions,
                    setsigdef=_RESTORED_SIGNALS,
                    setsid=new_session,
                )
            except OSError as exc:
                last_error = exc.errno or errno.EINVAL
                if last_error not in _NOT_THERE and not first_error:
                    first_error = last_error
        raise _exec_error(first_error or last_error or errno.ENOENT, name)
    finally:
        os.fchdir(_home_fd)


def _fork_exec(
    name: str,
    args: list[bytes],
    environ: dict[bytes, bytes],
    cwd: str,
    candidates: list[bytes],
    stdio: tuple[int | None, int, int],
    new_session: bool,
    uid: int | None,
    gid: int | None,
) -> int:
    devnull = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC) if None in stdio else -1
    fds = tuple(devnull if fd is None else fd for fd in stdio)
    error_read, error_write = os.pipe()  # close-on-exec: EOF as soon as the child execs
    try:
        pid = os.fork()
        if pid == 0:
            _child(fds, cwd, new_session, uid, gid, args, environ, candidates, error_write)
        os.close(error_write)
        error_write = -1
        report = b""
        while chunk := os.read(error_read, 64):
            report += chunk
    finally:
        os.close(error_read)
        if error_write >= 0:
            os.close(error_write)
        if devnull >= 0:
            os.close(devnull)
    if not report:
        return pid
    os.waitpid(pid, 0)
    stage, _, code_text = report.decode().partition(":")
    code = int(code_text) or errno.EINVAL
    if stage == "chdir":
        raise _exec_error(code, cwd)
    raise _exec_error(code, name if stage == "exec" else None)


def _child(
    fds: tuple[int, ...],
    cwd: str,
    new_session: bool,
    uid: int | None,
    gid: int | None,
    args: list[bytes],
    environ: dict[bytes, bytes],
    candidates: list[bytes],
    error_write: int,
) -> NoReturn:
    """The forked child, in subprocess's order of steps; reports a failure as ``stage:errno``."""
    stage = "noexec"
    code = 0
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        stage = "chdir"
        os.chdir(cwd)
        stage = "noexec"
        for signo in _RESTORED_SIGNALS:
            _signal.signal(signo, _signal.SIG_DFL)
        if new_session:
            os.setsid()
        if gid is not None or uid is not None:
            os.setgroups([])
        if gid is not None:
            os.setregid(gid, gid)
        if uid is not None:
            os.setreuid(uid, uid)
        stage = "exec"
        first_error = last_error = 0
        for candidate in candidates:
            try:
                os.execve(candidate, args, environ)
            except OSError as exc:
                last_error = exc.errno or errno.EINVAL
                if last_error not in _NOT_THERE and not first_error:
                    first_error = last_error
        code = first_error or last_error
    except OSError as exc:
        code = exc.errno or errno.EINVAL
    except BaseException:
        code = errno.EINVAL
    finally:
        try:
            os.write(error_write, f"{stage}:{code}".encode())
        finally:
            os._exit(255)


# -- reaping -----------------------------------------------------------------------------------------


def watch_exit(loop: Loop, pid: int, on_exit: Callable[[int], None]) -> None:
    """Reap pid when it exits and call on_exit with its returncode (-signo when killed by a signal)."""

    def reap() -> int | None:
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # someone else reaped it; asyncio says 255 then too
            return 255
        return os.waitstatus_to_exitcode(status) if reaped else None

    try:
        pidfd = os.pidfd_open(pid)
    except OSError:

        def poll() -> None:
            returncode = reap()
            if returncode is None:
                loop.call_later(_REAP_POLL, poll)
            else:
                on_exit(returncode)

        loop.call_later(0, poll)
        return

    def on_readable() -> None:
        returncode = reap()
        if returncode is not None:
            loop.forget(pidfd)
            os.close(pidfd)
            on_exit(returncode)

    loop.add_reader(pidfd, on_readable)
