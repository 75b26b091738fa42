"""Unit tests of secrets: the store on disk, the request models, the agent's writer, the SDK and the CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import stat
import types
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from pyslicer.agent.secrets import STAGING_PREFIX, SecretsSession
from pyslicer.daemon import secrets as secrets_module
from pyslicer.daemon.secrets import (
    MAX_SECRET_BYTES,
    GuestSync,
    NewSecret,
    SecretChange,
    Secrets,
    SecretStore,
    check_grant,
    check_name,
)
from pyslicer.errors import AgentError, Conflict, InvalidArgument, NotFound, Unavailable
from pyslicer.protocol import Channel, Event, FrameDecoder, FrameType, decode_json, window_increment
from tests.test_cli import FakeApi
from tests.test_client import client_for

VALUE = b"hunter2-\x00\xff-the-value"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def new_secret(name: str, data: bytes = VALUE, **fields: Any) -> NewSecret:
    return NewSecret.model_validate({"name": name, "data": b64(data), **fields})


@pytest.fixture
def store(tmp_path: Path) -> SecretStore:
    store = SecretStore(tmp_path / "secrets")
    store.open()
    return store


# -- names and request models --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a/b", ".", "..", ".x", "", "a\0b", "-x", "x" * 129, "a b", "é"])
def test_bad_names_are_refused_naming_the_field(name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_name(name)
    assert info.value.message.startswith("name: ")
    with pytest.raises(ValidationError) as error:
        NewSecret.model_validate({"name": name, "data": ""})
    assert error.value.errors()[0]["loc"] == ("name",)


@pytest.mark.parametrize("name", ["a", "API_KEY", "db.password", "x-1", "_private", "a..b", "x" * 128])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


def test_grant_names_are_checked_and_deduplicated() -> None:
    assert check_grant(["a", "b", "a"]) == ("a", "b")
    with pytest.raises(InvalidArgument, match=r"secrets\[1\]"):
        check_grant(["a", "../etc"])


def test_request_models() -> None:
    spec = new_secret("a")
    assert (spec.data, spec.permissions, spec.uid, spec.gid) == (VALUE, 0o600, 0, 0)
    assert new_secret("a", permissions="640").permissions == 0o640
    assert VALUE.hex() not in repr(spec) and "hunter2" not in repr(spec)
    for fields, where in (
        ({"data": "not base64!"}, "data"),
        ({"data": 5}, "data"),
        ({"data": b64(b"x" * (MAX_SECRET_BYTES + 1))}, "data"),
        ({"permissions": "0800"}, "permissions"),
        ({"permissions": "1777"}, "permissions"),
        ({"permissions": 384}, "permissions"),
        ({"uid": -1}, "uid"),
        ({"gid": 2**32}, "gid"),
    ):
        with pytest.raises(ValidationError) as error:
            NewSecret.model_validate({"name": "a", "data": b64(VALUE), **fields})
        assert error.value.errors()[0]["loc"] == (where,)
        assert "hunter2" not in str(error.value) and "not base64!" not in str(error.value)
    change = SecretChange.model_validate({"data": ""})
    assert change.data is None  # what the SDKs send when only the metadata changes
    assert SecretChange.model_validate({"uid": 7}).uid == 7


# -- the store ------------------------------------------------------------------------------------------


def test_store_modes_and_round_trip(store: SecretStore) -> None:
    info = store.create(new_secret("db", permissions="0440", uid=1000, gid=1001))
    assert (info.name, info.size, info.permissions, info.uid, info.gid) == ("db", len(VALUE), "0440", 1000, 1001)
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((store.directory / "db").stat().st_mode) == 0o600
    assert store.infos() == [info]
    [secret] = store.read(None)
    assert secret.data == VALUE and secret.info == info
    assert "hunter2" not in repr(secret) and "hunter2" not in repr(store.infos())
    assert store.read(["missing", "db"]) == [secret]
    assert store.read([]) == []


def test_store_create_update_delete(store: SecretStore) -> None:
    store.create(new_secret("a"))
    with pytest.raises(Conflict):
        store.create(new_secret("a", b"other"))
    updated = store.update("a", SecretChange.model_validate({"permissions": "0644"}))
    assert (updated.permissions, updated.size) == ("0644", len(VALUE))
    assert store.read(["a"])[0].data == VALUE
    updated = store.update("a", SecretChange.model_validate({"data": b64(b"new"), "uid": 5}))
    assert (updated.size, updated.uid, updated.permissions) == (3, 5, "0644")
    assert store.read(["a"])[0].data == b"new"
    with pytest.raises(NotFound):
        store.update("b", SecretChange())
    store.delete("a")
    with pytest.raises(NotFound):
        store.delete("a")
    assert store.infos() == []
    assert os.listdir(store.directory) == []  # no temporary file left behind


def test_store_writes_atomically(store: SecretStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.create(new_secret("a"))

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        store.update("a", SecretChange.model_validate({"data": b64(b"half")}))
    with pytest.raises(OSError):
        store.create(new_secret("b"))
    monkeypatch.undo()
    assert store.read(None)[0].data == VALUE  # the old value, whole
    assert sorted(os.listdir(store.directory)) == ["a"]


def test_store_open_tidies_and_ignores_what_is_not_a_secret(store: SecretStore, caplog: Any) -> None:
    store.create(new_secret("a"))
    (store.directory / ".tmp-left-by-a-crash").write_bytes(b"x")
    (store.directory / "junk").write_bytes(b"not a header\nhunter2")
    os.chmod(store.directory, 0o755)
    store.open()
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    with caplog.at_level(logging.WARNING):
        assert [info.name for info in store.infos()] == ["a"]
        assert [secret.info.name for secret in store.read(None)] == ["a"]
    assert "hunter2" not in caplog.text and "junk" in caplog.text


def test_store_limits(store: SecretStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyslicer.daemon.secrets as module

    monkeypatch.setattr(module, "MAX_STORE_BYTES", 2 * len(VALUE))
    store.create(new_secret("a"))
    store.create(new_secret("b"))
    with pytest.raises(Unavailable) as info:
        store.create(new_secret("c"))
    assert info.value.code == "secret_store_full"
    store.update("b", SecretChange.model_validate({"data": b64(b"x")}))  # its own size does not count twice
    store.create(new_secret("c", b"y" * (len(VALUE) - 1)))


# -- the agent's writer -----------------------------------------------------------------------------------


class AgentHarness:
    """Runs a SecretsSession against a directory on this host and collects what it sends."""

    def __init__(self, directory: Path, request: dict[str, Any], stream: int = 7) -> None:
        self.decoder = FrameDecoder()
        self.frames: list[Any] = []
        self.finished = False
        session_class = type("Session", (SecretsSession,), {"directory": str(directory), "in_memory": False})
        self.session = session_class(None, stream, {"op": "secrets", **request}, self._send, self._finish)

    def _send(self, data: bytes) -> None:
        self.frames += self.decoder.feed(data)

    def _finish(self, session: Any) -> None:
        self.finished = True

    def answer(self) -> dict[str, Any]:
        [message] = [f for f in self.frames if f.type == FrameType.MESSAGE]
        body: dict[str, Any] = decode_json(message)
        return body

    def credit(self) -> int:
        return sum(window_increment(f) for f in self.frames if f.type == FrameType.WINDOW)


def entry(name: str, data: bytes, mode: int = 0o600, uid: int = 0, gid: int = 0) -> dict[str, Any]:
    return {"name": name, "size": len(data), "mode": mode, "uid": uid, "gid": gid}


def test_agent_writes_the_set_and_removes_the_rest(tmp_path: Path) -> None:
    directory = tmp_path / "run" / "slicer" / "secrets"
    directory.mkdir(parents=True)
    (directory / "stale").write_bytes(b"old")
    (directory / "b").write_bytes(b"old b")
    uid = 1000 if os.geteuid() == 0 else os.getuid()
    files = [entry("a", b"A" * 100_000, 0o400, uid, uid), entry("empty", b""), entry("b", b"new b", 0o644)]
    agent = AgentHarness(directory, {"secrets": files})
    agent.session.start()
    payload = b"A" * 100_000 + b"new b"
    for offset in range(0, len(payload), 65536):  # chunks that straddle the files' boundaries
        agent.session.on_data(Channel.STDIN, payload[offset : offset + 65536])
    assert not (directory / "a").exists()  # nothing in place before the whole set has arrived
    agent.session.on_eof(Channel.STDIN)
    assert agent.finished
    assert agent.answer() == {"type": Event.DONE, "written": 3, "removed": 1}
    assert agent.credit() == len(payload)
    assert sorted(os.listdir(directory)) == ["a", "b", "empty"]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o711
    a = (directory / "a").stat()
    assert (stat.S_IMODE(a.st_mode), a.st_uid, a.st_gid, a.st_size) == (0o400, uid, uid, 100_000)
    assert (directory / "b").read_bytes() == b"new b"
    assert stat.S_IMODE((directory / "b").stat().st_mode) == 0o644
    assert (directory / "empty").read_bytes() == b""


@pytest.mark.parametrize(
    ("request_body", "complaint"),
    [
        ({"secrets": [entry("../x", b"v")]}, "invalid secret name"),
        ({"secrets": [entry(".hidden", b"v")]}, "invalid secret name"),
        ({"secrets": [entry("a", b"v"), entry("a", b"v")]}, "twice"),
        ({"secrets": [{**entry("a", b"v"), "mode": 0o4755}]}, "mode"),
        ({"secrets": [{**entry("a", b"v"), "size": -1}]}, "size"),
        ({"secrets": "all"}, "must be a list"),
    ],
)
def test_agent_refuses_bad_requests(tmp_path: Path, request_body: dict[str, Any], complaint: str) -> None:
    agent = AgentHarness(tmp_path / "secrets", request_body)
    agent.session.start()
    answer = agent.answer()
    assert answer["type"] == Event.ERROR and complaint in answer["error"]
    assert agent.finished
    assert not (tmp_path / "x").exists()


def test_agent_leaves_nothing_behind_when_cut_short(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    agent = AgentHarness(directory, {"secrets": [entry("a", b"12345"), entry("b", b"678")]})
    agent.session.start()
    agent.session.on_data(Channel.STDIN, b"123456")
    agent.session.on_eof(Channel.STDIN)  # "78" never came
    assert "before every secret had arrived" in agent.answer()["error"]
    assert os.listdir(directory) == []

    too_much = AgentHarness(directory, {"secrets": [entry("a", b"12")]}, stream=8)
    too_much.session.start()
    too_much.session.on_data(Channel.STDIN, b"123")
    assert "more bytes" in too_much.answer()["error"]
    assert os.listdir(directory) == []

    cancelled = AgentHarness(directory, {"secrets": [entry("a", b"12345")]}, stream=9)
    cancelled.session.start()
    cancelled.session.on_data(Channel.STDIN, b"12")
    cancelled.session.cancel()
    assert os.listdir(directory) == [] and not cancelled.finished


def test_agent_never_follows_a_planted_staging_link(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    directory.mkdir()
    target = tmp_path / "elsewhere"
    (directory / f"{STAGING_PREFIX}7-0").symlink_to(target)
    agent = AgentHarness(directory, {"secrets": [entry("a", b"v")]})
    agent.session.start()  # stale staging entries are cleared first
    agent.session.on_data(Channel.STDIN, b"v")
    agent.session.on_eof(Channel.STDIN)
    assert agent.answer()["type"] == Event.DONE
    assert not target.exists() and (directory / "a").read_bytes() == b"v"


# -- the SDK and the CLI ------------------------------------------------------------------------------------

LISTED = [
    {"name": "db", "size": 12, "permissions": "0600", "uid": 0, "gid": 0, "modified_at": "2025-09-02T07:32:37Z"},
    {"name": "old", "size": 3, "permissions": "0644", "uid": 1000, "gid": 1000, "mod_time": "2025-09-02T08:00:00Z"},
]


def test_client_secret_calls() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "GET":
            return httpx.Response(200, json=LISTED)
        if request.method == "DELETE":
            return httpx.Response(200)
        return httpx.Response(201 if request.method == "POST" else 200)

    client = client_for(handler)
    secrets = client.secrets()
    assert [s.name for s in secrets] == ["db", "old"]
    assert secrets[1].modified_at is not None and secrets[1].modified_at.hour == 8  # from mod_time
    assert client.create_secret("db", b"\x00value", permissions=0o640, uid=1000) is None
    assert json.loads(seen[-1].content) == {"name": "db", "data": b64(b"\x00value"), "permissions": "0640", "uid": 1000}
    client.update_secret("db", permissions="0600")
    assert (seen[-1].method, seen[-1].url.path, json.loads(seen[-1].content)) == (
        "PATCH",
        "/secrets/db",
        {"permissions": "0600"},
    )
    client.delete_secret("db")
    assert (seen[-1].method, seen[-1].url.path) == ("DELETE", "/secrets/db")
    with pytest.raises(ValueError):
        client.update_secret("db", b"")
    with pytest.raises(ValueError):
        client.create_secret("db", b"x" * (MAX_SECRET_BYTES + 1))
    assert len(seen) == 4


def test_cli_secret_list() -> None:
    api = FakeApi({("GET", "/secrets"): LISTED})
    result = api.run("secret", "list")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "NAME  SIZE  MODE  UID   GID   MODIFIED",
        "db    12    0600  0     0     2025-09-02 07:32:37",
        "old   3     0644  1000  1000  2025-09-02 08:00:00",
    ]
    assert [s["name"] for s in json.loads(api.run("secret", "list", "--json").stdout)] == ["db", "old"]


def test_cli_secret_values_come_from_a_file_or_stdin(tmp_path: Path) -> None:
    api = FakeApi(
        {
            ("POST", "/secrets"): httpx.Response(201, json=LISTED[0]),
            ("PATCH", "/secrets/db"): LISTED[0],
            ("DELETE", "/secrets/db"): httpx.Response(200),
        }
    )
    value_file = tmp_path / "value"
    value_file.write_bytes(b"from-a-file\n")
    result = api.run("secret", "create", "db", "--from-file", str(value_file), "--uid", "1000", "-m", "400")
    assert result.exit_code == 0, result.output
    sent = json.loads(api.last.content)
    assert sent == {"name": "db", "data": b64(b"from-a-file\n"), "permissions": "0400", "uid": 1000}

    result = api.run("secret", "create", "db", input=b"piped")
    assert result.exit_code == 0, result.output
    assert json.loads(api.last.content)["data"] == b64(b"piped")

    result = api.run("secret", "update", "db", "--from-file", "-", input=b"newer")
    assert result.exit_code == 0, result.output
    assert json.loads(api.last.content) == {"data": b64(b"newer")}
    assert api.run("secret", "update", "db", "--gid", "5").exit_code == 0
    assert json.loads(api.last.content) == {"gid": 5}
    assert api.run("secret", "delete", "db").stdout == "deleted secret db\n"

    requests = len(api.requests)
    assert api.run("secret", "update", "db").exit_code == 2  # nothing to change
    assert api.run("secret", "update", "db", "--from-file", "-", input=b"").exit_code == 2
    assert api.run("secret", "create", "db", "-m", "999", input=b"x").exit_code == 2
    assert api.run("secret", "create", "db", "--from-file", str(tmp_path / "missing")).exit_code == 2
    assert api.run("secret", "create", "db", "hunter2").exit_code == 2  # never a value as an argument
    assert len(api.requests) == requests


def test_cli_secret_conflict_is_one_error_line() -> None:
    api = FakeApi({("POST", "/secrets"): httpx.Response(409, json={"error": "secret 'db' already exists"})})
    result = api.run("secret", "create", "db", input=b"v")
    assert result.exit_code == 1
    assert result.stderr == "error: secret 'db' already exists\n"


# -- syncing to guests ----------------------------------------------------------------------------------


class UnreachableNode:
    """A node whose agent cannot be reached (as when the VM is paused or its agent restarts)."""

    def __init__(self, hostname: str, grant: list[str] | None) -> None:
        import asyncio

        self.hostname = hostname
        self.record = types.SimpleNamespace(secrets=grant)
        self.link = types.SimpleNamespace(ready=asyncio.Event())
        self.link.ready.set()
        self.asked = 0

    def agent(self) -> Any:
        self.asked += 1
        raise AgentError(f"agent on {self.hostname} is not reachable yet", code="agent_unavailable")


async def test_a_failed_sync_does_not_fail_the_change(tmp_path: Path, caplog: Any) -> None:
    everything = UnreachableNode("vm-all", None)
    restricted = UnreachableNode("vm-some", ["other"])
    secrets = Secrets(tmp_path / "secrets", lambda: [everything, restricted])  # type: ignore[list-item]
    await secrets.open()
    with caplog.at_level(logging.INFO):
        info = await secrets.create(new_secret("a"))
        await secrets.update("a", SecretChange.model_validate({"data": b64(b"hunter2 again")}))
        await secrets.delete("a")
    assert info.name == "a" and await secrets.infos() == []
    assert (everything.asked, restricted.asked) == (3, 0)  # only the nodes granted the secret are synced
    assert caplog.text.count("vm-all: secrets not synced") == 3
    assert "hunter2" not in caplog.text
    await secrets.close()


def test_cli_vm_add_grants_secrets() -> None:
    created = {"hostname": "sbox-1", "hostgroup": "sbox", "ip": "", "created_at": "2025-09-02T07:32:37Z", "arch": ""}
    api = FakeApi({("POST", "/hostgroup/sbox/nodes"): httpx.Response(201, json=created)})
    result = api.run("vm", "add", "sbox", "--secret", "a", "--secret", "b")
    assert result.exit_code == 0, result.output
    assert json.loads(api.last.content)["secrets"] == ["a", "b"]
    assert api.run("vm", "add", "sbox").exit_code == 0
    assert "secrets" not in json.loads(api.last.content)  # without: every secret


# -- keeping one guest in step --------------------------------------------------------------------------


async def test_a_failed_sync_is_retried_while_the_agent_is_connected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secrets_module, "RETRY_FIRST", 0.01)
    outcomes = [False, False, True]
    attempts: list[bool] = []

    async def attempt() -> bool:
        attempts.append(outcomes[len(attempts)])
        return attempts[-1]

    guest = GuestSync(attempt, lambda: True)
    await guest.request()  # returns after the first attempt, which failed
    assert attempts == [False]
    for _ in range(100):
        if len(attempts) == 3:
            break
        await asyncio.sleep(0.01)
    assert attempts == [False, False, True]


async def test_a_failed_sync_is_not_retried_once_the_agent_is_gone() -> None:
    attempts = 0

    async def attempt() -> bool:
        nonlocal attempts
        attempts += 1
        return False

    guest = GuestSync(attempt, lambda: False)
    await guest.request()
    await asyncio.sleep(0.05)
    assert attempts == 1


async def test_changes_during_a_sync_fold_into_one_more() -> None:
    release = asyncio.Event()
    attempts = 0

    async def attempt() -> bool:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await release.wait()
        return True

    guest = GuestSync(attempt, lambda: True)
    first = asyncio.ensure_future(guest.request())
    await asyncio.sleep(0.01)
    later = [asyncio.ensure_future(guest.request()) for _ in range(5)]
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.wait_for(asyncio.gather(first, *later), 5)
    assert attempts == 2


def test_the_guest_directory_must_be_roots_alone_and_in_memory(tmp_path: Path) -> None:
    from pyslicer.agent.secrets import SecretsError, filesystem_of, prepare_directory

    assert filesystem_of("/proc/self") == "proc"
    assert filesystem_of("/proc") == "proc"
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # anyone could swap the secrets directory for a link
    with pytest.raises(SecretsError, match="only root can change"):
        prepare_directory(str(shared / "secrets"))
