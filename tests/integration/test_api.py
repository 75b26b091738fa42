"""Node and host-group endpoints, auth, logs, metrics and bad input, against the real daemon."""

from __future__ import annotations

import time

import httpx

from tests.integration.conftest import RunningDaemon
from tests.integration.helpers import assert_error, wait_for_agent


def test_info_and_healthz(daemon: RunningDaemon, api: httpx.Client) -> None:
    info = api.get("/info").json()
    assert info["platform"] == "linux" and info["arch"] in ("amd64", "arm64") and info["version"]
    assert info["accel"] in ("kvm", "tcg") and info["accel_reason"]
    assert httpx.get(daemon.url + "/healthz").json() == {"status": "ok"}
    head = httpx.head(daemon.url + "/healthz")
    assert head.status_code == 200 and head.content == b""


def test_auth_is_required_over_tcp(daemon: RunningDaemon) -> None:
    assert_error(httpx.get(daemon.url + "/nodes"), 401)
    assert_error(httpx.get(daemon.url + "/nodes", headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(httpx.get(daemon.url + "/metrics", headers={"Authorization": "Basic eDp5"}), 401)
    token_file = daemon.data_dir / "auth" / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600


def test_host_groups(api: httpx.Client) -> None:
    groups = {g["name"]: g for g in api.get("/hostgroup").json()}
    assert groups["sbox"] == {
        "name": "sbox",
        "count": 0,
        "ram_bytes": 512 * 1024**2,
        "cpus": 2,
        "gpu_count": 0,
        "arch": groups["sbox"]["arch"],
    }
    assert groups["svc"]["count"] == 1


def test_service_vm_is_listed_protected_and_runs_its_userdata(api: httpx.Client) -> None:
    nodes = api.get("/hostgroup/svc/nodes").json()
    assert [n["hostname"] for n in nodes] == ["svc-1"]
    assert nodes[0]["status"] == "Running" and nodes[0]["ram_bytes"] == 384 * 1024**2
    assert_error(api.delete("/hostgroup/svc/nodes/svc-1"), 403, "protected")
    wait_for_agent(api, "svc-1")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # userdata runs in the background after the agent is up
        if api.get("/vm/svc-1/health").json()["userdata_ran"]:
            break
        time.sleep(0.3)
    result = api.post("/vm/svc-1/exec", params={"cmd": "cat", "args": "/var/tmp/from-userdata", "buffered": "1"}).json()
    assert result["stdout"] == "service-userdata\n"


def test_sandbox_listing_and_tags(api: httpx.Client, sandbox: str) -> None:
    everything = api.get("/nodes").json()
    mine = next(n for n in everything if n["hostname"] == sandbox)
    assert mine["hostgroup"] == "sbox" and mine["tags"] == ["shared", "team-a"]
    assert mine["cpus"] == 2 and mine["status"] == "Running" and mine["created_at"] and mine["ip"]
    assert mine["persistent"] is False
    service = next(n for n in api.get("/hostgroup/svc/nodes").json() if n["hostname"] == "svc-1")
    assert service["hostgroup"] == "svc" and service["persistent"] is True
    assert [n["hostname"] for n in api.get("/nodes", params={"tag": "shared"}).json()] == [sandbox]
    assert [n["hostname"] for n in api.get("/nodes", params={"tag_prefix": "team-"}).json()] == [sandbox]
    assert api.get("/hostgroup/sbox/nodes", params={"tag": "nothing"}).json() == []
    assert_error(api.get("/nodes", params={"tag": "a", "tag_prefix": "b"}), 400, "tag")


def test_a_query_inside_the_path_is_read_as_the_query(api: httpx.Client, sandbox: str) -> None:
    # The Go SDK's filtered GetHostGroupNodes escapes the "?" into the path.
    tagged = api.get("/hostgroup/sbox/nodes%3Ftag=shared")
    assert tagged.status_code == 200 and [n["hostname"] for n in tagged.json()] == [sandbox]
    assert api.get("/hostgroup/sbox/nodes%3ftag=nothing").json() == []
    assert [n["hostname"] for n in api.get("/hostgroup/sbox/nodes%3Ftag_prefix=team-").json()] == [sandbox]


def test_openapi_document(daemon: RunningDaemon) -> None:
    spec = httpx.get(daemon.url + "/openapi.json").json()  # public, like /healthz
    assert spec["openapi"].startswith("3.1")
    for path in ("/info", "/hostgroup/{name}/nodes", "/nodes", "/vm/{hostname}/exec", "/vm/{hostname}/health"):
        assert path in spec["paths"], path
    exec_op = spec["paths"]["/vm/{hostname}/exec"]["post"]
    assert {p["name"] for p in exec_op["parameters"]} >= {"cmd", "args", "env", "uid", "stdin", "buffered", "stdio"}
    assert "application/x-ndjson" in exec_op["responses"]["200"]["content"]
    assert "422" not in exec_op["responses"] and "400" in exec_op["responses"]


def test_health(api: httpx.Client, sandbox: str) -> None:
    health = api.get(f"/vm/{sandbox}/health").json()
    assert health["hostname"] == sandbox
    assert health["agent_uptime"] > 0 and health["system_uptime"] > health["agent_uptime"] / 10
    assert health["agent_version"]
    head = api.head(f"/vm/{sandbox}/health")
    assert head.status_code == 200 and head.content == b""
    assert_error(api.get("/vm/missing-9/health"), 404)
    assert api.head("/vm/missing-9/health").status_code == 404


def test_logs(api: httpx.Client, sandbox: str) -> None:
    whole = api.get(f"/vm/{sandbox}/logs", params={"lines": 0}).json()
    assert whole["hostname"] == sandbox and whole["lines"] == 0
    assert "slicer" in whole["content"]
    last = api.get(f"/vm/{sandbox}/logs", params={"lines": 2}).json()
    assert len(last["content"].splitlines()) <= 2
    assert whole["content"].endswith(last["content"])
    default = api.get(f"/vm/{sandbox}/logs").json()
    assert default["lines"] == 20
    assert_error(api.get(f"/vm/{sandbox}/logs", params={"lines": "many"}), 400, "lines")
    assert_error(api.get(f"/vm/{sandbox}/logs", params={"lines": "-1"}), 400, "lines")


def test_metrics(api: httpx.Client, sandbox: str) -> None:
    text = api.get("/metrics").text
    for name in (
        'slicer_vm_running{api="true",host_group="sbox",state="Running"}',
        "slicer_vm_launch_total",
        "slicer_api_requests_total",
        "slicer_api_request_duration_seconds_bucket",
        "slicer_system_load_avg_1",
        "slicer_system_memory_total_bytes",
        "slicer_system_open_files",
        'slicer_vm_gpu_count{host_group="svc"}',
    ):
        assert name in text, name


def test_bad_create_requests(api: httpx.Client) -> None:
    assert_error(api.post("/hostgroup/nope/nodes", json={}), 404)
    assert_error(api.post("/hostgroup/sbox/nodes?wait=forever", json={}), 400, "wait")
    assert_error(api.post("/hostgroup/sbox/nodes?wait=agent&timeout=soon", json={}), 400, "timeout")
    assert_error(api.post("/hostgroup/sbox/nodes", json={"cpus": 3}), 400, "cpus")
    assert_error(api.post("/hostgroup/sbox/nodes", json={"ram_bytes": 1024**4}), 400, "ram_bytes")
    assert_error(api.post("/hostgroup/sbox/nodes", json={"cpus": "two"}), 400, "cpus")
    assert_error(api.post("/hostgroup/sbox/nodes", json={"tags": "x"}), 400, "tags")
    assert_error(api.post("/hostgroup/sbox/nodes", json=[1]), 400)
    assert_error(api.post("/hostgroup/sbox/nodes", content=b"{not json"), 400, "JSON")
    assert_error(api.post("/hostgroup/sbox/nodes", content=b"[" * 100_000), 400, "nested")
    assert_error(api.post("/hostgroup/sbox/nodes", json={"hostname": "Bad_Name"}), 400, "hostname")
    assert_error(api.post("/hostgroup/sbox/nodes", json={"hostname": "ab\n"}), 400, "hostname")
    assert_error(api.post("/hostgroup/sbox/nodes", json={"userdata": "#" * 50_000}), 400, "userdata")
    assert_error(api.delete("/hostgroup/sbox/nodes/sbox-999"), 404)
    assert_error(api.get("/nodes/"), 404)
    assert_error(api.put("/nodes"), 405)
    assert all(n["hostgroup"] != "sbox" or "shared" in n["tags"] for n in api.get("/nodes").json())
