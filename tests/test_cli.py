"""Unit tests of the `slicer` CLI: click's CliRunner, with the client on an httpx.MockTransport."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from pyslicer.cli._common import CliState, default_exec_client_factory
from pyslicer.cli.main import cli
from pyslicer.client import SlicerClient
from pyslicer.client._socket_exec import SocketExecClient
from pyslicer.errors import ConfigError
from tests.fake_api import Recorder, serve


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SLICER_URL", "SLICER_TOKEN", "SLICER_TOKEN_FILE", "SLICER_DATA_DIR", "SLICER_DEBUG"):
        monkeypatch.delenv(name, raising=False)


class FakeApi(Recorder):
    """Also records the client factory's arguments."""

    def __init__(self, routes: dict[tuple[str, str], Any] | None = None) -> None:
        super().__init__(routes)
        self.factory_args: list[tuple[str | None, str | None, str | None]] = []

    def factory(self, url: str | None, token: str | None, token_file: str | None) -> SlicerClient:
        self.factory_args.append((url, token, token_file))
        return SlicerClient(
            url=url or "http://slicer.test", token=token, token_file=token_file, transport=httpx.MockTransport(self)
        )

    def run(self, *args: str, input: bytes | str | None = None, env: dict[str, str] | None = None) -> Result:
        state = CliState(client_factory=self.factory, exec_client_factory=self.factory)
        return CliRunner().invoke(cli, list(args), obj=state, input=input, env=env)


def ndjson(*frames: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, content="".join(json.dumps(f) + "\n" for f in frames).encode())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


NODES = [
    {
        "hostname": "vm-1",
        "hostgroup": "vm",
        "ip": "192.168.137.2",
        "ram_bytes": 4 << 30,
        "cpus": 2,
        "created_at": "2025-09-02T08:32:37.667253315+01:00",
        "status": "Running",
        "tags": ["env=dev", "team=a"],
    },
    {
        "hostname": "sandbox-12",
        "hostgroup": "sandbox",
        "ip": "192.168.138.14",
        "ram_bytes": 512 << 20,
        "cpus": 1,
        "created_at": "2025-09-02T09:00:00Z",
        "status": "Paused",
    },
]


# -- daemon info and lists -------------------------------------------------------------------------


def test_info() -> None:
    info = {"version": "0.1.0", "git_commit": "abc123", "platform": "linux", "arch": "amd64"}
    api = FakeApi({("GET", "/info"): info})
    result = api.run("info")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "url:        http://slicer.test",
        "version:    0.1.0",
        "git commit: abc123",
        "platform:   linux",
        "arch:       amd64",
    ]
    assert json.loads(api.run("info", "--json").stdout) == info


def test_vm_list_table() -> None:
    api = FakeApi({("GET", "/nodes"): NODES})
    result = api.run("vm", "list")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "HOSTNAME    GROUP    IP              STATUS   CPUS  RAM     TAGS            CREATED",
        "vm-1        vm       192.168.137.2   Running  2     4GiB    env=dev,team=a  2025-09-02 07:32:37",
        "sandbox-12  sandbox  192.168.138.14  Paused   1     512MiB  -               2025-09-02 09:00:00",
    ]


def test_vm_list_filters_and_json() -> None:
    api = FakeApi({("GET", "/hostgroup/vm/nodes"): NODES[:1], ("GET", "/nodes"): NODES})
    result = api.run("vm", "list", "--group", "vm", "--tag", "env=dev")
    assert result.exit_code == 0, result.output
    assert api.last.url.path == "/hostgroup/vm/nodes"
    assert api.last.url.params.multi_items() == [("tag", "env=dev")]

    result = api.run("vm", "list", "--json", "--tag-prefix", "env=")
    assert api.last.url.params.multi_items() == [("tag_prefix", "env=")]
    assert [n["hostname"] for n in json.loads(result.stdout)] == ["vm-1", "sandbox-12"]

    assert api.run("vm", "list", "--tag", "a", "--tag-prefix", "b").exit_code == 2


def test_vm_list_empty() -> None:
    api = FakeApi({("GET", "/nodes"): []})
    result = api.run("vm", "list")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "No VMs found." in result.stderr
    assert json.loads(api.run("vm", "list", "--json").stdout) == []


