"""copy_in and copy_out through the real agent process on the host (over a socketpair), driven by the daemon's
copy objects: placement, atomic landing, tar safety, cancellation. The integration tests repeat the essentials
in real guests through the HTTP API."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
from pathlib import Path

import pytest

from pyslicer.daemon.agent_link import AgentLink
from pyslicer.daemon.copy import CopyDownload, CopyInRequest, CopyOutRequest, CopyResult, CopyUpload
from pyslicer.errors import InsufficientStorage, InvalidArgument, NotFound
from tests.test_agent_link import link

__all__ = ["link"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the agent chowns what it writes")


async def upload(link: AgentLink, data: bytes, piece: int = 100_000, **query: object) -> CopyResult:
    copy = CopyUpload(link.open(CopyInRequest.model_validate(query).to_wire()))
    for start in range(0, len(data), piece):
        await copy.write(data[start : start + piece])
        if copy.refused:
            break
    return await copy.finish()


async def download(link: AgentLink, **query: object) -> tuple[CopyDownload, bytes]:
    copy = await CopyDownload.open(link.open(CopyOutRequest.model_validate(query).to_wire()))
    return copy, b"".join([chunk async for chunk in copy.chunks()])


def tar_of(*entries: tuple[str, bytes | str | None], kind: bytes = tarfile.REGTYPE) -> bytes:
    """(name, data) regular files, (name, None) directories, (name, "target") symlinks."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data in entries:
            member = tarfile.TarInfo(name)
            if data is None:
                member.type, member.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(member)
            elif isinstance(data, str):
                member.type, member.linkname = tarfile.SYMTYPE, data
                archive.addfile(member)
            else:
                member.type, member.size, member.mode = kind, len(data), 0o640
                archive.addfile(member, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def space(tmp_path: Path) -> Path:
    """A directory of the test's own (the link fixture keeps its socket in tmp_path)."""
    (tmp_path / "space").mkdir()
    return tmp_path / "space"


def leftovers(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if ".slicer-cp-" in p.name)


async def test_binary_round_trip_and_placement(link: AgentLink, space: Path) -> None:
    data = os.urandom(700_000)
    result = await upload(link, data, path=str(space / "new" / "deep" / "file.bin"), permissions="0600")
    assert result.size == len(data) and (space / "new/deep/file.bin").read_bytes() == data
    assert (space / "new/deep/file.bin").stat().st_mode & 0o777 == 0o600
    source, back = await download(link, path=str(space / "new/deep/file.bin"), mode="cp-v1-binary")
    assert back == data and source.source.name == "file.bin" and source.source.file_mode == "0600"
    # cp-v1: into an existing directory (or one written with a trailing /) as path/source_name
    v1 = {"mode": "cp-v1-binary", "copy_semantics": "cp-v1", "source_name": "n.txt", "source_type": "file"}
    assert (await upload(link, b"a", path=str(space / "new"), **v1)).path == str(space / "new/n.txt")
    assert (await upload(link, b"b", path=f"{space}/slash/", **v1)).path == str(space / "slash/n.txt")
    assert (await upload(link, b"c", path=str(space / "new/n.txt"), **v1)).path == str(space / "new/n.txt")
    assert (space / "new/n.txt").read_bytes() == b"c"
    assert (await upload(link, b"", path=str(space / "empty"))).size == 0
    assert (space / "empty").read_bytes() == b""
    assert leftovers(space) == []


async def test_binary_errors(link: AgentLink, space: Path) -> None:
    with pytest.raises(NotFound) as missing:
        await download(link, path=str(space / "nope"))
    assert missing.value.code == "path_not_found"
    with pytest.raises(InvalidArgument, match="must specify a file not a directory"):
        await download(link, path=str(space), mode="binary")
    with pytest.raises(InvalidArgument, match="is a directory"):
        await upload(link, b"x", path=str(space))
    with pytest.raises(InsufficientStorage):
        await upload(link, b"x" * 10, path=str(space / "big"), unpacked_size=2**62)
    assert list(space.iterdir()) == []


async def test_tree_round_trip_with_modes_links_and_excludes(link: AgentLink, space: Path) -> None:
    archive = tar_of(
        ("sub", None), ("sub/a.txt", b"A"), ("b.sh", b"#!/bin/sh\n"), ("link", "sub/a.txt"), ("skip.log", b"no")
    )
    v1 = {"mode": "cp-v1-tar", "copy_semantics": "cp-v1", "source_name": "tree", "source_type": "directory"}
    result = await upload(link, archive, piece=700, path=str(space / "dest"), exclude=["*.log"], **v1)
    dest = space / "dest"
    assert result.path == str(dest)
    assert sorted(p.name for p in dest.iterdir()) == ["b.sh", "link", "sub"]
    assert os.readlink(dest / "link") == "sub/a.txt" and (dest / "b.sh").stat().st_mode & 0o777 == 0o640
    # into an existing directory: as path/source_name
    assert (await upload(link, archive, path=str(space / "dest"), **v1)).path == str(dest / "tree")
    # contents into an existing directory: merged
    await upload(link, tar_of(("c.txt", b"C")), path=str(dest), **{**v1, "copy_contents": "true"})
    assert (dest / "c.txt").read_bytes() == b"C" and (dest / "sub/a.txt").read_bytes() == b"A"
    source, data = await download(link, path=str(dest), mode="cp-v1-recursive", exclude=["tree"])
    assert source.source.source_type == "directory" and source.source.name == "dest"
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        names = archive.getnames()
    assert sorted(names) == ["b.sh", "c.txt", "link", "sub", "sub/a.txt"]
    source, data = await download(link, path=str(dest / "c.txt"), mode="cp-v1-recursive")
    assert source.source.source_type == "file" and data == b"C"
    with pytest.raises(InvalidArgument):
        await download(link, path=str(dest / "c.txt"), mode="cp-v1-tar")
    assert leftovers(space) == []


@pytest.mark.parametrize(
    "entries",
    [
        [("../evil", b"x")],
        [("/abs", b"x")],
        [("ok", b"1"), ("out", "../../x")],
        [("l", "/etc"), ("l/passwd", b"x")],
        [("d", None), ("d/l", "../.."), ("fine", b"1")],
    ],
)
async def test_unsafe_tar_leaves_nothing(link: AgentLink, space: Path, entries: list[tuple[str, object]]) -> None:
    target = space / "t"
    with pytest.raises(InvalidArgument) as refused:
        await upload(link, tar_of(*entries), path=str(target), mode="tar")  # type: ignore[arg-type]
    assert refused.value.code == "unsafe_tar_entry"
    await asyncio.sleep(0.2)  # the worker removes its directory as it stops
    assert list(space.iterdir()) == []


async def test_bad_tar_and_cancel_leave_nothing(link: AgentLink, space: Path) -> None:
    with pytest.raises(InvalidArgument) as bad:
        await upload(link, b"not a tar at all" * 100, path=str(space / "t"), mode="tar")
    assert bad.value.code == "invalid_tar"
    for mode in ("binary", "tar"):
        copy = CopyUpload(link.open(CopyInRequest(path=str(space / mode), mode=mode).to_wire()))
        body = tar_of(("big", os.urandom(3_000_000))) if mode == "tar" else os.urandom(3_000_000)
        await copy.write(body[:1_000_000])
        copy.cancel()
    await asyncio.sleep(0.5)
    assert list(space.iterdir()) == []


async def test_a_temporary_directory_swapped_for_a_link_is_never_written_through(link: AgentLink, space: Path) -> None:
    """A guest user owning the target's directory swaps the hidden directory for a link while the agent
    (root) fills it: nothing may land, or be chowned, where the link points."""
    home, outside = space / "home", space / "outside"
    home.mkdir()
    outside.mkdir(mode=0o700)
    os.chown(home, 1000, 1000)
    copy = CopyUpload(link.open(CopyInRequest(path=str(home / "t"), mode="tar", uid=1000, gid=1000).to_wire()))
    for _ in range(100):
        temps = [p for p in home.iterdir() if p.name.startswith(".slicer-cp-")]
        if temps:
            break
        await asyncio.sleep(0.02)
    (temp,) = temps
    temp.rename(home / "moved")
    temp.symlink_to(outside)
    await copy.write(tar_of(("sub", None), ("sub/f", b"data"), ("g", b"more")))
    await copy.finish()
    assert list(outside.iterdir()) == []
    assert (outside.stat().st_uid, outside.stat().st_mode & 0o777) == (0, 0o700)
    assert (home / "moved/sub/f").read_bytes() == b"data"  # what was filled is where the fd pointed


def small_files_tar(count: int) -> bytes:
    """A tar whose members are 1 KiB each (header and one block): cut at any 1 KiB boundary it still parses."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for index in range(count):
            member = tarfile.TarInfo(f"f{index:05d}")
            member.size = 512
            archive.addfile(member, io.BytesIO(b"x" * 512))
    return out.getvalue()


async def test_a_cancel_after_eof_with_data_still_queued_installs_nothing(link: AgentLink, space: Path) -> None:
    body = small_files_tar(6000)
    copy = CopyUpload(link.open(CopyInRequest(path=str(space / "t"), mode="tar").to_wire()))
    for start in range(0, len(body), 64 * 1024):
        await copy.write(body[start : start + 64 * 1024])
    copy._stream.close_input()
    copy.cancel()
    await asyncio.sleep(3)
    assert list(space.iterdir()) == []


async def test_a_tar_without_its_end_of_archive_blocks_is_invalid(link: AgentLink, space: Path) -> None:
    body = small_files_tar(3)
    with pytest.raises(InvalidArgument) as cut:
        await upload(link, body[: 3 * 1024], path=str(space / "t"), mode="tar")
    assert cut.value.code == "invalid_tar"
    assert list(space.iterdir()) == []


@pytest.mark.parametrize(
    "name, mode", [("../ESCAPED", "0644"), ("/abs", "0644"), ("..", "0644"), ("ok", "0999"), ("ok", "06\r\n44")]
)
async def test_a_bad_source_from_the_guest_is_an_error(name: str, mode: str) -> None:
    """The guest is not trusted: a source name that would leave the host's target, or a mode that is not
    octal (or would inject a header), is refused before any header is built."""
    from pyslicer.daemon.agent_link import Message
    from pyslicer.errors import AgentError

    class Guest:
        cancelled = False

        def __aiter__(self) -> Guest:
            return self

        async def __anext__(self) -> Message:
            return Message({"type": "source", "source_type": "file", "name": name, "file_mode": mode, "size": 1})

        def cancel(self) -> None:
            self.cancelled = True

    guest = Guest()
    with pytest.raises(AgentError) as refused:
        await CopyDownload.open(guest)  # type: ignore[arg-type]
    assert refused.value.code == "invalid_guest_answer" and guest.cancelled


async def test_errors_that_are_the_requests_fault_are_invalid_arguments(link: AgentLink, space: Path) -> None:
    long = "a" * 300
    copy = CopyUpload(link.open(CopyInRequest(path=str(space / long)).to_wire()))
    await asyncio.sleep(0.3)
    assert copy.refused  # known before the body: none of it is taken
    with pytest.raises(InvalidArgument) as too_long:
        await copy.finish()
    assert too_long.value.code == "invalid_path" and ".slicer-cp-" not in str(too_long.value)
    member = tarfile.TarInfo(long)
    member.size = 1
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(member, io.BytesIO(b"x"))
    with pytest.raises(InvalidArgument) as entry:
        await upload(link, out.getvalue(), path=str(space / "t"), mode="tar")
    assert entry.value.code == "invalid_path"
    os.symlink("loop", space / "loop")
    with pytest.raises(InvalidArgument):
        await upload(link, b"x", path=str(space / "loop/x"))
    await asyncio.sleep(0.2)
    assert leftovers(space) == [] and sorted(p.name for p in space.iterdir()) == ["loop"]


async def test_a_fifo_where_a_file_was_is_refused_not_waited_on(link: AgentLink, space: Path) -> None:
    os.mkfifo(space / "pipe")
    with pytest.raises(InvalidArgument) as refused:
        await asyncio.wait_for(download(link, path=str(space / "pipe")), 10)
    assert refused.value.code == "not_a_file"
    # and the agent's loop is still free
    (space / "f").write_bytes(b"ok")
    assert (await download(link, path=str(space / "f")))[1] == b"ok"
