"""``slicer vm fs ...``: a VM's filesystem through the agent, without a shell in the guest."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from pyslicer.client._fs_watch import WATCH_EVENT_TYPES as CHANGE_TYPES

from ._common import Api, Duration, api_command
from ._output import fields, table

if TYPE_CHECKING:
    from pyslicer.client import FsEntry, WatchEvent

WATCH_EVENT_TYPES = (*CHANGE_TYPES, "all")


def _mtime(entry: FsEntry) -> str:
    modified = entry.modified
    return modified.strftime("%Y-%m-%d %H:%M:%S") if modified is not None else entry.mtime or "-"


@click.group("fs")
def fs() -> None:
    """Look at and change a VM's filesystem (paths are absolute, or ~/...)."""


@fs.command("ls")
@click.argument("hostname")
@click.argument("path", default="~")
@api_command
def fs_ls(api: Api, hostname: str, path: str) -> None:
    """List the directory PATH (default: ~) in a VM."""
    entries = api.client.readdir(hostname, path)
    rows = [
        [entry.mode, entry.type, str(entry.size), _mtime(entry), entry.name + ("/" if entry.is_dir else "")]
        for entry in entries
    ]
    api.emit(entries, lambda: table(["MODE", "TYPE", "SIZE", "MODIFIED", "NAME"], rows) if rows else "")


@fs.command("stat")
@click.argument("hostname")
@click.argument("path")
@api_command
def fs_stat(api: Api, hostname: str, path: str) -> None:
    """Show one path's type, size, mode and modification time."""
    entry = api.client.stat(hostname, path)
    pairs = [
        ("name", entry.name),
        ("type", entry.type),
        ("size", str(entry.size)),
        ("mode", entry.mode),
        ("modified", entry.mtime or "-"),
    ]
    api.emit(entry, lambda: fields(pairs))


@fs.command("mkdir")
@click.argument("hostname")
@click.argument("path")
@click.option("--parents", "-p", is_flag=True, help="Create missing parents; an existing directory is fine.")
@click.option("--mode", "-m", help="Octal permissions for each directory made [default: 0755].")
@api_command
def fs_mkdir(api: Api, hostname: str, path: str, parents: bool, mode: str | None) -> None:
    """Create the directory PATH in a VM."""
    entry = api.client.mkdir(hostname, path, recursive=parents, mode=mode)
    api.emit(entry, lambda: "")


@fs.command("rm")
@click.argument("hostname")
@click.argument("path")
@click.option("--recursive", "-r", is_flag=True, help="Remove a directory and everything in it.")
@api_command
def fs_rm(api: Api, hostname: str, path: str, recursive: bool) -> None:
    """Remove a file, symlink or empty directory (with -r, a whole tree) in a VM."""
    api.client.remove(hostname, path, recursive=recursive)
    api.emit({"path": path, "removed": True}, lambda: "")


def _event_line(event: WatchEvent) -> str:
    if not event.is_change:
        return f"{event.timestamp}  {event.type:<8}  {event.message or ''}".rstrip()
    path = event.path + ("/" if event.is_dir else "")
    size = "" if event.type == "remove" or event.is_dir else f"  ({event.size} bytes)"
    return f"{event.timestamp}  {event.type:<8}  {path}{size}"


@fs.command("watch")
@click.argument("hostname")
@click.argument("paths", nargs=-1, required=True)
@click.option("--recursive", "-r", is_flag=True, help="Watch subdirectories too, and new ones.")
@click.option("--pattern", "patterns", multiple=True, help="Only paths matching this glob (repeatable).")
@click.option(
    "--event", "events", multiple=True, type=click.Choice(WATCH_EVENT_TYPES), help="Only this type (repeatable)."
)
@click.option("--one-shot", is_flag=True, help="Stop after the first event.")
@click.option("--max-events", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option("--timeout", type=Duration(), help="Stop after this long (e.g. 5m).")
@click.option("--debounce", type=Duration(), help="Coalesce events of one type and path [default: 200ms].")
@click.option("--uid", type=click.IntRange(min=0), help="Whose home ~ is [default: root's].")
@api_command
def fs_watch(
    api: Api,
    hostname: str,
    paths: tuple[str, ...],
    recursive: bool,
    patterns: tuple[str, ...],
    events: tuple[str, ...],
    one_shot: bool,
    max_events: int | None,
    timeout: float | None,
    debounce: float | None,
    uid: int | None,
) -> None:
    """Print changes under PATHS in a VM as they happen (one JSON object a line with --json)."""
    stream = api.client.watch(
        hostname,
        list(paths),
        patterns=list(patterns) or None,
        events=list(events) or None,
        recursive=recursive,
        one_shot=one_shot,
        max_events=max_events,
        timeout=timeout,
        debounce=debounce,
        uid=uid,
    )
    try:
        for event in stream:
            if api.json:
                body = {
                    "id": event.id,
                    "type": event.type,
                    "path": event.path,
                    "timestamp": event.timestamp,
                    "size": event.size,
                    "isDir": event.is_dir,
                }
                if event.message is not None:
                    body["message"] = event.message
                click.echo(json.dumps(body))
            else:
                click.echo(_event_line(event))
    finally:
        stream.close()