def test_vm_group() -> None:
    api = FakeApi(
        {
            ("GET", "/hostgroup"): [
                {"name": "vm", "count": 1, "ram_bytes": 4 << 30, "cpus": 2, "gpu_count": 0, "arch": "x86_64"},
                {"name": "sandbox", "count": 0, "ram_bytes": 1536 << 20, "cpus": 4, "arch": "x86_64"},
            ]
        }
    )
    result = api.run("vm", "group")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "NAME     COUNT  CPUS  RAM     GPUS  ARCH",
        "vm       1      2     4GiB    0     x86_64",
        "sandbox  0      4     1.5GiB  0     x86_64",
    ]


# -- vm add / delete -------------------------------------------------------------------------------


def created(request: httpx.Request) -> httpx.Response:
    return httpx.Response(201, json={"hostname": "vm-3", "ip": "192.168.137.4/24", "hostgroup": "vm"})


def test_vm_add(tmp_path: Path) -> None:
    api = FakeApi({("POST", "/hostgroup/vm/nodes"): created})
    result = api.run("vm", "add", "vm")
    assert result.exit_code == 0, result.output
    assert result.stdout == "vm-3\n"
    assert json.loads(api.last.content) == {}
    assert api.last.url.query == b""

    script = tmp_path / "userdata.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    result = api.run(
        "vm", "add", "vm", "--cpus", "2", "--ram-gb", "1.5", "--userdata-file", str(script),
        "--tag", "a", "--tag", "b=c", "--wait", "userdata", "--timeout", "90s",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(api.last.content) == {
        "cpus": 2,
        "ram_bytes": 1536 << 20,
        "userdata": "#!/bin/sh\necho hi\n",
        "tags": ["a", "b=c"],
    }
    assert api.last.url.params.multi_items() == [("wait", "userdata"), ("timeout", "1m30s")]

    result = api.run("vm", "add", "vm", "--ram-mb", "512", "--userdata", "echo x", "--persistent", "--json")
    assert json.loads(api.last.content) == {"ram_bytes": 512 << 20, "userdata": "echo x", "persistent": True}
    assert json.loads(result.stdout)["hostname"] == "vm-3"


@pytest.mark.parametrize("command", ["restore", "relaunch"])
def test_vm_restore_and_relaunch_wait(command: str) -> None:
    node = {"hostname": "vm-1", "hostgroup": "vm", "ip": "", "created_at": "2025-09-02T09:00:00Z", "status": "Running"}
    api = FakeApi({("POST", f"/vm/vm-1/{command}"): node})
    result = api.run("vm", command, "vm-1")
    assert result.exit_code == 0, result.output
    assert api.last.url.params.multi_items() == [("wait", "agent"), ("timeout", "5m0s")]
    result = api.run("vm", command, "vm-1", "--wait", "none", "--timeout", "90s")
    assert result.exit_code == 0, result.output
    assert api.last.url.params.multi_items() == [("timeout", "1m30s")]
    assert api.run("vm", command, "vm-1", "--wait", "later").exit_code == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--ram-gb", "1", "--ram-mb", "512"], "use one of --ram-gb and --ram-mb"),
        (["--userdata", "x", "--userdata-file", __file__], "use one of --userdata and --userdata-file"),
        (["--cpus", "0"], "'--cpus'"),
        (["--wait", "forever"], "'--wait'"),
        (["--timeout", "soon"], "'--timeout'"),
        (["--ram-gb", "-1"], "'--ram-gb'"),
    ],
)
def test_vm_add_usage_errors(args: list[str], needle: str) -> None:
    api = FakeApi({("POST", "/hostgroup/vm/nodes"): created})
    result = api.run("vm", "add", "vm", *args)
    assert result.exit_code == 2
    assert needle in result.stderr
    assert api.requests == []


def test_vm_delete_infers_group() -> None:
    deleted = {"message": "Node deleted", "disk_removed": "true"}
    api = FakeApi({("GET", "/nodes"): NODES, ("DELETE", "/hostgroup/sandbox/nodes/sandbox-12"): deleted})
    result = api.run("vm", "delete", "sandbox-12")
    assert result.exit_code == 0, result.output
    assert result.stdout == "deleted sandbox-12\n"
    assert api.last.method == "DELETE"

    api.requests.clear()
    result = api.run("vm", "delete", "sandbox-12", "--group", "sandbox", "--json")
    assert [r.method for r in api.requests] == ["DELETE"]
    assert json.loads(result.stdout)["disk_removed"] == "true"


