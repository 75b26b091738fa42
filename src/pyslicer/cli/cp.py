"""``slicer vm cp SRC DST``: files and trees in and out of a VM, one side written ``VM:/path``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import click

from ._common import Api, api_command

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from pyslicer.client import SlicerClient
    from pyslicer.client._copy import CopySource

PROGRESS_THRESHOLD = 4 * 1024 * 1024  # a bar only for transfers worth watching


def split_remote(spec: str) -> tuple[str, str] | None:
    """``VM:/path`` -> (VM, /path); None for a local path (``./a:b``, ``/x:y`` and ``C:\\`` stay local)."""
    host, sep, path = spec.partition(":")
    if not sep or not host or "/" in host or "\\" in host or len(host) == 1:
        return None
    return host, path or "~"


class _Bar:
    """A rich progress bar over a byte stream, shown only when the stream is big (or of unknown size)."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label = label
        self.total = total
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> _Bar:
        if self.total is None or self.total >= PROGRESS_THRESHOLD:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def count(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            if self._progress is not None and self._task is not None:
                self._progress.advance(self._task, len(chunk))
            yield chunk


@click.command("cp")
@click.argument("source")
@click.argument("destination")
@click.option("--recursive", "-r", is_flag=True, help="Copy directories (as a tar stream).")
@click.option("--exclude", multiple=True, help="Leave out paths matching this pattern (repeatable).")
@click.option("--uid", type=click.IntRange(0), help="Owner of what lands in the VM (default: its default user).")
@click.option("--gid", type=click.IntRange(0), help="Group of what lands in the VM.")
@click.option("--mode", "permissions", help="Octal mode of a file copied into the VM, e.g. 0644.")
@api_command
def vm_cp(
    api: Api,
    source: str,
    destination: str,
    recursive: bool,
    exclude: tuple[str, ...],
    uid: int | None,
    gid: int | None,
    permissions: str | None,
) -> None:
    """Copy between this host and a VM, like cp: one of SOURCE and DESTINATION is VM:/path.

    \b
      slicer vm cp ./app.tar.gz sbox-1:/tmp/
      slicer vm cp -r ./src sbox-1:~/project --exclude node_modules
      slicer vm cp sbox-1:/var/log/syslog .
      slicer vm cp -r sbox-1:/etc ./etc-copy
    """
    remote_source, remote_destination = split_remote(source), split_remote(destination)
    if (remote_source is None) == (remote_destination is None):
        raise click.UsageError("exactly one of SOURCE and DESTINATION must be VM:/path")
    if permissions is not None and (not permissions.isdigit() or any(c in "89" for c in permissions)):
        raise click.UsageError(f"--mode {permissions!r} is not an octal mode like 0644")
    if remote_destination is not None:
        _upload(api.client, source, *remote_destination, recursive, list(exclude), uid, gid, permissions)
    else:
        assert remote_source is not None
        _download(api.client, *remote_source, destination, recursive, list(exclude))


def _upload(
    client: SlicerClient,
    local: str,
    hostname: str,
    path: str,
    recursive: bool,
    exclude: list[str],
    uid: int | None,
    gid: int | None,
    permissions: str | None,
) -> None:
    from pyslicer.client._copy import file_chunks, tar_chunks, tree_size

    if os.path.isdir(local):
        if not recursive:
            raise click.UsageError(f"{local} is a directory (use -r)")
        contents = local.rstrip("/").endswith("/.") or local.rstrip("/") in (".", "")
        name = os.path.basename(os.path.abspath(local))
        size = tree_size(local, exclude)
        with _Bar(f"{local} -> {hostname}:{path}", size) as bar:
            client.cp_to_vm(
                hostname,
                path,
                bar.count(tar_chunks(local, exclude)),
                mode="cp-v1-tar",
                uid=uid,
                gid=gid,
                source_name="" if contents and name in ("", "/") else name,
                source_type="directory",
                copy_contents=contents,
                exclude=exclude,
                unpacked_size=size,
            )
        return
    if not os.path.isfile(local):
        raise click.UsageError(f"{local}: no such file or directory")
    with open(local, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        with _Bar(f"{local} -> {hostname}:{path}", size) as bar:
            client.cp_to_vm(
                hostname,
                path,
                bar.count(file_chunks(file)),
                mode="cp-v1-binary",
                uid=uid,
                gid=gid,
                permissions=permissions,
                source_name=os.path.basename(os.path.abspath(local)),
                source_type="file",
                unpacked_size=size,
            )


def _download(client: SlicerClient, hostname: str, path: str, local: str, recursive: bool, exclude: list[str]) -> None:
    from pyslicer.client._copy import extract_tar

    sources: list[CopySource] = []
    chunks = client.cp_from_vm(
        hostname,
        path,
        mode="cp-v1-recursive" if recursive else "cp-v1-binary",
        exclude=exclude,
        on_source=sources.append,
    )
    try:
        try:
            first = next(chunks, b"")  # sends the request; the source is known once the answer has started
        except ValueError as exc:  # an unsafe source name from the server
            raise click.ClickException(str(exc)) from None
        source = sources[0]
        with _Bar(f"{hostname}:{path} -> {local}", source.size) as bar:
            stream = bar.count(_prepend(first, chunks))
            if source.source_type == "file":
                _write_file(stream, local, source)
            else:
                contents = path.rstrip("/").endswith("/.") or path.rstrip("/") == ""
                if os.path.isdir(local) and not contents and source.name:
                    local = os.path.join(local, source.name)
                elif os.path.exists(local) and not os.path.isdir(local):
                    raise click.UsageError(f"{local} exists and is not a directory")
                try:
                    extract_tar(stream, local)
                except ValueError as exc:
                    raise click.ClickException(str(exc)) from None
    finally:
        chunks.close()


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _write_file(chunks: Iterable[bytes], local: str, source: CopySource) -> None:
    """Into a directory as its name, else at ``local``; written aside and renamed, so a broken transfer
    leaves no partial file."""
    if os.path.isdir(local):
        local = os.path.join(local, source.name or "download")
    elif local.endswith("/"):
        raise click.UsageError(f"directory {local} does not exist")
    temp = os.path.join(os.path.dirname(os.path.abspath(local)), f".{os.path.basename(local)}.{os.getpid()}.part")
    mode = int(source.file_mode, 8) if source.file_mode.isdigit() else 0o644
    try:
        with open(temp, "xb") as out:
            for chunk in chunks:
                out.write(chunk)
            os.fchmod(out.fileno(), mode & 0o777)
        os.replace(temp, local)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
