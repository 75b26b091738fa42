"""``slicer secret ...``: values handed to VMs under /run/slicer/secrets, never through an argument.

A value is read from ``--from-file PATH`` or from stdin (``--from-file -``, or a pipe): an argument would
leave it in the shell's history and in every process listing.
"""

from __future__ import annotations

import sys
from typing import IO, TYPE_CHECKING, Any

import click

from ._common import Api, api_command
from ._output import table, timestamp

if TYPE_CHECKING:
    _ParamType = click.ParamType[Any]
else:  # click < 8.2 has no generic ParamType
    _ParamType = click.ParamType

MAX_SECRET_BYTES = 1024 * 1024


class Permissions(_ParamType):
    """Octal permission bits: ``600``, ``0640``."""

    name = "MODE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if not (3 <= len(text) <= 4 and all(c in "01234567" for c in text)) or int(text, 8) > 0o777:
            self.fail(f"{value!r} is not octal permission bits (e.g. 0600)", param, ctx)
        return f"{int(text, 8):04o}"


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is None or sys.stdin.isatty()
    except (ValueError, OSError):
        return True


def _read_value(source: str) -> bytes:
    """The value in ``source`` (a path, or ``-`` for stdin), refused when over the daemon's limit."""
    stream: IO[bytes]
    if source == "-":
        stream = sys.stdin.buffer
        data = stream.read(MAX_SECRET_BYTES + 1)
    else:
        try:
            with open(source, "rb") as stream:
                data = stream.read(MAX_SECRET_BYTES + 1)
        except OSError as exc:
            raise click.BadParameter(f"{source}: {exc.strerror or exc}", param_hint="--from-file") from None
    if len(data) > MAX_SECRET_BYTES:
        raise click.BadParameter(f"a secret holds at most {MAX_SECRET_BYTES // 1024} KiB", param_hint="--from-file")
    return data


from_file_option = click.option(
    "--from-file",
    "from_file",
    metavar="PATH",
    help="Read the value from PATH (- for stdin).",
)
owner_options = [
    click.option("--permissions", "-m", type=Permissions(), help="File mode in the guest, octal [create: 0600]."),
    click.option("--uid", type=click.IntRange(0, 2**32 - 2), help="Owner in the guest [create: 0, root]."),
    click.option("--gid", type=click.IntRange(0, 2**32 - 2), help="Group in the guest [create: 0, root]."),
]


def with_owner_options(func: Any) -> Any:
    for option in reversed(owner_options):
        func = option(func)
    return func


@click.group()
def secret() -> None:
    """Manage secrets: files VMs see under /run/slicer/secrets/NAME (never on their disks)."""


@secret.command("list")
@api_command
def secret_list(api: Api) -> None:
    """List secrets (names, sizes and owners; never values)."""
    secrets = api.client.secrets()
    if not api.json and not secrets:
        click.echo("No secrets.", err=True)
        return
    rows = [
        [s.name, str(s.size), s.permissions or "-", str(s.uid), str(s.gid), timestamp(s.modified_at)] for s in secrets
    ]
    api.emit(secrets, lambda: table(["NAME", "SIZE", "MODE", "UID", "GID", "MODIFIED"], rows))


@secret.command("create")
@click.argument("name")
@from_file_option
@with_owner_options
@api_command
def secret_create(
    api: Api, name: str, from_file: str | None, permissions: str | None, uid: int | None, gid: int | None
) -> None:
    """Store secret NAME, its value read from --from-file or piped on stdin.

    \b
    slicer secret create db-password --from-file ./password.txt
    printf %s "$TOKEN" | slicer secret create api-token --uid 1000 --permissions 0400
    """
    if from_file is None:
        if _stdin_is_tty():
            raise click.UsageError("give the value with --from-file PATH, or pipe it on stdin")
        from_file = "-"
    created = api.client.create_secret(name, _read_value(from_file), permissions=permissions, uid=uid, gid=gid)
    api.emit(created if created is not None else {"name": name}, lambda: f"created secret {name}")


@secret.command("update")
@click.argument("name")
@from_file_option
@with_owner_options
@api_command
def secret_update(
    api: Api, name: str, from_file: str | None, permissions: str | None, uid: int | None, gid: int | None
) -> None:
    """Change secret NAME: a new value from --from-file (- for stdin), and/or its mode and owner."""
    if from_file is None and permissions is None and uid is None and gid is None:
        raise click.UsageError("nothing to change: give --from-file, --permissions, --uid or --gid")
    data = _read_value(from_file) if from_file is not None else None
    if data is not None and not data:
        raise click.UsageError("the new value is empty (to empty a secret, delete it and create it again)")
    updated = api.client.update_secret(name, data, permissions=permissions, uid=uid, gid=gid)
    api.emit(updated if updated is not None else {"name": name}, lambda: f"updated secret {name}")


@secret.command("delete")
@click.argument("name")
@api_command
def secret_delete(api: Api, name: str) -> None:
    """Remove secret NAME, from the store and from the VMs."""
    api.client.delete_secret(name)
    api.emit({"name": name, "deleted": True}, lambda: f"deleted secret {name}")