def test_vm_delete_group_from_group_listing() -> None:
    api = FakeApi(
        {
            ("GET", "/nodes"): [{"hostname": "box-1"}],
            ("GET", "/hostgroup"): [{"name": "a"}, {"name": "boxes"}],
            ("GET", "/hostgroup/a/nodes"): [],
            ("GET", "/hostgroup/boxes/nodes"): [{"hostname": "box-1"}],
            ("DELETE", "/hostgroup/boxes/nodes/box-1"): {"message": "Node deleted"},
        }
    )
    assert api.run("vm", "delete", "box-1").exit_code == 0
    assert api.last.url.path == "/hostgroup/boxes/nodes/box-1"


def test_vm_delete_unknown() -> None:
    api = FakeApi({("GET", "/nodes"): NODES})
    result = api.run("vm", "delete", "vm-9")
    assert result.exit_code == 1
    assert result.stderr == "error: no VM named 'vm-9'\n"


# -- vm exec ---------------------------------------------------------------------------------------


def exec_answer(*frames: dict[str, Any]) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        return ndjson(*frames)

    return answer


def test_vm_exec_streams_and_exits_with_code() -> None:
    api = FakeApi(
        {
            ("POST", "/vm/vm-1/exec"): exec_answer(
                {"type": "started", "pid": 9},
                {"type": "stdout", "data": b64(b"out \xff\n"), "encoding": "base64"},
                {"type": "stderr", "data": b64(b"err\n"), "encoding": "base64"},
                {"type": "exit", "exit_code": 3},
            )
        }
    )
    result = api.run(
        "vm", "exec", "vm-1", "--uid", "1000", "--gid", "100", "--cwd", "/srv", "--shell", "/bin/sh",
        "-e", "A=1", "--env", "B=x=y", "--no-stdin", "--", "ls", "-la", "/",
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert result.stdout_bytes == b"out \xff\n"
    assert result.stderr_bytes == b"err\n"
    assert api.last.url.params.multi_items() == [
        ("cmd", "ls"),
        ("args", "-la"),
        ("args", "/"),
        ("env", "A=1"),
        ("env", "B=x=y"),
        ("uid", "1000"),
        ("gid", "100"),
        ("cwd", "/srv"),
        ("shell", "/bin/sh"),
        ("stdout", "true"),
        ("stderr", "true"),
        ("stdio", "base64"),
    ]


def test_vm_exec_pipes_stdin_when_not_a_tty() -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        return ndjson({"type": "stdout", "data": b64(request.read()), "encoding": "base64"}, {"type": "exit"})

    api = FakeApi({("POST", "/vm/vm-1/exec"): echo})
    result = api.run("vm", "exec", "vm-1", "cat", input=b"piped \x00 data")
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == b"piped \x00 data"
    assert api.last.url.params["stdin"] == "true"

    api.run("vm", "exec", "vm-1", "--no-stdin", "cat", input=b"ignored")
    assert "stdin" not in api.last.url.params
    assert api.last.content == b""


def test_vm_exec_error_frame() -> None:
    api = FakeApi({("POST", "/vm/vm-1/exec"): exec_answer({"error": 'exec: "nope": not found', "exit_code": 127})})
    result = api.run("vm", "exec", "vm-1", "--no-stdin", "nope")
    assert result.exit_code == 127
    assert result.stderr == 'error: exec: "nope": not found\n'

    api.routes[("POST", "/vm/vm-1/exec")] = exec_answer({"type": "started"}, {"type": "error", "error": "broke"})
    result = api.run("vm", "exec", "vm-1", "--no-stdin", "x")
    assert (result.exit_code, result.stderr) == (127, "error: broke\n")


def test_vm_exec_signal_and_legacy_frames() -> None:
    api = FakeApi({("POST", "/vm/vm-1/exec"): exec_answer({"type": "exit", "exit_code": -1, "signal": "SIGKILL"})})
    assert api.run("vm", "exec", "vm-1", "--no-stdin", "sleep", "9").exit_code == 137

    api.routes[("POST", "/vm/vm-1/exec")] = exec_answer(
        {"stdout": "a\n", "stderr": "", "exit_code": 0}, {"stdout": "", "stderr": "", "exit_code": 4}
    )
    result = api.run("vm", "exec", "vm-1", "--no-stdin", "x")
    assert (result.exit_code, result.stdout) == (4, "a\n")


def test_vm_exec_json() -> None:
    api = FakeApi(
        {
            ("POST", "/vm/vm-1/exec"): exec_answer(
                {"type": "stdout", "data": "hi\n"}, {"type": "stderr", "data": "e"}, {"type": "exit", "exit_code": 1}
            )
        }
    )
    result = api.run("vm", "exec", "vm-1", "--json", "--no-stdin", "x")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"stdout": "hi\n", "stderr": "e", "exit_code": 1, "error": None}


