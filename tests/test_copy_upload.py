"""``slicer-agent upload finalise`` on the host: the manifest is the guest user's to write, so where it may
place the result and whose upload it may act on are checked."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from pyslicer.agent import upload

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="finalise chowns what it writes")


def staged(directory: Path, data: bytes, destination: str, owner: int = 0) -> Path:
    session = directory / f".slicer-upload-{os.urandom(16).hex()}"
    (session / "chunks").mkdir(parents=True)
    (session / "chunks/000000.chunk").write_bytes(data)
    manifest = {
        "version": 2,
        "mode": "binary",
        "destination": destination,
        "size": len(data),
        "copy_semantics": "cp-v1",
        "source_name": "blob",
        "source_type": "file",
        "chunks": [{"index": 0, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}],
    }
    (session / "manifest.json").write_text(json.dumps(manifest))
    for path in (session, session / "chunks", session / "chunks/000000.chunk", session / "manifest.json"):
        os.chown(path, owner, owner)
    return session


def finalise(session: Path, uid: int = 0) -> int:
    args = ["finalise", "--manifest", str(session / "manifest.json"), "--uid", str(uid), "--gid", str(uid)]
    return upload.main(args)


def test_finalise_places_the_file_beside_its_upload(tmp_path: Path) -> None:
    session = staged(tmp_path, b"data", f"{tmp_path}/out", owner=1000)
    assert finalise(session, uid=1000) == 0
    assert (tmp_path / "out").read_bytes() == b"data" and (tmp_path / "out").stat().st_uid == 1000
    assert not session.exists()


def test_finalise_refuses_a_destination_away_from_the_upload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "elsewhere").mkdir()
    session = staged(tmp_path / "home", b"data", f"{tmp_path}/elsewhere/x", owner=1000)
    assert finalise(session, uid=1000) == 1
    assert "not beside the upload" in capsys.readouterr().err
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_finalise_refuses_an_upload_someone_else_owns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    session = staged(tmp_path, b"data", f"{tmp_path}/out", owner=1000)
    assert finalise(session, uid=0) == 1  # a user's manifest, finalised as root
    assert "not the upload's own" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    link = tmp_path / f".slicer-upload-{os.urandom(16).hex()}"
    link.symlink_to(session)
    assert finalise(link, uid=1000) == 1


def test_the_chunk_reader_gives_back_every_byte_in_any_read_sizes() -> None:
    from pyslicer.agent.upload import _ChunkReader

    data = os.urandom(100_000)
    pieces = [data[start : start + 7777] for start in range(0, len(data), 7777)]
    reader = _ChunkReader(iter(pieces))
    out = bytearray()
    sizes = [1, 512, 10240, 3, 7777, 20000]
    while chunk := reader.read(sizes[len(out) % len(sizes)]):
        out += chunk
    assert bytes(out) == data
    reader = _ChunkReader(iter(pieces))
    assert reader.read(10) == data[:10] and reader.read() == data[10:] and reader.read(5) == b""
