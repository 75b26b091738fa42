"""Shell: a login shell on a PTY in the guest, as a typed session (bytes in and out, resizes, an exit).

The agent's stream carries the terminal's bytes under the usual credit windows; output credit goes back to
the guest as the consumer comes back for the next event, so a slow client holds back only its own shell.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field

from pyslicer.daemon.agent_link import AgentStream, Message, Output
from pyslicer.daemon.exec import ExecFailed, ExecStarted, UserId, event_from_message
from pyslicer.errors import AgentError, InvalidArgument, NotFound, PermissionDenied
from pyslicer.protocol import Event, Op

if TYPE_CHECKING:
    from pyslicer import protocol

MAX_DIMENSION = 0xFFFF  # struct winsize holds unsigned shorts
START_TIMEOUT = 30.0
Dimension = Annotated[int, Field(ge=0, le=MAX_DIMENSION)]


class ShellRequest(BaseModel):
    """Who the shell runs as, what it runs and where."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    uid: UserId = None
    gid: UserId = None
    shell: str | None = Field(default=None, description="the shell (default: the user's login shell, or /bin/bash)")
    cwd: str | None = Field(default=None, description="working directory (default: the user's home)")
    cols: Dimension = Field(default=80, description="the terminal's width until the client sends its size")
    rows: Dimension = Field(default=24, description="the terminal's height until the client sends its size")
    term: str = Field(default="xterm-256color", min_length=1, max_length=64, description="TERM in the shell")

    def to_wire(self) -> protocol.ShellRequest:
        return {
            "op": Op.SHELL,
            "uid": self.uid,
            "gid": self.gid,
            "shell": self.shell or None,
            "cwd": self.cwd or None,
            "cols": self.cols,
            "rows": self.rows,
            "term": self.term,
        }


@dataclass(frozen=True, slots=True)
class ShellOutput:
    data: bytes


@dataclass(frozen=True, slots=True)
class ShellExited:
    exit_code: int
    signal: str | None = None


ShellEvent = ShellOutput | ShellExited


class ShellSession:
    """A shell running in a guest. Iterate ``events()`` once; the last event is ShellExited.

    Iteration raises AgentError when the agent is lost mid-session."""

    def __init__(self, stream: AgentStream, started: ExecStarted) -> None:
        self._stream = stream
        self.pid = started.pid

    @classmethod
    async def open(cls, stream: AgentStream) -> ShellSession:
        """Wait for the shell to start. Raises NotFound (code ``shell_not_found``) for a missing shell or
        cwd, PermissionDenied for one that cannot be run, InvalidArgument for a request the guest refused,
        AgentError when the agent does not answer or goes away."""
        try:
            async with asyncio.timeout(START_TIMEOUT):
                async for event in stream:
                    if isinstance(event, Message):
                        typed = event_from_message(event.body)
                        if isinstance(typed, ExecStarted):
                            return cls(stream, typed)
                        if isinstance(typed, ExecFailed):
                            raise _start_error(typed)
        except TimeoutError:
            stream.cancel()
            raise AgentError(f"the shell did not start within {START_TIMEOUT:g}s") from None
        except BaseException:
            stream.cancel()
            raise
        raise AgentError("the agent ended the shell before it started")

    async def events(self) -> AsyncIterator[ShellEvent]:
        async for event in self._stream:
            if isinstance(event, Output):
                yield ShellOutput(event.data)
                self._stream.consumed(len(event.data))
            elif isinstance(event, Message):
                typed = event_from_message(event.body)
                if typed is not None and not isinstance(typed, ExecStarted):
                    exited = getattr(typed, "signal", None)
                    yield ShellExited(typed.exit_code, exited)
                    return
        yield ShellExited(1, None)  # cancelled

    async def write(self, data: bytes) -> None:
        """Keystrokes for the terminal, sent as the guest's credit allows. Raises nothing."""
        await self._stream.write(data)

    def resize(self, cols: int, rows: int) -> None:
        """Set the terminal's size. Raises InvalidArgument for a size out of range."""
        if not (0 <= cols <= MAX_DIMENSION and 0 <= rows <= MAX_DIMENSION):
            raise InvalidArgument(f"terminal size {cols}x{rows} is out of range", code="invalid_size")
        self._stream.send_message({"type": Event.RESIZE, "cols": cols, "rows": rows})

    def hang_up(self) -> None:
        """End the session: the guest's session gets SIGHUP, and SIGKILL for what is left. Safe to repeat."""
        self._stream.cancel()


def _start_error(failed: ExecFailed) -> Exception:
    if failed.exit_code == 127:
        return NotFound(failed.error, code="shell_not_found")
    if failed.exit_code == 126:
        return PermissionDenied(failed.error, code="shell_not_executable")
    return InvalidArgument(failed.error, code="shell_failed")