@pytest.mark.parametrize("args", [["vm-1"], ["vm-1", "--env", "NOEQUALS", "x"], ["vm-1", "--uid", "-1", "x"]])
def test_vm_exec_usage_errors(args: list[str]) -> None:
    api = FakeApi()
    result = api.run("vm", "exec", *args)
    assert result.exit_code == 2
    assert api.requests == []


def test_vm_exec_api_error() -> None:
    api = FakeApi({("POST", "/vm/vm-1/exec"): httpx.Response(409, json={"error": "vm-1 is paused"})})
    result = api.run("vm", "exec", "vm-1", "--no-stdin", "true")
    assert (result.exit_code, result.stderr) == (1, "error: vm-1 is paused\n")


# -- health, ready, logs ---------------------------------------------------------------------------


HEALTH = {
    "hostname": "vm-1",
    "agent_uptime": 65_000_000_000,
    "agent_version": "0.1.0",
    "system_uptime": 3_725_000_000_000,
    "userdata_ran": True,
    "userdata_exit_code": 0,
}


def test_vm_health() -> None:
    api = FakeApi({("GET", "/vm/vm-1/health"): HEALTH})
    result = api.run("vm", "health", "vm-1")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "hostname:      vm-1",
        "agent:         up",
        "agent version: 0.1.0",
        "agent uptime:  1m5s",
        "system uptime: 1h2m",
        "userdata ran:  yes (exit code 0)",
    ]
    assert json.loads(api.run("vm", "health", "vm-1", "--json").stdout)["agent_uptime"] == 65_000_000_000


