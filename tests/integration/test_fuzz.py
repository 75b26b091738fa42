"""The live daemon fuzzed from its own OpenAPI document (schemathesis): a few hundred generated requests,
valid and invalid, over every operation, with one booted guest behind the per-VM routes. Never a 5xx or
a traceback; every answer fits the document (status, content type, body).

The guest is one of the fuzz's own: generated copies and removes write and delete wherever they like in it
(`/` is a favourite of generators), so it is not the session's shared sandbox; and the secrets the fuzz
stores are removed afterwards, so they are not synced into later tests' guests."""

from __future__ import annotations

from collections import Counter
from typing import Any
from urllib.parse import quote

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.conftest import RunningDaemon
from tests.integration.helpers import created_sandbox

EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 25}  # per operation
CALL_TIMEOUT = 20.0  # a generated command may run for long (`sleep 1e9`); leaving stops it
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


ENDING_ROUTES = {"/vm/{hostname}/shutdown", "/vm/{hostname}/relaunch", "/vm/{hostname}/suspend"}


def auth(daemon: RunningDaemon) -> dict[str, str]:
    return {"Authorization": f"Bearer {daemon.token}"}


def end_watches(case: Any) -> None:
    """A generated watch ends within a second (else its heartbeats keep the read going forever)."""
    if case.operation.path.endswith("/fs/watch"):
        case.query = {**(case.query or {}), "timeout": "1s"}


def fuzz(operation: Any, mode: GenerationMode, daemon: RunningDaemon, sandbox: str, seen: Counter[str]) -> None:
    path_parameters: dict[str, str] | None = None
    if operation.path in ENDING_ROUTES:
        path_parameters = {"hostname": "fuzz-absent"}  # (they end the guest; their own tests cover them)
    elif operation.path.startswith("/vm/{hostname}"):
        path_parameters = {"hostname": sandbox}  # the per-VM routes reach a real guest
    elif operation.method.upper() == "GET" and operation.path == "/hostgroup/{name}/nodes":
        path_parameters = {"name": "sbox"}  # (never for POST: every generated create would boot a VM)

    @given(case=operation.as_strategy(mode, path_parameters=path_parameters))
    @settings(max_examples=EXAMPLES[mode], deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: Any) -> None:
        end_watches(case)
        try:
            response = case.call_and_validate(
                base_url=daemon.url,
                headers=auth(daemon),
                checks=CHECKS,
                timeout=CALL_TIMEOUT,
            )
        except requests.exceptions.ReadTimeout:
            seen["timeout"] += 1
            return  # a long-running generated command: the client leaving is not a server error
        seen[str(response.status_code)] += 1
        assert "Traceback" not in response.text
        assert daemon.process.poll() is None, daemon.log()
        if operation.path == "/vm/{hostname}/pause" and response.status_code == 200:
            resumed = requests.post(f"{daemon.url}/vm/{sandbox}/resume", headers=auth(daemon), timeout=CALL_TIMEOUT)
            assert resumed.status_code == 200, resumed.text

    try:
        run()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE  # nothing to get wrong in an operation without parameters


def test_generated_requests_never_break_the_daemon(daemon: RunningDaemon, api: httpx.Client) -> None:
    schema = schemathesis.openapi.from_url(daemon.url + "/openapi.json")
    seen: Counter[str] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    secrets_before = {secret["name"] for secret in api.get("/secrets").json()}
    with created_sandbox(api) as sandbox:
        try:
            for operation in operations:
                for mode in EXAMPLES:
                    fuzz(operation, mode, daemon, sandbox, seen)
            _check_survivors(daemon, sandbox, seen, len(operations))
        finally:
            for secret in api.get("/secrets").json():
                if secret["name"] not in secrets_before:
                    api.delete(f"/secrets/{quote(secret['name'], safe='')}")


def _check_survivors(daemon: RunningDaemon, sandbox: str, seen: Counter[str], operations: int) -> None:
    print(f"fuzzed {operations} operations: {sum(seen.values())} requests, by status {dict(sorted(seen.items()))}")
    assert not any(status.startswith("5") for status in seen)
    assert daemon.process.poll() is None
    health = requests.get(f"{daemon.url}/vm/{sandbox}/health", headers=auth(daemon))
    assert health.status_code == 200  # the guest survived it
