"""The node lifecycle: every state and every allowed transition, in one place."""

from __future__ import annotations

import enum

from pyslicer.errors import Conflict


class NodeState(enum.StrEnum):
    CREATING = "Creating"
    BOOTING = "Booting"
    RUNNING = "Running"
    PAUSED = "Paused"
    SUSPENDED = "Suspended"
    STOPPED = "Stopped"
    DELETED = "Deleted"

    @property
    def api_status(self) -> str:
        # Clients know Running, Paused and Stopped; a booting VM is a running process.
        return "Running" if self is NodeState.BOOTING else self.value


TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    # A VM adopted from an earlier daemon may be found paused.
    # (Suspended: found so by a restarted daemon.)
    NodeState.CREATING: frozenset(
        {NodeState.BOOTING, NodeState.PAUSED, NodeState.SUSPENDED, NodeState.STOPPED, NodeState.DELETED}
    ),
    NodeState.BOOTING: frozenset({NodeState.RUNNING, NodeState.PAUSED, NodeState.STOPPED, NodeState.DELETED}),
    NodeState.RUNNING: frozenset({NodeState.PAUSED, NodeState.SUSPENDED, NodeState.STOPPED, NodeState.DELETED}),
    NodeState.PAUSED: frozenset({NodeState.RUNNING, NodeState.STOPPED, NodeState.DELETED}),
    # Restored (booting from its state), or Stopped when that state cannot be loaded.
    NodeState.SUSPENDED: frozenset({NodeState.BOOTING, NodeState.STOPPED, NodeState.DELETED}),
    NodeState.STOPPED: frozenset({NodeState.BOOTING, NodeState.DELETED}),
    NodeState.DELETED: frozenset(),
}

WHY_NOT = {
    NodeState.PAUSED: "is paused; resume it first",
    NodeState.STOPPED: "is stopped",
    NodeState.DELETED: "has been deleted",
    NodeState.SUSPENDED: "is suspended; restore it first",
    NodeState.CREATING: "is still being created",
}


def check_transition(hostname: str, current: NodeState, target: NodeState, *, action: str = "") -> None:
    """Raises Conflict, naming the current state (and the action refused, when given), unless ``current`` may
    become ``target``."""
    if target not in TRANSITIONS[current]:
        if action:
            raise Conflict(f"cannot {action} {hostname}: it is {current.value}", code="invalid_state")
        raise Conflict(
            f"{hostname} {WHY_NOT.get(current, f'is {current.value}')}: cannot become {target.value}",
            code="invalid_state",
        )


def require_running(hostname: str, current: NodeState) -> None:
    """Agent calls need a running guest (a booting one answers once its agent is up)."""
    if current not in (NodeState.RUNNING, NodeState.BOOTING):
        raise Conflict(f"{hostname} {WHY_NOT.get(current, f'is {current.value}')}", code="invalid_state")
