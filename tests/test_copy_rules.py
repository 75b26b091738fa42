"""The pure rules of copies (paths, placement, excludes, tar names and links) and ``slicer-agent upload``."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from pyslicer.agent import upload
from pyslicer.agent.copy_rules import (
    CopyFailure,
    entry_name,
    expand_path,
    is_contents_path,
    is_excluded,
    is_pruned,
    link_stays_inside,
    normalise_excludes,
    place_file,
    place_tree,
)


def test_expand_path() -> None:
    assert expand_path("~/x/", "/root") == ("/root/x", True)
    assert expand_path("~", "/home/u") == ("/home/u", False)
    assert expand_path("rel/a", "/root") == ("/root/rel/a", False)
    assert expand_path("/a//b/../c/.", "/root") == ("/a/c", True)
    assert expand_path("//x", "/") == ("/x", False)
    for bad in ("", None, "a\0b", 3):
        with pytest.raises(CopyFailure):
            expand_path(bad, "/root")
    assert is_contents_path("/tmp/d/.", "/tmp/d") and is_contents_path("/", "/")
    assert not is_contents_path("/tmp/d", "/tmp/d")


def test_file_placement(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    base = str(tmp_path)
    assert place_file(f"{base}/dir", False, True, "n", "file") == f"{base}/dir/n"
    assert place_file(f"{base}/new", True, True, "n", "file") == f"{base}/new/n"
    assert place_file(f"{base}/file", False, True, "n", "file") == f"{base}/file"
    assert place_file(f"{base}/other", False, True, "n", "file") == f"{base}/other"
    assert place_file(f"{base}/file", False, False, None, None) == f"{base}/file"
    with pytest.raises(CopyFailure, match="is a directory"):
        place_file(f"{base}/dir", False, False, None, None)
    for name, kind in (("..", "file"), ("a/b", "file"), ("n", "directory"), ("", "file")):
        with pytest.raises(CopyFailure):
            place_file(f"{base}/dir", False, True, name, kind)


def test_tree_placement(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    base = str(tmp_path)
    assert place_tree(f"{base}/dir", True, "src", "directory", False) == (f"{base}/dir/src", False)
    assert place_tree(f"{base}/dir", True, "src", "directory", True) == (f"{base}/dir", True)
    assert place_tree(f"{base}/new", True, "src", "directory", False) == (f"{base}/new", False)
    assert place_tree(f"{base}/dir", False, None, None, False) == (f"{base}/dir", True)
    with pytest.raises(CopyFailure) as failure:
        place_tree(f"{base}/file", False, None, None, False)
    assert failure.value.code == "not_a_directory"
    with pytest.raises(CopyFailure):
        place_tree(f"{base}/dir", True, "src", "file", False)


def test_excludes_follow_the_go_sdk() -> None:
    patterns = normalise_excludes([" ./node_modules/ ", "*.log", "build/**/tmp", "/abs", "", 3])
    assert patterns == ["node_modules", "*.log", "build/**/tmp", "abs"]
    assert is_excluded("node_modules", patterns) and is_excluded("a/node_modules", patterns)
    assert is_excluded("x/y.log", patterns) and is_excluded("build/tmp", patterns)
    assert is_excluded("build/a/b/tmp", patterns) and not is_excluded("src/tmp", patterns)
    assert is_pruned("node_modules/pkg/index.js", patterns) and not is_pruned("src/index.js", patterns)


def test_tar_entry_names() -> None:
    assert entry_name("./a/b/") == "a/b"
    assert entry_name("./") is None and entry_name(".") is None
    for bad in ("/etc/passwd", "../x", "a/../../x", "a//b", "a/./b"):
        with pytest.raises(CopyFailure) as failure:
            entry_name(bad)
        assert failure.value.code == "unsafe_entry"


def test_links_must_stay_inside() -> None:
    assert link_stays_inside("a/l", "../b", set())
    assert link_stays_inside("l", "sub/x", set())
    assert not link_stays_inside("l", "..", set())
    assert not link_stays_inside("a/l", "../../x", set())
    assert not link_stays_inside("l", "/etc", set())
    # through another link of the tree, whose own target could lead anywhere
    assert not link_stays_inside("l", "other/../../x", {"other"})
    assert link_stays_inside("l", "other", {"other"})


# -- slicer-agent upload --------------------------------------------------------------------------------


def session(tmp_path: Path, stream: bytes, chunk: int, **fields: object) -> str:
    directory = tmp_path / f".slicer-upload-{'ab' * 16}"
    (directory / "chunks").mkdir(parents=True)
    chunks = []
    for index, start in enumerate(range(0, len(stream), chunk)):
        piece = stream[start : start + chunk]
        (directory / "chunks" / f"{index:06d}.chunk").write_bytes(piece)
        chunks.append({"index": index, "size": len(piece), "sha256": hashlib.sha256(piece).hexdigest()})
    manifest = {
        "version": 2,
        "mode": "binary",
        "copy_semantics": "cp-v1",
        "source_type": "file",
        "source_name": "data.bin",
        "size": len(stream),
        "uid": 0,
        "gid": 0,
        "chunks": chunks,
        **fields,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return str(directory / "manifest.json")


@pytest.mark.skipif(os.geteuid() != 0, reason="finalise chowns what it writes")
def test_upload_finalise_binary_and_tar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert upload.main(["check"]) == 0 and capsys.readouterr().out.strip() == "chunked-copy-v2"
    data = os.urandom(1000)
    manifest = session(tmp_path, data, 300, destination=f"{tmp_path}/", permissions="0640")
    assert upload.main(["finalise", "--manifest", manifest, "--uid", "0", "--gid", "0"]) == 0
    assert (tmp_path / "data.bin").read_bytes() == data and (tmp_path / "data.bin").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        member = tarfile.TarInfo("x/y.txt")
        member.size = 3
        archive.addfile(member, io.BytesIO(b"xyz"))
    tree = {"mode": "tar", "source_type": "directory", "source_name": "tree", "destination": f"{tmp_path}/t"}
    manifest = session(tmp_path, out.getvalue(), 4096, **tree)
    assert upload.main(["finalise", "--manifest", manifest, "--uid", "4294967295", "--gid", "4294967295"]) == 0
    assert (tmp_path / "t/x/y.txt").read_bytes() == b"xyz"


def test_upload_finalise_refuses_a_bad_chunk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = session(tmp_path, b"a" * 100, 50, destination=f"{tmp_path}/out")
    (Path(manifest).parent / "chunks" / "000001.chunk").write_bytes(b"b" * 50)
    assert upload.main(["finalise", "--manifest", manifest]) == 1
    assert "SHA-256" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [Path(manifest).parent.name]  # no file, no temp
    assert upload.main(["abort", "--manifest", manifest]) == 0
    assert list(tmp_path.iterdir()) == []
    assert upload.main(["abort", "--manifest", str(tmp_path / "elsewhere/manifest.json")]) == 1
    assert upload.main(["nonsense"]) == 2


def test_excludes_match_as_gos_path_match_does() -> None:
    from pyslicer.agent.copy_rules import is_excluded, normalise_excludes

    patterns = normalise_excludes([r"\*.log", "[^a]?.txt", "bad[", "node_modules/**"])
    assert is_excluded("*.log", patterns) and not is_excluded("x.log", patterns)  # \ escapes, as in Go
    assert is_excluded("b1.txt", patterns) and not is_excluded("a1.txt", patterns)  # Go's [^...] negation
    assert not is_excluded("bad[", patterns)  # a malformed pattern matches nothing
    assert is_excluded("node_modules/x/y.js", patterns)


def test_a_user_without_an_account_has_no_home_to_copy_into() -> None:
    from pyslicer.agent.accounts import resolve_owner
    from pyslicer.agent.copy_rules import CopyFailure, expand_path
    from pyslicer.agent.fs import FsFailure, resolve

    nobody = 4_000_000  # no account on this host nor in the guest
    owner = resolve_owner(nobody)
    assert owner.home == ""
    for path in ("~", "~/x", "relative/x"):
        with pytest.raises(CopyFailure, match="no account"):
            expand_path(path, owner.home)
    assert expand_path("/tmp/x", owner.home) == ("/tmp/x", False)
    with pytest.raises(FsFailure, match="no account"):
        resolve("~/x", nobody)
    assert resolve("~/x", 0) == (resolve_owner(0).home.rstrip("/") + "/x")
