"""The agent's event loop: one thread, epoll over non-blocking fds, and a few timers. Nothing else.

Callbacks run to completion; a callback that closes an fd must ``forget`` it first. A callback may be
woken with nothing to do (an fd number reused within one batch of events): every handler tolerates
``BlockingIOError``.
"""

from __future__ import annotations

import select
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_READABLE = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
_WRITABLE = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR


class Timer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._readers: dict[int, Callable[[], None]] = {}
        self._writers: dict[int, Callable[[], None]] = {}
        self._masks: dict[int, int] = {}
        self._timers: list[Timer] = []

    # -- fds -----------------------------------------------------------------------------------
    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._readers[fd] = callback
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._update(fd)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        self._writers[fd] = callback
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    def forget(self, fd: int) -> None:
        """Stop watching fd (call before closing it)."""
        self._readers.pop(fd, None)
        self._writers.pop(fd, None)
        self._update(fd)

    def _update(self, fd: int) -> None:
        # An fd nobody waits on is unregistered, not left with an empty mask: epoll reports HUP and ERR
        # regardless of the mask, which would make a paused pipe (no credit) or a disconnected port spin.
        mask = (_IN if fd in self._readers else 0) | (_OUT if fd in self._writers else 0)
        old = self._masks.get(fd, 0)
        if mask == old:
            return
        if not mask:
            del self._masks[fd]
            self._epoll.unregister(fd)
        elif old:
            self._masks[fd] = mask
            self._epoll.modify(fd, mask)
        else:
            self._masks[fd] = mask
            self._epoll.register(fd, mask)

    # -- timers --------------------------------------------------------------------------------
    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + delay, callback)
        self._timers.append(timer)
        return timer

    def _run_timers(self) -> float:
        """Run what is due; return the seconds until the next timer, or -1 when there is none."""
        now = time.monotonic()
        due = [t for t in self._timers if t.when <= now or t.cancelled]
        if due:
            self._timers = [t for t in self._timers if t.when > now and not t.cancelled]
            for timer in due:
                if not timer.cancelled:
                    timer.callback()
            now = time.monotonic()
        if not self._timers:
            return -1.0
        return max(0.0, min(t.when for t in self._timers) - now)

    # -- running -------------------------------------------------------------------------------
    def run(self) -> None:
        while True:
            timeout = self._run_timers()
            for fd, events in self._epoll.poll(timeout):
                if events & _READABLE:
                    callback = self._readers.get(fd)
                    if callback is not None:
                        callback()
                if events & _WRITABLE:
                    callback = self._writers.get(fd)
                    if callback is not None:
                        callback()
