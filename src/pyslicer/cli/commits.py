"""``slicer vm commit|fork`` and ``slicer commit list|rm``: a stopped VM's disk kept, and VMs forked from it."""

from __future__ import annotations

from collections.abc import Callable

import click

from pyslicer.durations import format_go_duration

from ._common import Api, Duration, KeyValue, api_command
from ._output import human_bytes, table, timestamp

FIXUPS = ("hostname", "machine-id", "ssh-host-keys")


@click.command("commit")
@click.argument("hostname")
@click.option("--tag", "tags", multiple=True, help="Tag the commit (repeatable).")
@click.option("--label", "labels", multiple=True, type=KeyValue(), help="KEY=VALUE label (repeatable).")
@click.option("--cache-key", help="A key to find the commit by (e.g. a hash of what was installed).")
@api_command
def vm_commit(api: Api, hostname: str, tags: tuple[str, ...], labels: tuple[str, ...], cache_key: str | None) -> None:
    """Commit a stopped persistent VM's disk; it goes on from the commit. Prints the commit id."""
    pairs = dict(label.split("=", 1) for label in labels)
    commit = api.client.commit(hostname, tags=list(tags), labels=pairs, cache_key=cache_key)
    api.emit(commit, lambda: commit.commit_id)


@click.command("fork")
@click.argument("commit_id")
@click.option("--wait", type=click.Choice(["agent", "none"]), default="agent", show_default=True)
@click.option("--timeout", type=Duration(), default="5m", show_default=True, help="How long to wait.")
@click.option("--tag", "tags", multiple=True, help="Add a tag to the source's (repeatable).")
@click.option("--replace-tags", is_flag=True, help="Use only the --tag values, not the source's tags.")
@click.option("--secret", "secrets", multiple=True, help="Grant a secret (repeatable); default: the source's.")
@click.option("--no-secrets", is_flag=True, help="Grant no secrets.")
@click.option("--persistent/--ephemeral", default=None, help="Keep the disk when the VM stops (default: the group's).")
@click.option(
    "--fixup",
    "fixups",
    multiple=True,
    type=click.Choice(FIXUPS),
    help="Identity fix-up to apply (repeatable); default: all of them.",
)
@click.option("--no-fixups", is_flag=True, help="Keep the source's hostname, machine-id and SSH host keys.")
@click.option("--allow", multiple=True, help="CIDR the VM may reach (repeatable); replaces the group's list.")
@click.option("--drop", multiple=True, help="CIDR dropped (repeatable); replaces the group's list.")
@click.option("--cpus", type=click.IntRange(min=1), help="vCPUs (default: the source's).")
@click.option("--ram-mb", type=click.IntRange(min=1), help="RAM in MiB (default: the source's).")
@api_command
def vm_fork(
    api: Api,
    commit_id: str,
    wait: str,
    timeout: float,
    tags: tuple[str, ...],
    replace_tags: bool,
    secrets: tuple[str, ...],
    no_secrets: bool,
    persistent: bool | None,
    fixups: tuple[str, ...],
    no_fixups: bool,
    allow: tuple[str, ...],
    drop: tuple[str, ...],
    cpus: int | None,
    ram_mb: int | None,
) -> None:
    """Launch a new VM from a commit, with a fresh identity. Prints its hostname."""
    if no_secrets and secrets:
        raise click.UsageError("use one of --secret and --no-secrets")
    if no_fixups and fixups:
        raise click.UsageError("use one of --fixup and --no-fixups")
    forked = api.client.fork(
        commit_id,
        wait="none" if wait == "none" else "agent",
        timeout=format_go_duration(timeout),
        allow=list(allow) if allow else None,
        drop=list(drop) if drop else None,
        tags=list(tags) if tags or replace_tags else None,
        replace_tags=replace_tags,
        secrets=[] if no_secrets else list(secrets) if secrets else None,
        persistent=persistent,
        fixups=[] if no_fixups else list(fixups) if fixups else None,
        vcpu=cpus,
        ram_bytes=ram_mb * 1024 * 1024 if ram_mb else None,
    )
    api.emit(forked, lambda: forked.hostname)


@click.group("commit")
def commit() -> None:
    """Commits: stopped VMs' disks that new VMs fork from."""


@commit.command("list")
@click.option("--tag", "tags", multiple=True, help="Only commits with this tag (repeat: with all of them).")
@click.option("--cache-key", help="Only commits with this cache key.")
@click.option("--source", help="Only commits of this VM.")
@click.option("--mode", type=click.Choice(["disk", "hot"]), help="Only commits of this mode.")
@api_command
def commit_list(api: Api, tags: tuple[str, ...], cache_key: str | None, source: str | None, mode: str | None) -> None:
    """List commits."""
    commits = api.client.commits(tags=list(tags), cache_key=cache_key, source=source, mode=mode)
    if not api.json and not commits:
        click.echo("No commits found.", err=True)
        return
    rows = [
        [
            c.commit_id,
            c.source_hostname or "-",
            c.mode or "-",
            human_bytes(c.size_bytes),
            ",".join(c.tags) or "-",
            c.cache_key or "-",
            ",".join(c.used_by) or "-",
            timestamp(c.created_at),
        ]
        for c in commits
    ]
    headers = ["COMMIT", "SOURCE", "MODE", "SIZE", "TAGS", "CACHE KEY", "USED BY", "CREATED"]
    api.emit(commits, lambda: table(headers, rows))


@commit.command("rm")
@click.argument("commit_ids", nargs=-1, required=True)
@api_command
def commit_rm(api: Api, commit_ids: tuple[str, ...]) -> None:
    """Delete commits (refused while a VM or another commit stands on one)."""
    for commit_id in commit_ids:
        api.emit(api.client.delete_commit(commit_id), _said(f"{commit_id} deleted"))


def _said(text: str) -> Callable[[], str]:
    return lambda: text
