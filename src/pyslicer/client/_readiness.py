"""Readiness polling (``wait_ready``): the clock, the back-off and the verdicts, without the I/O.

The clients send the health requests and do the sleeping; ``ReadyPoll`` says whether an answer means ready,
whether an error is worth waiting through, and how long to wait next.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyslicer.durations import format_go_duration
from pyslicer.errors import SlicerError

from ._responses import FATAL_READY_STATUSES
from .errors import SlicerAPIError, SlicerConnectionError, SlicerTimeoutError

if TYPE_CHECKING:
    from .models import AgentHealth


@dataclass(slots=True)
class ReadyPoll:
    """The clock and verdicts of ``wait_ready``; the clients supply the requests and the sleeping."""

    hostname: str
    timeout: float
    userdata: bool
    interval: float = 0.1
    max_interval: float = 1.0
    deadline: float = 0.0
    last: str | None = None

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.timeout

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def request_timeout(self) -> float:
        """The read timeout of the next health request: what is left, but at least a second."""
        return max(self.remaining(), 1.0)

    def ready(self, health: AgentHealth) -> bool:
        if not health.agent_up:
            self.last = "agent not up yet"
            return False
        if self.userdata and not health.userdata_ran:
            self.last = "userdata has not finished"
            return False
        return True

    def failed(self, exc: SlicerError) -> None:
        """Re-raise errors that waiting cannot fix; remember the rest for the timeout message."""
        if isinstance(exc, SlicerAPIError) and exc.status in FATAL_READY_STATUSES:
            raise exc
        if isinstance(exc, SlicerConnectionError):
            raise exc
        self.last = exc.message

    def next_delay(self) -> float:
        """How long to sleep before the next try; raises ``SlicerTimeoutError`` when the time is up."""
        remaining = self.remaining()
        if remaining <= 0:
            detail = f" ({self.last})" if self.last else ""
            what = "agent and userdata" if self.userdata else "agent"
            raise SlicerTimeoutError(
                f"{self.hostname}: {what} not ready after {format_go_duration(self.timeout)}{detail}"
            )
        delay = min(self.interval, remaining)
        self.interval = min(self.interval * 2, self.max_interval)
        return delay
