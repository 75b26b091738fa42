"""Following the host's wall clock.

A guest's clock starts from the (second-resolution) RTC and, under TCG, drifts; the host sends its time in
CLOCK frames: once when it sees READY (before it sends any request, so the first exec already has the
host's time) and then every few seconds. The agent steps CLOCK_REALTIME to it when the two are further apart
than ``TOLERANCE_NS``; nearer than that, the frame's own transit time would be most of the difference.
"""

from __future__ import annotations

import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

TOLERANCE_NS = 10_000_000


def set_realtime(time_ns: int) -> None:
    time.clock_settime_ns(time.CLOCK_REALTIME, time_ns)


class Clock:
    """Steps the clock with ``set_time`` (None: leave it alone, as on a test host that is not ours)."""

    def __init__(
        self,
        set_time: Callable[[int], None] | None = set_realtime,
        read_time: Callable[[], int] = time.time_ns,
    ) -> None:
        self._set_time = set_time
        self._read_time = read_time
        self.steps = 0

    def follow(self, host_ns: int) -> bool:
        """Take the host's time when ours is off by more than the tolerance; True when the clock was set."""
        if self._set_time is None or abs(self._read_time() - host_ns) <= TOLERANCE_NS:
            return False
        try:
            self._set_time(host_ns)
        except OSError as exc:  # not allowed (not root): keep the clock we have, and stop trying
            print(f"slicer-agent: cannot set the clock: {exc}", file=sys.stderr)
            self._set_time = None
            return False
        self.steps += 1
        return True
