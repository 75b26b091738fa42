"""The client's local half of copies: the tar it streams, the safe extraction, the CLI's VM:/path syntax."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from pyslicer.cli.cp import split_remote
from pyslicer.client._copy import excluded, extract_tar, source_of, tar_chunks, tree_size


def test_tar_chunks_round_trip_through_extract(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "a" / "node_modules").mkdir(parents=True)
    (source / "a" / "node_modules" / "x.js").write_bytes(b"x")
    (source / "a" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    (source / "empty").write_bytes(b"")
    (source / "l").symlink_to("a/big.bin")
    chunks = list(tar_chunks(str(source), ["node_modules"]))
    assert max(len(c) for c in chunks) <= 1024 * 1024
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
        assert sorted(archive.getnames()) == ["a", "a/big.bin", "empty", "l"]
    assert tree_size(str(source), ["node_modules"]) == 3 * 1024 * 1024 + 7
    assert extract_tar(chunks, str(tmp_path / "out")) == 4
    assert (tmp_path / "out/a/big.bin").read_bytes() == (source / "a/big.bin").read_bytes()
    assert os.readlink(tmp_path / "out/l") == "a/big.bin"
    assert excluded("a/node_modules", ["node_modules"]) and not excluded("a", ["node_modules"])


@pytest.mark.parametrize("name, link", [("../x", None), ("/abs", None), ("l", "../../etc")])
def test_extract_refuses_unsafe_entries(tmp_path: Path, name: str, link: str | None) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        member = tarfile.TarInfo(name)
        if link:
            member.type, member.linkname = tarfile.SYMTYPE, link
        archive.addfile(member, io.BytesIO(b""))
    with pytest.raises(ValueError):
        extract_tar([out.getvalue()], str(tmp_path / "dest"))
    assert not (tmp_path / "x").exists()


def test_source_headers_and_remote_syntax() -> None:
    source = source_of(
        {"x-slicer-source-type": "file", "x-slicer-source-name-base64": "IHRvb2wg", "content-length": "5"}
    )
    assert (source.source_type, source.name, source.size) == ("file", " tool ", 5)
    assert split_remote("sbox-1:/tmp/x") == ("sbox-1", "/tmp/x")
    assert split_remote("sbox-1:") == ("sbox-1", "~")
    assert split_remote("./a:b") is None and split_remote("plain") is None and split_remote("C:\\x") is None


@pytest.mark.parametrize("name", ["..", ".", "../ESCAPED", "/abs", "a\\b"])
def test_source_names_that_leave_the_local_target_are_refused(name: str) -> None:
    import base64

    encoded = base64.urlsafe_b64encode(name.encode()).rstrip(b"=").decode()
    with pytest.raises(ValueError, match="unsafe source name"):
        source_of({"x-slicer-source-type": "file", "x-slicer-source-name-base64": encoded})


def test_a_file_mode_that_is_not_octal_is_dropped() -> None:
    assert source_of({"x-slicer-file-mode": "0999"}).file_mode == ""
    assert source_of({"x-slicer-file-mode": "0640"}).file_mode == "0640"


def test_the_daemon_names_a_bad_mode_in_its_message() -> None:
    from pydantic import ValidationError

    from pyslicer.daemon.copy import CopyInRequest

    with pytest.raises(ValidationError) as bad:
        CopyInRequest.model_validate({"path": "/x", "permissions": "0999"})
    assert "0999 is not an octal mode" in str(bad.value) and "!r" not in str(bad.value)
    with pytest.raises(ValidationError) as unknown:
        CopyInRequest.model_validate({"path": "/x", "copy_semantics": "cp-v9"})
    assert "unknown copy_semantics cp-v9" in str(unknown.value)


def test_extract_refuses_a_link_through_a_link(tmp_path: Path) -> None:
    """s -> . then a -> s/.. looks inside textually but resolves to dest's parent."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, target in (("s", "."), ("a", "s/..")):
            member = tarfile.TarInfo(name)
            member.type, member.linkname = tarfile.SYMTYPE, target
            archive.addfile(member)
        member = tarfile.TarInfo("a/ESCAPED/x")
        member.size = 1
        archive.addfile(member, io.BytesIO(b"x"))
    with pytest.raises(ValueError):
        extract_tar([out.getvalue()], str(tmp_path / "dest"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]
