"""Secrets against the real daemon and real guests: the API with its bad inputs, the store on disk, and the
files under /run/slicer/secrets inside running guests (read back with exec), including a node granted only
some secrets and an agent that restarts."""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.integration.conftest import RunningDaemon, start_daemon, stop_daemon
from tests.integration.helpers import assert_error, created_sandbox, sh, wait_for_agent

SECRETS = "/run/slicer/secrets"
VALUE = b"s3cr3t-\x00\xff-value-that-must-not-leak"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@contextlib.contextmanager
def stored(api: httpx.Client, name: str, data: bytes, **fields: Any) -> Iterator[str]:
    response = api.post("/secrets", json={"name": name, "data": b64(data), **fields})
    assert response.status_code == 201, response.text
    try:
        yield name
    finally:
        api.delete(f"/secrets/{name}")


def guest_file(api: httpx.Client, hostname: str, name: str) -> tuple[str, bytes] | None:
    """``"<mode> <uid> <gid>"`` and the bytes of a secret in the guest, or None when it is not there."""
    out = sh(api, hostname, f"f={SECRETS}/{name}; [ -e $f ] || exit 0; stat -c '%a %u %g' $f; base64 -w0 $f")
    if not out:
        return None
    owner, _, data = out.partition("\n")
    return owner, base64.b64decode(data)


def listing(api: httpx.Client, hostname: str) -> list[str]:
    return sh(api, hostname, f"ls -A {SECRETS} 2>/dev/null || true").split()


def test_secret_api_and_bad_input(api: httpx.Client, daemon: RunningDaemon) -> None:
    name = "it-api"
    with stored(api, name, VALUE, permissions="0640", uid=1000, gid=1001):
        [listed] = [s for s in api.get("/secrets").json() if s["name"] == name]
        assert {k: listed[k] for k in ("name", "size", "permissions", "uid", "gid")} == {
            "name": name,
            "size": len(VALUE),
            "permissions": "0640",
            "uid": 1000,
            "gid": 1001,
        }
        assert listed["modified_at"] == listed["mod_time"] and "data" not in listed
        assert b64(VALUE) not in api.get("/secrets").text

        assert_error(api.post("/secrets", json={"name": name, "data": b64(b"x")}), 409, "already exists")
        patched = api.patch(f"/secrets/{name}", json={"data": "", "uid": 7})  # the SDKs' "value unchanged"
        assert patched.status_code == 200, patched.text
        assert (patched.json()["size"], patched.json()["uid"], patched.json()["gid"]) == (len(VALUE), 7, 1001)

        store = daemon.data_dir / "secrets"
        assert stat.S_IMODE(store.stat().st_mode) == 0o700
        assert stat.S_IMODE((store / name).stat().st_mode) == 0o600
        assert sorted(p.name for p in store.iterdir()) == [name]  # no temporary file left

    for body, field in (
        ({"name": "../x", "data": b64(b"v")}, "name"),
        ({"name": ".hidden", "data": b64(b"v")}, "name"),
        ({"name": "a/b", "data": b64(b"v")}, "name"),
        ({"name": "", "data": b64(b"v")}, "name"),
        ({"name": "ok", "data": "%%% not base64 %%%"}, "data"),
        ({"name": "ok", "data": b64(b"x" * (1024 * 1024 + 1))}, "data"),
        ({"name": "ok", "data": b64(b"v"), "permissions": "0999"}, "permissions"),
        ({"name": "ok", "data": b64(b"v"), "uid": -1}, "uid"),
        ({"data": b64(b"v")}, "name"),
    ):
        response = api.post("/secrets", json=body)
        assert_error(response, 400, f"{field}:")
        assert "not base64 %%%" not in response.text
    assert_error(api.post("/secrets", content=b"{not json"), 400, "JSON")
    assert_error(api.patch("/secrets/.hidden", json={"uid": 1}), 400, "name:")
    assert_error(api.delete("/secrets/..x"), 400, "name:")  # the name checked, not just the path
    missing = api.patch("/secrets/it-missing", json={"uid": 1})
    assert_error(missing, 404, "not found")
    assert missing.json()["code"] == "secret_not_found"
    assert_error(api.delete("/secrets/it-missing"), 404, "not found")
    assert api.delete("/secrets/..%2Fx").status_code in (400, 404)
    assert name not in [s["name"] for s in api.get("/secrets").json()]
    assert VALUE.decode(errors="replace") not in daemon.log() and b64(VALUE) not in daemon.log()


