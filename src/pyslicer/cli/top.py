"""``slicer vm top``: every VM's stats, refreshed in place (rich), or printed once.

CPU is QEMU's (the host's count, so it shows for a paused or hung guest too) and, like the network and disk
rates, needs two samples: the first screen (and ``--once``) shows totals since boot instead. MEMORY is the
guest's own view (used of total); HOST RSS/PSS is what its QEMU holds on the host.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from ._common import Api, Duration, api_command
from ._output import human_bytes, human_duration, table

if TYPE_CHECKING:
    from rich.table import Table

    from pyslicer.client import NodeStats

HEADERS = (
    "HOSTNAME", "GROUP", "STATUS", "CPU", "LOAD", "MEMORY", "HOST RSS/PSS", "DISK", "NET RX", "NET TX", "DISK R/W",
    "UPTIME", "NOTE",
)  # fmt: skip


class Sample:
    """One round of stats and when it was taken, to turn the next round's counters into rates."""

    def __init__(self, entries: Sequence[NodeStats], taken: float) -> None:
        self.entries = {entry.hostname: entry for entry in entries}
        self.taken = taken


def _rate(now: float | int | None, before: float | int | None, seconds: float) -> float | None:
    if now is None or before is None or seconds <= 0 or now < before:
        return None
    return (now - before) / seconds


def _bytes_cell(total: int | None, rate: float | None) -> str:
    if rate is not None:
        return f"{human_bytes(int(rate)) if rate >= 1 else '0B'}/s"
    return human_bytes(total) if total else "-"


def row(entry: NodeStats, previous: Sample | None, taken: float) -> list[str]:
    snapshot, host = entry.snapshot, entry.host
    before = previous.entries.get(entry.hostname) if previous is not None else None
    seconds = taken - previous.taken if previous is not None else 0.0
    old_host = before.host if before is not None else None
    old_snapshot = before.snapshot if before is not None else None

    cpu = "-"
    if host is not None and old_host is not None:
        busy = _rate(host.cpu_seconds, old_host.cpu_seconds, seconds)
        if busy is not None:
            cpu = f"{busy * 100:.0f}%"
    net_rx = _bytes_cell(
        host.net_rx_bytes if host else None,
        _rate(host.net_rx_bytes, old_host.net_rx_bytes, seconds) if host and old_host else None,
    )
    net_tx = _bytes_cell(
        host.net_tx_bytes if host else None,
        _rate(host.net_tx_bytes, old_host.net_tx_bytes, seconds) if host and old_host else None,
    )
    host_memory = "-"
    if host is not None and host.rss_bytes is not None:
        pss = human_bytes(host.pss_bytes) if host.pss_bytes is not None else "-"
        host_memory = f"{human_bytes(host.rss_bytes)}/{pss}"
    if snapshot is None:
        return [entry.hostname, entry.hostgroup or "-", entry.status or "-", cpu, "-", "-", host_memory, "-", net_rx,
                net_tx, "-", "-", entry.error or "no snapshot"]  # fmt: skip
    load = f"{snapshot.load_avg1:.2f}"
    memory = f"{human_bytes(snapshot.memory_used)}/{human_bytes(snapshot.total_memory)}"
    disk = f"{human_bytes(snapshot.disk_space_used)}/{human_bytes(snapshot.disk_space_total)}"
    read_rate = _rate(snapshot.disk_read_total, old_snapshot.disk_read_total, seconds) if old_snapshot else None
    write_rate = _rate(snapshot.disk_write_total, old_snapshot.disk_write_total, seconds) if old_snapshot else None
    disk_io = f"{_bytes_cell(snapshot.disk_read_total, read_rate)} {_bytes_cell(snapshot.disk_write_total, write_rate)}"
    uptime = snapshot.uptime_seconds
    return [
        entry.hostname,
        entry.hostgroup or "-",
        entry.status or "-",
        cpu,
        load,
        memory,
        host_memory,
        disk,
        net_rx,
        net_tx,
        disk_io,
        human_duration(uptime) if uptime is not None else "-",
        "",
    ]


def _rich_table(rows: list[list[str]], title: str) -> Table:
    from rich.table import Table

    grid = Table(title=title, title_justify="left", expand=False, pad_edge=False, box=None)
    for header in HEADERS:
        grid.add_column(header, no_wrap=True, justify="right" if header in ("CPU", "LOAD") else "left")
    for cells in rows:
        grid.add_row(*cells)
    return grid


@click.command("top")
@click.option("--interval", "-n", type=Duration(), default="2s", show_default=True, help="Time between refreshes.")
@click.option("--once", is_flag=True, help="Print the stats once and exit (totals since boot, no rates).")
@click.option("--group", "-g", help="Only VMs in this host group.")
@api_command
def vm_top(api: Api, interval: float, once: bool, group: str | None) -> None:
    """Show every VM's CPU, memory, disk and network, refreshed in place (Ctrl-C to leave)."""
    client = api.client

    def sample() -> list[NodeStats]:
        return [entry for entry in client.node_stats() if group is None or entry.hostgroup == group]

    if once or api.json:
        entries = sample()
        if api.json:
            api.emit(entries, str)
        elif not entries:
            click.echo("No VMs found.", err=True)
        else:
            click.echo(table(HEADERS, [row(entry, None, 0.0) for entry in entries]))
        return
    if interval <= 0:
        raise click.BadParameter("must be more than 0", param_hint="--interval")

    from rich.console import Console
    from rich.live import Live

    previous: Sample | None = None
    try:
        with Live(console=Console(), auto_refresh=False, transient=False) as live:
            while True:
                entries = sample()
                taken = time.monotonic()
                rows = [row(entry, previous, taken) for entry in entries]
                title = f"{len(entries)} VMs, every {interval:g}s (Ctrl-C to leave)"
                live.update(_rich_table(rows, title), refresh=True)
                previous = Sample(entries, taken)
                time.sleep(interval)
    except KeyboardInterrupt:
        pass  # Live has restored the cursor on its way out
