"""VM processes that outlive the daemon: known by PID and start time, watched and signalled through a pidfd.

A VMM is not the daemon's child for long (QEMU daemonizes, and a restarted daemon adopts the VMMs of the one
before it), so it is never waited for as a child: a pidfd becomes readable when the process exits, and signals
sent through it cannot reach another process that reused the PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from dataclasses import dataclass
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """A process as the kernel tells it apart from any later one with the same PID."""

    pid: int
    start_time: int  # clock ticks after boot: /proc/<pid>/stat field 22

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        """The identity of the live process ``pid``; None when there is none (or only its zombie)."""
        started = start_time(pid)
        return None if started is None else cls(pid, started)

    def is_alive(self) -> bool:
        return start_time(self.pid) == self.start_time

    def command_line(self) -> list[str]:
        """Its arguments; empty when it is gone."""
        try:
            raw = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return []
        return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or parentheses.
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def become_subreaper() -> None:
    """Orphaned descendants (a daemonized VMM) are reparented to this process, which then reaps them, rather than
    to an init that may not."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1)


class ProcessHandle:
    """A process watched through a pidfd, whoever its parent is."""

    def __init__(self, identity: ProcessIdentity, pidfd: int) -> None:
        self.identity = identity
        self._pidfd: int | None = pidfd
        self._exited = asyncio.Event()

    @classmethod
    def open(cls, identity: ProcessIdentity) -> ProcessHandle:
        """Raises ProcessLookupError when that process is gone (its PID may belong to another one now)."""
        pidfd = os.pidfd_open(identity.pid)
        if not identity.is_alive():  # checked after opening: the pidfd now holds this very process
            os.close(pidfd)
            raise ProcessLookupError(identity.pid)
        handle = cls(identity, pidfd)
        asyncio.get_running_loop().add_reader(pidfd, handle._on_exit)
        return handle

    @property
    def pid(self) -> int:
        return self.identity.pid

    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    def _on_exit(self) -> None:
        if self._pidfd is None:
            return
        asyncio.get_running_loop().remove_reader(self._pidfd)
        with contextlib.suppress(ChildProcessError, OSError):  # reaped only if it was reparented to us
            os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
        self._exited.set()

    async def wait(self) -> None:
        """Return once the process has exited. Raises nothing."""
        await self._exited.wait()

    def send_signal(self, sig: signal.Signals) -> None:
        """Signal the process; nothing happens when it has exited. Raises nothing."""
        if self._pidfd is not None and not self.exited:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def close(self) -> None:
        """Stop watching (the process is left as it is)."""
        if self._pidfd is not None:
            if not self.exited:
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