def test_vm_ready() -> None:
    answers = [httpx.Response(503, json={"error": "agent not connected"}), {"agent_uptime": 0}, HEALTH]

    def health(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        return answer if isinstance(answer, httpx.Response) else httpx.Response(200, json=answer)

    api = FakeApi({("GET", "/vm/vm-1/health"): health})
    result = api.run("vm", "ready", "vm-1", "--userdata")
    assert result.exit_code == 0, result.output
    assert result.stdout == "vm-1 is ready\n"


def test_vm_ready_times_out() -> None:
    api = FakeApi({("GET", "/vm/vm-1/health"): {"agent_uptime": 0}})
    result = api.run("vm", "ready", "vm-1", "--timeout", "300ms")
    assert result.exit_code == 1
    assert result.stderr == "error: vm-1: agent not ready after 300ms (agent not up yet)\n"

    api = FakeApi({("GET", "/vm/vm-1/health"): httpx.Response(404, json={"error": "vm-1 not found"})})
    result = api.run("vm", "ready", "vm-1", "--timeout", "1m")
    assert (result.exit_code, result.stderr) == (1, "error: vm-1 not found\n")


def test_vm_logs() -> None:
    api = FakeApi({("GET", "/vm/vm-1/logs"): {"hostname": "vm-1", "lines": 2, "content": "one\ntwo\n"}})
    result = api.run("vm", "logs", "vm-1")
    assert (result.exit_code, result.stdout) == (0, "one\ntwo\n")
    assert api.last.url.query == b""
    api.run("vm", "logs", "vm-1", "-n", "0")
    assert api.last.url.params.multi_items() == [("lines", "0")]
    assert json.loads(api.run("vm", "logs", "vm-1", "--json").stdout)["content"] == "one\ntwo\n"
    assert api.run("vm", "logs", "vm-1", "--lines", "-5").exit_code == 2


# -- options and errors ----------------------------------------------------------------------------


def test_connection_options(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    api = FakeApi({("GET", "/info"): {"version": "1"}})

    api.run("info", "--url", "http://h:1", "--token", "t")
    assert api.last.headers["authorization"] == "Bearer t"
    api.run("info", env={"SLICER_URL": "/run/slicer.sock", "SLICER_TOKEN": "env-token"})
    # a --token-file on the command line beats SLICER_TOKEN from the environment
    result = api.run("info", "--token-file", str(token_file), env={"SLICER_TOKEN": "env-token"})
    assert result.exit_code == 0, result.output
    assert api.last.headers["authorization"] == "Bearer file-token"
    assert api.factory_args == [
        ("http://h:1", "t", None),
        ("/run/slicer.sock", "env-token", None),
        (None, None, str(token_file)),
    ]


def test_api_errors_are_one_line() -> None:
    api = FakeApi({("GET", "/nodes"): httpx.Response(500, json={"error": "database on fire", "code": "internal"})})
    result = api.run("vm", "list")
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", "error: database on fire\n")
    assert "Traceback" not in result.output


def test_unauthorized_hint() -> None:
    api = FakeApi({("GET", "/info"): httpx.Response(401, json={"error": "unauthorized"})})
    result = api.run("info")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: unauthorized\nhint: pass --token or --token-file")


def test_connection_failure(tmp_path: Path) -> None:
    def factory(url: str | None, token: str | None, token_file: str | None) -> SlicerClient:
        return SlicerClient(url=str(tmp_path / "slicer.sock"))

    result = CliRunner().invoke(cli, ["vm", "list"], obj=CliState(client_factory=factory))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot reach slicer at {tmp_path / 'slicer.sock'}: ")


def test_bad_token_file_and_url(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["info", "--token-file", str(tmp_path / "none")], obj=CliState())
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot read token file")
    result = CliRunner().invoke(cli, ["info", "--url", "ftp://x"], obj=CliState())
    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid slicer URL 'ftp://x'")


def test_unexpected_errors_have_no_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def factory(url: str | None, token: str | None, token_file: str | None) -> SlicerClient:
        raise RuntimeError("kaboom")

    result = CliRunner().invoke(cli, ["info"], obj=CliState(client_factory=factory))
    assert (result.exit_code, result.stderr) == (1, "error: RuntimeError: kaboom\n")

    monkeypatch.setenv("SLICER_DEBUG", "1")
    result = CliRunner().invoke(cli, ["info"], obj=CliState(client_factory=factory))
    assert isinstance(result.exception, RuntimeError)


def test_version_and_help() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("slicer, version ")
    result = CliRunner().invoke(cli, ["vm", "-h"])
    assert result.exit_code == 0
    for command in ("add", "delete", "exec", "group", "health", "list", "logs", "ready"):
        assert command in result.stdout


# -- up and image build ----------------------------------------------------------------------------


def fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **attrs: Any) -> None:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)