def test_secrets_appear_change_and_go_in_a_running_guest(api: httpx.Client, sandbox: str) -> None:
    with stored(api, "it-live", VALUE, permissions="0440", uid=1000, gid=1000):
        assert guest_file(api, sandbox, "it-live") == ("440 1000 1000", VALUE)
        assert sh(api, sandbox, f"stat -c '%a %u %g' {SECRETS}").strip() == "711 0 0"
        assert sh(api, sandbox, "stat -f -c %T /run").strip() == "tmpfs"

        response = api.patch("/secrets/it-live", json={"data": b64(b"rotated"), "permissions": "0600", "gid": 5})
        assert response.status_code == 200, response.text
        assert guest_file(api, sandbox, "it-live") == ("600 1000 5", b"rotated")
        # a user the file is not readable by cannot read it, nor list the directory
        result = api.post(
            f"/vm/{sandbox}/exec",
            params=[
                ("cmd", "/bin/sh"),
                ("args", "-c"),
                ("args", f"cat {SECRETS}/it-live; ls {SECRETS}"),
                ("uid", "1001"),
                ("buffered", "true"),
            ],
        ).json()
        assert "rotated" not in result["stdout"] and "Permission denied" in result["stderr"]
    assert guest_file(api, sandbox, "it-live") is None
    assert "it-live" not in listing(api, sandbox)


def wait_until(check: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(AssertionError, httpx.HTTPError, KeyError, ValueError):
            value = check()
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not so after {timeout}s")
        time.sleep(0.5)


def test_a_node_granted_some_secrets_sees_only_those(api: httpx.Client, daemon: RunningDaemon, sandbox: str) -> None:
    with stored(api, "it-a", b"value a", uid=1000), contextlib.ExitStack() as stack:
        hostname = stack.enter_context(created_sandbox(api, "agent", secrets=["it-a", "it-later"]))
        # booted after it-a existed: in place once the create (wait=agent) answers
        assert guest_file(api, hostname, "it-a") == ("600 1000 0", b"value a")
        stack.enter_context(stored(api, "it-b", b"value b"))
        assert guest_file(api, sandbox, "it-b") == ("600 0 0", b"value b")  # the sandbox is granted everything
        assert api.patch("/secrets/it-b", json={"data": b64(b"b again")}).status_code == 200
        assert guest_file(api, sandbox, "it-b") == ("600 0 0", b"b again")
        assert listing(api, hostname) == ["it-a"]
        stack.enter_context(stored(api, "it-later", b"granted before it existed", permissions="0400"))
        assert sorted(listing(api, hostname)) == ["it-a", "it-later"]

        db = sqlite3.connect(daemon.data_dir / "state.db")
        try:
            [(record,)] = db.execute("SELECT record FROM nodes WHERE hostname = ?", (hostname,)).fetchall()
        finally:
            db.close()
        assert json.loads(record)["secrets"] == ["it-a", "it-later"]  # kept with the node for a restart

        # An agent that restarts gets its set again: remove a file, kill the agent (init respawns it).
        sh(api, hostname, f"rm {SECRETS}/it-a; (sleep 1; kill -9 $PPID) >/dev/null 2>&1 &")
        time.sleep(2)
        assert wait_until(lambda: guest_file(api, hostname, "it-a")) == ("600 1000 0", b"value a")
        assert sorted(listing(api, hostname)) == ["it-a", "it-later"]

        api.delete("/secrets/it-a")
        assert listing(api, hostname) == ["it-later"]

    created = api.post("/hostgroup/sbox/nodes", json={"secrets": ["../etc"]})
    assert_error(created, 400, "secrets[0]")


RESTART_CONFIG = """
config:
  host_groups:
  - name: sbox
    count: 0
    vcpu: 1
    ram_mb: 384
    storage_size: 2G
    persistent: false
  hypervisor: qemu
  accel: auto
  api:
    bind_address: {address}
    port: {port}
    auth:
      enabled: true
"""


def test_a_persistent_node_keeps_its_grant_across_a_daemon_restart(guest_image: Path, tmp_path: Path) -> None:
    first = start_daemon(tmp_path, guest_image, config_template=RESTART_CONFIG)
    try:
        with first.client() as api:
            for name, value in (("r-a", VALUE), ("r-b", b"not for keeper")):
                assert api.post("/secrets", json={"name": name, "data": b64(value)}).status_code == 201
            body = {"hostname": "keeper", "persistent": True, "secrets": ["r-a"]}
            assert api.post("/hostgroup/sbox/nodes?wait=agent", json=body).status_code == 201
            assert listing(api, "keeper") == ["r-a"]
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(90) == 0
    finally:
        stop_daemon(first)
    disk = (first.data_dir / "disks" / "keeper.qcow2").read_bytes()
    assert VALUE not in disk and b64(VALUE).encode() not in disk, "a secret never reaches the guest's disk"

    second = start_daemon(tmp_path, guest_image, config_template=RESTART_CONFIG)
    try:
        with second.client() as api:
            assert sorted(s["name"] for s in api.get("/secrets").json()) == ["r-a", "r-b"]
            wait_for_agent(api, "keeper")
            assert wait_until(lambda: guest_file(api, "keeper", "r-a")) == ("600 0 0", VALUE)
            assert listing(api, "keeper") == ["r-a"]
            api.delete("/hostgroup/sbox/nodes/keeper")
        assert VALUE.decode(errors="replace") not in second.log() + first.log()
    finally:
        stop_daemon(second)
