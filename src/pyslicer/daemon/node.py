"""One VM: its record, its QEMU process, its agent link and its lifecycle state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyslicer.daemon.agent_link import AgentLink
from pyslicer.daemon.exec import ExecProcess, ExecRequest
from pyslicer.daemon.guest_input import int_or, str_or
from pyslicer.daemon.lifecycle import NodeState, check_transition, require_running
from pyslicer.daemon.registry import NodeRecord
from pyslicer.errors import AgentError, Conflict, HypervisorError, SlicerError, Timeout
from pyslicer.protocol import Op
from pyslicer.vmm import VMProcess, VMSpec

if TYPE_CHECKING:
    from pyslicer import protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AgentHealth:
    """What the agent says of itself, rebuilt from the fields we know (the guest's answer is input)."""

    hostname: str
    agent_uptime: int  # nanoseconds (Go's time.Duration)
    agent_version: str
    system_uptime: int
    userdata_ran: bool
    userdata_exit_code: int | None = None

    @classmethod
    def from_guest(cls, body: dict[str, Any]) -> AgentHealth:
        return cls(
            hostname=str_or(body.get("hostname"), ""),
            agent_uptime=max(0, int_or(body.get("agent_uptime"), 0)),
            agent_version=str_or(body.get("agent_version"), ""),
            system_uptime=max(0, int_or(body.get("system_uptime"), 0)),
            userdata_ran=body.get("userdata_ran") is True,
            userdata_exit_code=int_or(body.get("userdata_exit_code"), None),
        )


class Node:
    def __init__(self, record: NodeRecord, spec: VMSpec) -> None:
        self.record = record
        self.spec = spec
        self.state = NodeState.CREATING
        self.vm: VMProcess | None = None
        self.link: AgentLink | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._userdata_sent = False
        self._stopping = False
        self._changed = asyncio.Event()
        self.lifecycle = asyncio.Lock()  # one pause, resume, shutdown or relaunch at a time
        self.on_stopped: Callable[[Node], Awaitable[None]] | None = None
        # Run on every READY (a new agent, a reconnect) before userdata is handed over: the fleet syncs the
        # guest's secrets here, so a userdata script and the first request after a wait find them in place.
        self.on_agent_ready: Callable[[Node], Awaitable[None]] | None = None
        self._prepared = asyncio.Event()  # on_agent_ready has run for the agent connected now
        # A node restored from a template takes its own identity at its first READY, before anyone sees it ready.
        self.identity: protocol.IdentityRequest | None = None

    @property
    def hostname(self) -> str:
        return self.record.hostname

    def transition(self, target: NodeState) -> None:
        """Move to ``target``. Raises Conflict, naming the current state, when the lifecycle forbids it."""
        check_transition(self.hostname, self.state, target)
        log.info("%s: %s -> %s", self.hostname, self.state.value, target.value)
        self.state = target
        self._changed.set()
        self._changed = asyncio.Event()

    # -- running -------------------------------------------------------------------------------
    def attach(self, vm: VMProcess, *, paused: bool = False) -> None:
        """Take over a started (or adopted) VM: connect to its agent and watch its process. Raises Conflict
        unless the node is being created or was stopped."""
        self.transition(NodeState.PAUSED if paused else NodeState.BOOTING)
        self.vm = vm
        self._stopping = False
        self._prepared.clear()  # (set by an earlier run's agent)
        self.link = AgentLink(self.spec.agent_socket, self.hostname, on_ready=self._on_agent_ready)
        if paused:
            self.link.hold_clock()
        self.link.start()
        self._tasks = [asyncio.get_running_loop().create_task(self._watch_process(vm), name=f"{self.hostname}-process")]

    def _on_agent_ready(self) -> None:
        if self.state is NodeState.BOOTING:
            self.transition(NodeState.RUNNING)
        self._prepared.clear()
        self._tasks = [task for task in self._tasks if not task.done()]  # a READY comes at every reconnect
        self._tasks.append(asyncio.get_running_loop().create_task(self._prepare_guest(), name=f"{self.hostname}-ready"))

    async def _prepare_guest(self) -> None:
        if self.identity is not None and not await self._take_identity(self.identity):
            return
        try:
            if self.on_agent_ready is not None:
                await self.on_agent_ready(self)
        except Exception:  # a failed hook must not hold back userdata or the waiters
            log.exception("%s: preparing the guest failed", self.hostname)
        finally:
            self._prepared.set()
        if not self._userdata_sent:
            await self._hand_over_userdata()

    async def _take_identity(self, request: protocol.IdentityRequest) -> bool:
        """Whether the guest took it; one that cannot is ended (it would pass for its template's twin)."""
        try:
            if self.link is None:
                raise AgentError("no agent")
            answer = await self.link.call(request, timeout=30)
            if answer.get("type") != "done":
                raise AgentError(str_or(answer.get("error"), "no answer"))
        except SlicerError as exc:
            log.error("%s: cannot give the restored guest its identity: %s; ending it", self.hostname, exc)
            if self.vm is not None:
                await self.vm.kill()
            return False
        self.identity = None
        return True

    async def _hand_over_userdata(self) -> None:
        if self.link is None:
            return
        try:
            # The agent runs it once per disk (a marker file): an adopted or relaunched VM does not run it again.
            request: protocol.UserdataRequest = {"op": Op.USERDATA, "script": self.record.userdata}
            await self.link.call(request)
            self._userdata_sent = True
        except SlicerError as exc:
            log.warning("%s: could not hand over userdata: %s", self.hostname, exc)

    async def _watch_process(self, vm: VMProcess) -> None:
        await vm.wait()
        if self.state is NodeState.DELETED or self._stopping:
            return
        log.warning("%s: QEMU exited (the guest powered off, or it was killed)", self.hostname)
        await self._release()
        self.vm = None
        await vm.kill()  # closes what watched it
        self.transition(NodeState.STOPPED)
        if self.on_stopped is not None:
            await self.on_stopped(self)

    async def _release(self) -> None:
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        if self.link is not None:
            await self.link.close()
            self.link = None

    async def _end_tasks(self) -> None:
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # a broken helper task must never keep a VM from being stopped
                log.exception("%s: task %s failed", self.hostname, task.get_name())
        self._tasks = []

    async def pause(self) -> None:
        """Stop the guest's vCPUs; its processes and memory stay. Raises Conflict unless it is running
        (or booting), HypervisorError when QEMU does not do it."""
        async with self.lifecycle:
            check_transition(self.hostname, self.state, NodeState.PAUSED, action="pause")
            assert self.vm is not None
            await self.vm.pause()
            self.transition(NodeState.PAUSED)
            if self.link is not None:
                self.link.hold_clock()

    async def resume(self) -> None:
        """Run a paused guest again and set its clock. Raises Conflict unless it is paused, HypervisorError
        when QEMU does not do it."""
        async with self.lifecycle:
            if self.state is not NodeState.PAUSED:
                raise Conflict(f"cannot resume {self.hostname}: it is {self.state.value}", code="invalid_state")
            assert self.vm is not None
            await self.vm.resume()
            self.transition(NodeState.RUNNING)
            if self.link is not None:
                self.link.release_clock()  # the guest's clock stood still while it was paused

    async def suspend(self, state: Path) -> None:
        """Save the guest's whole state to ``state``, then end its VM (its memory released): it ends Suspended.
        Raises Conflict unless it is running, SnapshotError when the state cannot be saved (the guest runs on;
        or, when its QEMU died meanwhile, it is Stopped as any VM whose QEMU ends)."""
        async with self.lifecycle:
            check_transition(self.hostname, self.state, NodeState.SUSPENDED, action="suspend")
            assert self.vm is not None
            if self.link is not None:
                self.link.hold_clock()  # its vCPUs stop while the state is saved
            try:
                await self.vm.save_state(state)
            except BaseException:
                if self.link is not None:
                    self.link.release_clock()
                raise
            await self.stop()
            self.transition(NodeState.SUSPENDED)

    async def shut_down(self, graceful_timeout: float) -> None:
        """Stop the guest cleanly (its filesystems unmounted) and end Stopped; a guest that has not gone
        within ``graceful_timeout`` is killed. Raises Conflict when it is not running or paused."""
        async with self.lifecycle:
            if self.state is NodeState.SUSPENDED:
                raise Conflict(
                    f"cannot shut down {self.hostname}: it is Suspended; restore it first", code="invalid_state"
                )
            check_transition(self.hostname, self.state, NodeState.STOPPED, action="shut down")
            if self.state is NodeState.PAUSED and self.vm is not None:
                with contextlib.suppress(HypervisorError):
                    await self.vm.resume()  # a paused guest cannot shut itself down
            await self.stop(graceful_timeout=graceful_timeout)
            self.transition(NodeState.STOPPED)

    async def stop(self, *, graceful_timeout: float = 0) -> None:
        """Stop the VM and release everything that belongs to its run (not its disk); the state is the caller's.

        With a graceful timeout the guest first shuts down cleanly (its filesystem unmounted), so a
        persistent disk is consistent; the process is killed when that does not happen in time. Raises nothing."""
        self._stopping = True
        vm, self.vm = self.vm, None
        if graceful_timeout and vm is not None and self.link is not None and self.link.ready.is_set():
            try:
                # QEMU runs with -no-reboot: a guest that reboots ends its QEMU (Slicer's graceful stop).
                reboot: protocol.ExecRequest = {"op": Op.EXEC, "cmd": "/usr/local/sbin/busybox", "args": ["reboot"]}
                self.link.open(reboot)
                await asyncio.wait_for(vm.wait(), graceful_timeout)
            except (AgentError, TimeoutError):
                log.warning("%s: no clean shutdown within %gs; killing it", self.hostname, graceful_timeout)
        await self._release()
        if vm is not None:
            await vm.kill()
        await self._end_tasks()

    async def detach(self) -> None:
        """Let go of the VM and leave it running, for the next daemon on this data dir to adopt. Raises nothing."""
        self._stopping = True
        vm, self.vm = self.vm, None
        await self._release()
        if vm is not None:
            await vm.detach()
        await self._end_tasks()

    # -- agent ---------------------------------------------------------------------------------
    def agent(self) -> AgentLink:
        """The link to a ready agent. Raises Conflict when the VM is not running, AgentError when its
        agent is not reachable (yet)."""
        require_running(self.hostname, self.state)
        if self.link is None or not self.link.ready.is_set():
            raise AgentError(f"agent on {self.hostname} is not reachable yet", code="agent_unavailable")
        return self.link

    async def health(self) -> AgentHealth:
        """Ask the agent. Raises Conflict when the VM is not running, AgentError when the agent does not answer."""
        request: protocol.HealthRequest = {"op": Op.HEALTH, "time": time.time()}
        return AgentHealth.from_guest(await self.agent().call(request, timeout=5))

    def exec(self, request: ExecRequest) -> ExecProcess:
        """Start a command. Raises Conflict when the VM is not running, AgentError when its agent is not
        reachable, InvalidArgument when the request is too large for one frame."""
        return ExecProcess(self.agent().open(request.to_wire()))

    async def wait_ready(self, timeout: float, *, userdata: bool) -> None:
        """Block until the agent answers (and, if asked, userdata has run). Raises Timeout, or AgentError
        when the VM stops first."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self.state not in (NodeState.BOOTING, NodeState.RUNNING, NodeState.CREATING):
                        raise AgentError(f"{self.hostname} is {self.state.value}", code="vm_stopped")
                    link = self.link
                    if link is not None and link.ready.is_set():
                        await self._prepared.wait()
                        if not userdata:
                            return
                        with contextlib.suppress(AgentError):
                            if (await self.health()).userdata_ran:
                                return
                        await asyncio.sleep(0.2)
                        continue
                    waiters = [asyncio.ensure_future(self._changed.wait())]
                    if link is not None:
                        waiters.append(asyncio.ensure_future(link.ready.wait()))
                    try:
                        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for waiter in waiters:
                            waiter.cancel()
        except TimeoutError:
            what = "userdata to finish" if userdata else "the agent"
            raise Timeout(f"timed out after {timeout:g}s waiting for {what} on {self.hostname}") from None
