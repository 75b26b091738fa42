"""Expiry: a VM tagged ``expires_at=<RFC 3339>`` is removed when that time passes.

The tag is the one truth (a ``ttl`` at create becomes one), so a deadline survives daemon restarts with the
record. The reaper is one task that sleeps until the earliest deadline, or until it is told that tags changed;
it never polls on a short tick. Wall-clock deadlines and a monotonic sleep can drift apart (a clock step), so
no sleep is longer than ``MAX_SLEEP_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Awaitable, Callable, Iterable

from pyslicer.daemon.lifecycle import NodeState
from pyslicer.daemon.node import Node
from pyslicer.daemon.tags import expires_at_of, expires_tag
from pyslicer.durations import parse_positive_duration

log = logging.getLogger(__name__)

MAX_SLEEP_SECONDS = 60.0
UNSETTLED = frozenset({NodeState.CREATING, NodeState.BOOTING})


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def ttl_tag(ttl: str, now: datetime.datetime | None = None) -> str:
    """The ``expires_at=`` tag for a ``ttl`` (a Go duration) from now. Raises InvalidArgument (code
    ``invalid_ttl``) for text Go would not parse, or a duration that is not positive."""
    seconds = parse_positive_duration(ttl, "ttl")
    return expires_tag((now or utc_now()) + datetime.timedelta(seconds=seconds))  # Go caps it at ~292 years


def deadline_of(node: Node) -> datetime.datetime | None:
    """When the node expires; None when it does not (no tag, or a service from the config)."""
    if node.record.protected:
        return None
    return expires_at_of(node.record.tags)


class ExpiryReaper:
    """Removes expired nodes through ``remove`` (the daemon's normal destroy path; False when it found the
    node kept after all: re-tagged or deleted meanwhile).

    ``nodes`` gives the nodes to look at; ``creating`` says whether a create is in flight, during which a
    node that has not settled yet (creating, booting) is left for later: removing it would pull the VM from
    under a create still waiting for its agent. ``changed()`` wakes the reaper to look again."""

    def __init__(
        self,
        nodes: Callable[[], Iterable[Node]],
        remove: Callable[[Node], Awaitable[bool]],
        *,
        creating: Callable[[], bool] = lambda: False,
        clock: Callable[[], datetime.datetime] = utc_now,
    ) -> None:
        self._nodes = nodes
        self._remove = remove
        self._creating = creating
        self._clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="expiry-reaper")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def now(self) -> datetime.datetime:
        return self._clock()

    def changed(self) -> None:
        """Look again now: a tag changed, a node came or went, or a create ended."""
        self._wake.set()

    def due(self, now: datetime.datetime) -> tuple[list[Node], datetime.datetime | None]:
        """The nodes to remove now, and the next deadline after them (None: nothing is waiting)."""
        expired: list[Node] = []
        upcoming: datetime.datetime | None = None
        creating = self._creating()
        for node in list(self._nodes()):
            deadline = deadline_of(node)
            if deadline is None or node.state is NodeState.DELETED:
                continue
            if deadline <= now and not (creating and node.state in UNSETTLED):
                expired.append(node)
            elif deadline > now and (upcoming is None or deadline < upcoming):
                upcoming = deadline
        return expired, upcoming

    async def reap_once(self) -> datetime.datetime | None:
        """Remove what is due; the next deadline. A removal that fails is logged and tried again later."""
        now = self._clock()
        expired, upcoming = self.due(now)
        for node in expired:
            deadline = deadline_of(node)
            try:
                removed = await self._remove(node)
            except Exception:
                log.exception("%s: removing the expired VM failed", node.hostname)
                retry = now + datetime.timedelta(seconds=MAX_SLEEP_SECONDS)
                upcoming = retry if upcoming is None else min(upcoming, retry)
            else:
                if removed:
                    log.info("%s: removed (expired at %s)", node.hostname, deadline.isoformat() if deadline else "?")
        return upcoming

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            upcoming = await self.reap_once()
            timeout = None
            if upcoming is not None:
                timeout = min(MAX_SLEEP_SECONDS, max(0.0, (upcoming - self._clock()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
