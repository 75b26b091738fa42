"""Copies in and out of the shared sandbox: binary round trips by sha256, trees, every cp-v1 mode and placement
rule, the legacy fallback strings, chunked copies through ``slicer-agent upload``, bad input, disconnects."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urlparse

import httpx
import pytest

from tests.integration.conftest import RunningDaemon
from tests.integration.helpers import assert_error, exec_buffered, sh

BIG = 256 * 1024 * 1024  # a few hundred MiB, far past every window and buffer (about 15 s each way under TCG)


@pytest.fixture
def remote(api: httpx.Client, sandbox: str) -> Iterator[str]:
    """A fresh directory in the guest for one test, removed afterwards."""
    path = f"/var/tmp/cp-{os.urandom(4).hex()}"
    sh(api, sandbox, f"mkdir -p {path}")
    yield path
    sh(api, sandbox, f"rm -rf {path}")


def put(api: httpx.Client, hostname: str, body: bytes | Iterator[bytes], **query: str | list[str]) -> httpx.Response:
    content_type = "application/x-tar" if str(query.get("mode", "")).endswith("tar") else "application/octet-stream"
    return api.post(f"/vm/{hostname}/cp", params=query, content=body, headers={"content-type": content_type})


def get(api: httpx.Client, hostname: str, **query: str | list[str]) -> httpx.Response:
    return api.get(f"/vm/{hostname}/cp", params=query)


def decoded_name(response: httpx.Response) -> str:
    encoded = response.headers["x-slicer-source-name-base64"]
    assert "=" not in encoded
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()


def tar_of(
    files: dict[str, bytes | None], modes: dict[str, int] | None = None, links: dict[str, str] | None = None
) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.mode = (modes or {}).get(name, 0o755 if data is None else 0o644)
            if data is None:
                member.type = tarfile.DIRTYPE
                archive.addfile(member)
            else:
                member.size = len(data)
                archive.addfile(member, io.BytesIO(data))
        for name, target in (links or {}).items():
            member = tarfile.TarInfo(name)
            member.type, member.linkname = tarfile.SYMTYPE, target
            archive.addfile(member)
    return out.getvalue()


def listing(api: httpx.Client, hostname: str, path: str) -> str:
    """Every entry under path with its type, mode and owner, one a line (hidden temporaries included)."""
    return sh(api, hostname, f"cd {path} && find . -mindepth 1 -printf '%P %y %m %U:%G\\n' | sort")


# -- binary ----------------------------------------------------------------------------------------------


def test_binary_round_trips_by_sha256(api: httpx.Client, sandbox: str, remote: str) -> None:
    for size in (0, 1, 300_000):
        data = os.urandom(size)
        assert put(api, sandbox, data, path=f"{remote}/f{size}", mode="binary").status_code == 200
        answer = get(api, sandbox, path=f"{remote}/f{size}")  # no mode: binary
        assert answer.status_code == 200 and answer.content == data
        assert answer.headers["content-type"] == "application/octet-stream"
    assert sh(api, sandbox, f"sha256sum < {remote}/f300000").split()[0] == hashlib.sha256(data).hexdigest()


def test_big_binary_streams_both_ways(api: httpx.Client, sandbox: str, remote: str) -> None:
    block = os.urandom(1024 * 1024)
    digest = hashlib.sha256()

    def body() -> Iterator[bytes]:
        for index in range(BIG // len(block)):
            piece = block[index % 7 :] + block[: index % 7]
            digest.update(piece)
            yield piece

    started = time.monotonic()
    response = put(
        api,
        sandbox,
        body(),
        path=f"{remote}/big",
        mode="cp-v1-binary",
        copy_semantics="cp-v1",
        source_name="big",
        source_type="file",
    )
    upload_seconds = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json() == {"path": f"{remote}/big", "size": BIG}
    expected = digest.hexdigest()
    assert sh(api, sandbox, f"sha256sum {remote}/big").split()[0] == expected
    back = hashlib.sha256()
    started = time.monotonic()
    with api.stream("GET", f"/vm/{sandbox}/cp", params={"path": f"{remote}/big", "mode": "cp-v1-binary"}) as answer:
        assert answer.status_code == 200 and int(answer.headers["content-length"]) == BIG
        for chunk in answer.iter_bytes():
            back.update(chunk)
    download_seconds = time.monotonic() - started
    assert back.hexdigest() == expected
    print(f"\n{BIG >> 20} MiB: upload {upload_seconds:.1f}s, download {download_seconds:.1f}s")


def test_cp_v1_binary_placement_and_headers(api: httpx.Client, sandbox: str, remote: str) -> None:
    v1 = {"mode": "cp-v1-binary", "copy_semantics": "cp-v1", "source_name": " tool ", "source_type": "file"}
    assert put(api, sandbox, b"one", path=remote, **v1).json()["path"] == f"{remote}/ tool "  # existing dir
    assert put(api, sandbox, b"two", path=f"{remote}/sub/", **v1).json()["path"] == f"{remote}/sub/ tool "  # path/
    assert put(api, sandbox, b"three", path=f"{remote}/renamed", **v1).json()["path"] == f"{remote}/renamed"
    assert put(api, sandbox, b"four", path=f"{remote}/renamed", **v1, permissions="0750", uid="1000", gid="1001")
    assert listing(api, sandbox, remote) == (
        " tool  f 644 0:0\nrenamed f 750 1000:1001\nsub d 755 0:0\nsub/ tool  f 644 0:0\n"
    )
    answer = get(api, sandbox, path=f"{remote}/renamed", mode="cp-v1-binary", copy_semantics="cp-v1")
    assert answer.content == b"four" and answer.headers["x-slicer-source-type"] == "file"
    assert decoded_name(answer) == "renamed" and answer.headers["x-slicer-file-mode"] == "0750"
    assert "x-slicer-source-name" not in answer.headers
    answer = get(api, sandbox, path=f"{remote}/ tool ", mode="cp-v1-binary")
    assert decoded_name(answer) == " tool "  # spaces survive
    # ~/ is the default user's home (root until the image has another default user)
    assert put(api, sandbox, b"home", path="~/cp-home-test", mode="binary").json()["path"] == "/root/cp-home-test"
    assert get(api, sandbox, path="~/cp-home-test").content == b"home"
    sh(api, sandbox, "rm /root/cp-home-test")


# -- trees -----------------------------------------------------------------------------------------------


def test_tree_upload_with_modes_owners_links_and_excludes(api: httpx.Client, sandbox: str, remote: str) -> None:
    archive = tar_of(
        {
            "bin": None,
            "bin/run.sh": b"#!/bin/sh\necho hi\n",
            "data.txt": b"data",
            "skip.log": b"x",
            "node_modules": None,
            "node_modules/m.js": b"m",
        },
        modes={"bin/run.sh": 0o755, "data.txt": 0o600, "bin": 0o750},
        links={"latest": "bin/run.sh"},
    )
    v1 = {"mode": "cp-v1-tar", "copy_semantics": "cp-v1", "source_name": "proj", "source_type": "directory"}
    response = put(
        api, sandbox, archive, path=f"{remote}/proj", uid="1000", gid="1000", exclude=["*.log", "node_modules"], **v1
    )
    assert response.status_code == 200, response.text
    assert listing(api, sandbox, f"{remote}/proj") == (
        "bin d 750 1000:1000\nbin/run.sh f 755 1000:1000\ndata.txt f 600 1000:1000\nlatest l 777 1000:1000\n"
    )
    # into an existing directory: as path/source_name; with copy_contents: merged into path
    assert put(api, sandbox, archive, path=remote, **v1).json()["path"] == f"{remote}/proj"
    assert (
        put(api, sandbox, tar_of({"extra": b"e"}), path=f"{remote}/proj", copy_contents="true", **v1).status_code == 200
    )
    assert "extra f" in listing(api, sandbox, f"{remote}/proj")
    # legacy tar: extracted into path, created when missing
    assert put(api, sandbox, tar_of({"a": b"A"}), path=f"{remote}/legacy", mode="tar").status_code == 200
    assert sh(api, sandbox, f"cat {remote}/legacy/a") == "A"
    assert ".slicer-" not in sh(api, sandbox, f"ls -aR {remote}")


def test_tree_download_modes(api: httpx.Client, sandbox: str, remote: str) -> None:
    sh(
        api,
        sandbox,
        f"mkdir -p {remote}/t/sub && echo x > {remote}/t/sub/x && echo y > {remote}/t/y.log "
        f"&& ln -s sub/x {remote}/t/link && chmod 700 {remote}/t/sub",
    )
    for mode in ("cp-v1-tar", "cp-v1-recursive", "tar"):
        answer = get(api, sandbox, path=f"{remote}/t", mode=mode, exclude=["*.log"])
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/x-tar"
        assert answer.headers["x-slicer-source-type"] == "directory" and decoded_name(answer) == "t"
        assert answer.content[257:262] == b"ustar"  # what the TS SDK checks
        with tarfile.open(fileobj=io.BytesIO(answer.content)) as archive:
            members = {m.name: m for m in archive}
        assert sorted(members) == ["link", "sub", "sub/x"]  # relative, no "." entry, excludes applied
        assert members["link"].issym() and members["link"].linkname == "sub/x"
        assert members["sub"].mode == 0o700
    contents = get(api, sandbox, path=f"{remote}/t/.", mode="cp-v1-tar")
    assert "x-slicer-source-name-base64" not in contents.headers  # contents-only: no name
    file_answer = get(api, sandbox, path=f"{remote}/t/sub/x", mode="cp-v1-recursive")
    assert file_answer.headers["x-slicer-source-type"] == "file" and file_answer.content == b"x\n"
    assert_error(get(api, sandbox, path=f"{remote}/t/sub/x", mode="cp-v1-tar"), 400)


# -- what old clients and bad input get ------------------------------------------------------------------


def test_fallback_strings_and_bad_input(api: httpx.Client, sandbox: str, remote: str) -> None:
    answer = get(api, sandbox, path=remote, mode="binary")
    assert_error(answer, 400, "must specify a file not a directory")
    assert_error(get(api, sandbox, path=remote, mode="cp-v9-binary"), 400, "invalid mode: cp-v9-binary")
    assert_error(put(api, sandbox, b"x", path=f"{remote}/x", mode="zip"), 400, "invalid mode: zip")
    missing = get(api, sandbox, path=f"{remote}/nothing")
    assert_error(missing, 404)
    assert missing.json()["code"] == "path_not_found"
    unknown = get(api, "no-such-vm", path="/etc/hostname")
    assert unknown.status_code == 404 and unknown.json()["code"] == "vm_not_found"
    assert_error(put(api, sandbox, b"x", path=f"{remote}/x", permissions="99"), 400, "permissions")
    assert_error(put(api, sandbox, b"x", path=""), 400)
    for archive in (
        tar_of({"../escape": b"x"}),
        tar_of({"/abs": b"x"}),
        tar_of({"ok": b"1"}, links={"out": "../../../etc"}),
        tar_of({}, links={"l": "/etc"}),
        b"definitely not a tar archive" * 40,
    ):
        assert_error(put(api, sandbox, archive, path=f"{remote}/bad", mode="tar"), 400)
    assert put(api, sandbox, tar_of({"a": b"A"}), path=f"{remote}/huge", mode="tar").status_code == 200
    refused = api.post(
        f"/vm/{sandbox}/cp",
        params={"path": f"{remote}/huge2", "mode": "tar"},
        content=tar_of({"a": b"A"}),
        headers={"X-Slicer-Unpacked-Size": str(2**50)},
    )
    assert_error(refused, 413)
    assert refused.json()["code"] == "no_space"
    assert listing(api, sandbox, remote) == "huge d 755 0:0\nhuge/a f 644 0:0\n"
    assert sh(api, sandbox, "ls /etc/passwd /escape /abs 2>/dev/null || true").strip() == "/etc/passwd"


def test_full_disk_leaves_no_partial_file(api: httpx.Client, sandbox: str, remote: str) -> None:
    sh(api, sandbox, f"mkdir {remote}/small && mount -t tmpfs -o size=1m tmpfs {remote}/small")
    try:

        def body() -> Iterator[bytes]:  # no length known: the guest finds out as it writes
            for _ in range(40):
                yield b"z" * 65536

        response = put(api, sandbox, body(), path=f"{remote}/small/file", mode="binary")
        assert_error(response, 413)
        assert sh(api, sandbox, f"ls -A {remote}/small") == ""
    finally:
        sh(api, sandbox, f"umount {remote}/small")


def test_client_disconnect_mid_upload_leaves_nothing(
    daemon: RunningDaemon, api: httpx.Client, sandbox: str, remote: str
) -> None:
    url = urlparse(daemon.url)
    for mode, body in (("binary", os.urandom(4 << 20)), ("tar", tar_of({"big": os.urandom(4 << 20)}))):
        query = urlencode({"path": f"{remote}/cut-{mode}", "mode": mode})
        head = (
            f"POST /vm/{sandbox}/cp?{query} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {daemon.token}\r\n"
            f"Content-Length: {len(body)}\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        with socket.create_connection((url.hostname, url.port)) as connection:
            connection.sendall(head.encode() + body[: 1 << 20])
            time.sleep(1)
        deadline = time.monotonic() + 20
        while listing(api, sandbox, remote) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert listing(api, sandbox, remote) == ""


# -- chunked copies, as the Go SDK does them --------------------------------------------------------------


def test_chunked_upload_through_the_guest_command(api: httpx.Client, sandbox: str, remote: str) -> None:
    check = exec_buffered(api, sandbox, "/usr/local/bin/slicer-agent", "upload", "check", uid=0, gid=0)
    assert check["exit_code"] == 0 and "chunked-copy-v2" in check["stdout"].split()
    data = os.urandom(5 * 1024 * 1024 + 123)
    chunk_size = 2 * 1024 * 1024
    session = f"{remote}/.slicer-upload-{os.urandom(16).hex()}"
    chunks = []
    for index, offset in enumerate(range(0, len(data), chunk_size)):
        piece = data[offset : offset + chunk_size]
        response = put(
            api, sandbox, piece, path=f"{session}/chunks/{index:06d}.chunk", mode="binary", permissions="0600"
        )
        assert response.status_code == 200, response.text
        chunks.append({"index": index, "size": len(piece), "sha256": hashlib.sha256(piece).hexdigest()})
    manifest = {
        "version": 2,
        "mode": "binary",
        "destination": f"{remote}/",
        "uid": 1000,
        "gid": 1000,
        "permissions": "0640",
        "size": len(data),
        "copy_semantics": "cp-v1",
        "source_name": "blob.bin",
        "source_type": "file",
        "chunks": chunks,
    }
    assert (
        put(
            api,
            sandbox,
            json.dumps(manifest).encode(),
            path=f"{session}/manifest.json",
            mode="binary",
            permissions="0600",
        ).status_code
        == 200
    )
    finalise = exec_buffered(
        api,
        sandbox,
        "/usr/local/bin/slicer-agent",
        "upload",
        "finalise",
        "--manifest",
        f"{session}/manifest.json",
        "--uid",
        "1000",
        "--gid",
        "1000",
        uid=0,
        gid=0,
    )
    assert finalise["exit_code"] == 0, finalise
    assert listing(api, sandbox, remote) == "blob.bin f 640 1000:1000\n"  # the upload directory is gone
    assert sh(api, sandbox, f"sha256sum {remote}/blob.bin").split()[0] == hashlib.sha256(data).hexdigest()
    # a broken chunk: finalise refuses, abort cleans up
    session = f"{remote}/.slicer-upload-{os.urandom(16).hex()}"
    put(api, sandbox, b"a" * 10, path=f"{session}/chunks/000000.chunk", mode="binary", permissions="0600")
    manifest = {
        **manifest,
        "destination": f"{remote}/other",
        "size": 10,
        "chunks": [{"index": 0, "size": 10, "sha256": hashlib.sha256(b"b" * 10).hexdigest()}],
    }
    put(api, sandbox, json.dumps(manifest).encode(), path=f"{session}/manifest.json", mode="binary")
    args = ["--manifest", f"{session}/manifest.json", "--uid", "0", "--gid", "0"]
    refused = exec_buffered(api, sandbox, "/usr/local/bin/slicer-agent", "upload", "finalise", *args)
    assert refused["exit_code"] == 1 and "SHA-256" in refused["stderr"]
    assert exec_buffered(api, sandbox, "/usr/local/bin/slicer-agent", "upload", "abort", *args)["exit_code"] == 0
    assert listing(api, sandbox, remote) == "blob.bin f 640 1000:1000\n"


# -- the Python SDK and the CLI's helpers ---------------------------------------------------------------


def test_sdk_round_trips_a_tree_and_a_file(daemon: RunningDaemon, sandbox: str, remote: str, tmp_path: Path) -> None:
    from pyslicer.client import SlicerClient
    from pyslicer.client._copy import CopySource, extract_tar

    local = tmp_path / "proj"
    (local / "pkg").mkdir(parents=True)
    (local / "pkg" / "mod.py").write_bytes(b"print(1)\n")
    (local / "run.sh").write_bytes(b"#!/bin/sh\n")
    (local / "run.sh").chmod(0o755)
    (local / "junk.log").write_bytes(b"x")
    (local / "link").symlink_to("pkg/mod.py")
    with SlicerClient(daemon.url, token=daemon.token) as client:
        client.upload_tree(sandbox, local, remote, exclude=["*.log"])
        client.upload_file(sandbox, local / "run.sh", f"{remote}/")
        sources: list[CopySource] = []
        chunks = client.cp_from_vm(sandbox, f"{remote}/proj", mode="cp-v1-recursive", on_source=sources.append)
        extract_tar(chunks, str(tmp_path / "back"))
        assert sources[0].source_type == "directory" and sources[0].name == "proj"
        file_bytes = b"".join(client.cp_from_vm(sandbox, f"{remote}/run.sh"))
    assert file_bytes == b"#!/bin/sh\n"
    back = tmp_path / "back"
    assert sorted(str(p.relative_to(back)) for p in back.rglob("*")) == ["link", "pkg", "pkg/mod.py", "run.sh"]
    assert (back / "run.sh").stat().st_mode & 0o777 == 0o755 and os.readlink(back / "link") == "pkg/mod.py"
