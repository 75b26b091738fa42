"""``slicer vm pause|resume|suspend|restore|shutdown|relaunch``: a VM's lifecycle."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

import click

from pyslicer.durations import format_go_duration

from ._common import Api, Duration, api_command, wait_for

P = ParamSpec("P")
R = TypeVar("R")

LIFECYCLE_COMMANDS: list[click.Command] = []


def _lifecycle(func: click.Command) -> click.Command:
    LIFECYCLE_COMMANDS.append(func)
    return func


def _wait_options(func: Callable[P, R]) -> Callable[P, R]:
    """``--wait`` and ``--timeout`` of the commands that bring a VM back (restore, relaunch)."""
    func = click.option("--timeout", type=Duration(), default="5m", show_default=True, help="How long to wait.")(func)
    return click.option("--wait", type=click.Choice(["agent", "userdata", "none"]), default="agent", show_default=True)(
        func
    )


@_lifecycle
@click.command("pause")
@click.argument("hostname")
@api_command
def vm_pause(api: Api, hostname: str) -> None:
    """Pause a VM: its vCPUs stop, its processes and memory stay."""
    api.emit(api.client.pause(hostname), lambda: f"{hostname} paused")


@_lifecycle
@click.command("resume")
@click.argument("hostname")
@api_command
def vm_resume(api: Api, hostname: str) -> None:
    """Resume a paused VM."""
    api.emit(api.client.resume(hostname), lambda: f"{hostname} resumed")


@_lifecycle
@click.command("suspend")
@click.argument("hostname")
@api_command
def vm_suspend(api: Api, hostname: str) -> None:
    """Suspend a VM to disk: its memory and devices are saved, its VM process ends (restore brings it back)."""
    api.emit(api.client.suspend(hostname), lambda: f"{hostname} suspended")


@_lifecycle
@click.command("restore")
@click.argument("hostname")
@_wait_options
@api_command
def vm_restore(api: Api, hostname: str, wait: str, timeout: float) -> None:
    """Restore a suspended VM with its processes and memory."""
    result = api.client.restore(
        hostname,
        wait=wait_for(wait),
        timeout=format_go_duration(timeout),
    )
    api.emit(result, lambda: f"{hostname} restored")


@_lifecycle
@click.command("shutdown")
@click.argument("hostname")
@api_command
def vm_shutdown(api: Api, hostname: str) -> None:
    """Shut a VM down cleanly. A persistent VM is then stopped (relaunch it); an ephemeral sandbox is removed."""
    result = api.client.shutdown(hostname)
    api.emit(result, lambda: f"{hostname} removed with its disk" if result.disk_removed else f"{hostname} stopped")


@_lifecycle
@click.command("relaunch")
@click.argument("hostname")
@_wait_options
@api_command
def vm_relaunch(api: Api, hostname: str, wait: str, timeout: float) -> None:
    """Boot a stopped VM again from its disk."""
    node = api.client.relaunch(
        hostname,
        wait=wait_for(wait),
        timeout=format_go_duration(timeout),
    )
    api.emit(node, lambda: f"{hostname} relaunched")
