from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx


@contextlib.contextmanager
def created_sandbox(api: httpx.Client, wait: str = "agent", **body: Any) -> Iterator[str]:
    """A sandbox in the sbox group, deleted when the block ends (also when it fails)."""
    response = api.post(f"/hostgroup/sbox/nodes?wait={wait}&timeout=3m", json=body)
    assert response.status_code in (200, 201), response.text
    hostname: str = response.json()["hostname"]
    try:
        yield hostname
    finally:
        api.delete(f"/hostgroup/sbox/nodes/{hostname}")


def frames(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def exec_stream(api: httpx.Client, hostname: str, cmd: str, *args: str, **params: Any) -> list[dict[str, Any]]:
    query: list[tuple[str, str]] = [("cmd", cmd), *(("args", a) for a in args)]
    query += [(k, str(v)) for k, v in params.items()]
    response = api.post(f"/vm/{hostname}/exec", params=query)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return frames(response)


def exec_buffered(api: httpx.Client, hostname: str, cmd: str, *args: str, **params: Any) -> dict[str, Any]:
    query: list[tuple[str, str]] = [("cmd", cmd), ("buffered", "true"), *(("args", a) for a in args)]
    query += [(k, str(v)) for k, v in params.items()]
    response = api.post(f"/vm/{hostname}/exec", params=query)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def sh(api: httpx.Client, hostname: str, script: str) -> str:
    result = exec_buffered(api, hostname, "/bin/sh", "-c", script)
    assert result["exit_code"] == 0, result
    return str(result["stdout"])


def wait_for_agent(api: httpx.Client, hostname: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = api.get(f"/vm/{hostname}/health")
        if response.status_code == 200:
            body: dict[str, Any] = response.json()
            return body
        time.sleep(0.2)
    raise AssertionError(f"agent on {hostname} never answered: {response.status_code} {response.text}")


def assert_error(response: httpx.Response, status: int, *needles: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert "code" in body
    for needle in needles:
        assert needle in body["error"], body
