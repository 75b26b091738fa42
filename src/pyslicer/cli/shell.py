"""``slicer vm shell VM`` (and ``slicer shell VM``): a terminal in the VM; ``slicer vm forward VM -L ...``.

The shell puts the local terminal in raw mode (so Ctrl-C, Ctrl-Z and the rest go to the guest as bytes),
forwards window size changes, and restores the terminal on every way out: the remote shell exiting (its exit
code becomes ours), an error, SIGTERM or SIGHUP. Without a terminal on stdin it passes the bytes as they
come and sends ^D at their end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from ._common import Api, api_command

if TYPE_CHECKING:
    from pyslicer.client import ForwardSpec, Shell

EOT = b"\x04"


def _shell_options(func: Any) -> Any:
    for option in reversed(
        [
            click.option("--uid", type=click.IntRange(min=0), help="Run as this uid (default: the guest's user)."),
            click.option("--gid", type=click.IntRange(min=0), help="With this gid (default: the user's group)."),
            click.option("--shell", "shell_path", help="The shell (default: the user's login shell)."),
            click.option("--cwd", help="Start in this directory (default: the user's home)."),
        ]
    ):
        func = option(func)
    return func


@click.command("shell")
@click.argument("hostname")
@_shell_options
@api_command
def vm_shell(
    api: Api, hostname: str, uid: int | None, gid: int | None, shell_path: str | None, cwd: str | None
) -> None:
    """Open a shell in a VM (no SSH, no network route needed). Exits with the shell's exit code."""
    cols, rows = _terminal_size()
    term = os.environ.get("TERM") or None
    session = api.client.shell(hostname, uid=uid, gid=gid, shell=shell_path, cwd=cwd, term=term, cols=cols, rows=rows)
    code = run_terminal(session)
    click.get_current_context().exit(code)


def _terminal_size() -> tuple[int, int]:
    for fd in (sys.stdout.fileno(), sys.stdin.fileno()):
        with contextlib.suppress(OSError, ValueError):
            size = os.get_terminal_size(fd)
            return size.columns, size.lines
    return 80, 24


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """The terminal on ``fd`` in raw mode for the block (nothing when it is not a terminal); restored after
    it however it ends. SIGTERM and SIGHUP end the block through SystemExit, so they restore it too."""
    import termios
    import tty

    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    previous = {signo: signal.getsignal(signo) for signo in (signal.SIGTERM, signal.SIGHUP)}

    def leave(signo: int, _frame: object) -> None:
        raise SystemExit(128 + signo)

    try:
        for signo in previous:
            signal.signal(signo, leave)
        if saved is not None:
            tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
        for signo, handler in previous.items():
            signal.signal(signo, handler)


def run_terminal(session: Shell) -> int:
    """Relay stdin to the shell and its output to stdout until it ends; return its exit code."""
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    wake_read, wake_write = os.pipe()
    failure: list[BaseException] = []

    def relay_output() -> None:
        try:
            while data := session.read():
                _write_all(stdout, data)
        except BaseException as exc:
            failure.append(exc)
        finally:
            os.write(wake_write, b"x")

    previous_winch = signal.getsignal(signal.SIGWINCH)
    signal.signal(signal.SIGWINCH, lambda _signo, _frame: os.write(wake_write, b"w"))
    try:
        with raw_terminal(stdin):
            output = threading.Thread(target=relay_output, name="slicer-shell-output", daemon=True)
            output.start()
            _relay_input(session, stdin, wake_read)
    finally:
        signal.signal(signal.SIGWINCH, previous_winch)
        session.close()
        os.close(wake_read)
        os.close(wake_write)
    if failure:
        raise failure[0]
    return session.exit_code if session.exit_code is not None else 1


def _relay_input(session: Shell, stdin: int, wake: int) -> None:
    import select

    watched = [stdin, wake]
    while True:
        try:
            ready, _, _ = select.select(watched, [], [])
        except InterruptedError:
            continue
        if wake in ready:
            signals = os.read(wake, 64)
            if b"x" in signals:
                return  # the session is over
            if b"w" in signals:
                session.resize(*_terminal_size())
        if stdin in ready:
            data = os.read(stdin, 65536)
            if not data:  # stdin is not a terminal and has ended: ^D tells the shell
                session.write(EOT)
                watched = [wake]
                continue
            session.write(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@click.command("forward")
@click.argument("hostname")
@click.option(
    "-L",
    "specs",
    multiple=True,
    required=True,
    metavar="[LOCAL_ADDR:]LOCAL_PORT:HOST:PORT",
    help="Forward a local port (or a local unix socket path) to HOST:PORT (or a socket path) inside the VM. "
    "Repeatable.",
)
@api_command
def vm_forward(api: Api, hostname: str, specs: tuple[str, ...]) -> None:
    """Forward local ports into a VM until stopped (Ctrl-C). No guest networking is needed."""
    from pyslicer.client import SlicerUpstreamError

    def report(spec: ForwardSpec, exc: Exception) -> None:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        what = "cannot connect" if isinstance(exc, SlicerUpstreamError) else "failed"
        click.echo(f"forward {spec.local} -> {spec.upstream}: {what}: {message}", err=True)

    try:
        forwarder = api.client.forward(hostname, list(specs), on_error=report)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="-L") from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen: {exc.strerror or exc}") from None
    previous = signal.signal(signal.SIGTERM, lambda _signo, _frame: forwarder.close())
    try:
        for listener in forwarder.listeners:
            click.echo(f"Forwarding {listener.local} -> {hostname}:{listener.upstream}", err=True)
        forwarder.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        forwarder.close()
        signal.signal(signal.SIGTERM, previous)