def test_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[Any] = []
    config = tmp_path / "slicer.yaml"
    config.write_text("config: {}\n")

    def load_config(path: Path | None) -> str:
        calls.append(("load", path))
        return "CONFIG"

    fake_module(monkeypatch, "pyslicer.config", load_config=load_config)
    fake_module(monkeypatch, "pyslicer.serve", serve=lambda cfg, data_dir: calls.append(("serve", cfg, data_dir)))

    result = CliRunner().invoke(cli, ["up", str(config), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert calls == [("load", config), ("serve", "CONFIG", tmp_path / "data")]

    calls.clear()
    result = CliRunner().invoke(cli, ["up"], env={"SLICER_DATA_DIR": str(tmp_path / "env")})
    assert result.exit_code == 0, result.output
    assert calls == [("load", None), ("serve", "CONFIG", tmp_path / "env")]

    calls.clear()
    result = CliRunner().invoke(cli, ["up"])
    assert calls[-1] == ("serve", "CONFIG", Path("/var/lib/slicer"))


def test_up_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def bad_config(path: Path | None) -> None:
        raise ConfigError("config.host_groups[0].vcpu: must be at least 1")

    fake_module(monkeypatch, "pyslicer.config", load_config=bad_config)
    fake_module(monkeypatch, "pyslicer.serve", serve=lambda cfg, data_dir: None)
    config = tmp_path / "c.yaml"
    config.write_text("")
    result = CliRunner().invoke(cli, ["up", str(config)])
    assert (result.exit_code, result.stderr) == (1, "error: config.host_groups[0].vcpu: must be at least 1\n")

    result = CliRunner().invoke(cli, ["up", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_image_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[Any] = []

    async def ensure_image(data_dir: Path, *, progress: Callable[[str], None], force: bool) -> None:
        progress("building rootfs")
        calls.append((data_dir, force))

    fake_module(monkeypatch, "pyslicer.image", ensure_image=ensure_image)
    result = CliRunner().invoke(cli, ["image", "build", "--data-dir", str(tmp_path), "--force"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "building rootfs\n"
    assert calls == [(tmp_path, True)]


# -- start-up: what each command imports --------------------------------------------------------------


HEAVY = ("httpx", "httpcore", "pydantic", "asyncio")


def run_slicer(*args: str, stdin: bytes = b"") -> tuple[subprocess.CompletedProcess[bytes], set[str]]:
    """``slicer ARGS`` in a fresh interpreter, as the console script runs it; also which heavy modules it loaded."""
    code = f"""
import atexit, sys
atexit.register(lambda: print("imported:", *(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr))
sys.argv = ["slicer", *{list(args)!r}]
from pyslicer.cli.main import main
main()
"""
    done = subprocess.run([sys.executable, "-c", code], input=stdin, capture_output=True, timeout=60)
    lines = done.stderr.decode().splitlines()
    imported = set(lines[-1].split()[1:]) if lines and lines[-1].startswith("imported:") else {"?"}
    return done, imported


def test_help_imports_no_client() -> None:
    done, imported = run_slicer("--help")
    assert done.returncode == 0 and b"vm" in done.stdout
    assert imported == set()
    done, imported = run_slicer("vm", "exec", "--help")
    assert done.returncode == 0 and imported == set()


EXEC_ROUTES: dict[tuple[str, str], Any] = {
    ("POST", "/vm/vm-1/exec"): lambda request: ndjson(
        {"type": "started", "pid": 3},
        {"type": "stdout", "data": b64(request.read().upper()), "encoding": "base64"},
        {"type": "stderr", "data": b64(b"to-err\n"), "encoding": "base64"},
        {"type": "exit", "exit_code": 5},
    ),
    ("POST", "/vm/gone/exec"): httpx.Response(404, json={"error": "VM 'gone' not found", "code": "not_found"}),
}


def test_vm_exec_runs_without_httpx(tmp_path: Path) -> None:
    recorder = Recorder(dict(EXEC_ROUTES))
    with serve(recorder, tmp_path) as url:
        done, imported = run_slicer(
            "vm", "exec", "--url", url, "--token", "t", "vm-1", "--", "tr", "a-z", "A-Z", stdin=b"abc"
        )
        missing, _ = run_slicer("vm", "exec", "--url", url, "gone", "--", "true")
    assert (done.returncode, done.stdout) == (5, b"ABC")
    assert done.stderr.startswith(b"to-err\n")
    assert imported == set()
    request = recorder.requests[0]
    assert request.url.params.multi_items()[:4] == [("cmd", "tr"), ("args", "a-z"), ("args", "A-Z"), ("stdin", "true")]
    assert request.headers["authorization"] == "Bearer t"
    assert missing.returncode == 1 and missing.stderr.startswith(b"error: VM 'gone' not found\n")


def test_vm_exec_with_the_default_clients(tmp_path: Path) -> None:
    recorder = Recorder(dict(EXEC_ROUTES))
    with serve(recorder, tmp_path) as url:
        result = CliRunner().invoke(
            cli, ["vm", "exec", "--url", url, "vm-1", "--", "cat"], input=b"piped", obj=CliState()
        )
        no_stdin = CliRunner().invoke(cli, ["vm", "exec", "--url", url, "--no-stdin", "vm-1", "--", "true"])
    assert (result.exit_code, result.stdout_bytes, result.stderr_bytes) == (5, b"PIPED", b"to-err\n")
    assert (no_stdin.exit_code, no_stdin.stdout_bytes) == (5, b"")
    assert "stdin" not in recorder.last.url.params and recorder.last.content == b""


def test_exec_client_choice(tmp_path: Path) -> None:
    assert isinstance(default_exec_client_factory(str(tmp_path / "api.sock"), None, None), SocketExecClient)
    assert isinstance(default_exec_client_factory("http://127.0.0.1:8080", None, None), SocketExecClient)
    assert isinstance(default_exec_client_factory("https://slicer.example.com", None, None), SlicerClient)
