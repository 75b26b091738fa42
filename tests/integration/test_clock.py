"""A fresh guest runs on the host's time from its first command on (docs/protocol.md, "The guest's clock")."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.helpers import exec_buffered

TOLERANCE = 0.05


@pytest.fixture
def fresh_sandbox(api: httpx.Client) -> Iterator[str]:
    """A sandbox nothing has talked to but the create: no health call (which once carried the time)."""
    response = api.post("/hostgroup/sbox/nodes?wait=agent&timeout=3m", json={})
    assert response.status_code in (200, 201), response.text
    hostname: str = response.json()["hostname"]
    try:
        yield hostname
    finally:
        api.delete(f"/hostgroup/sbox/nodes/{hostname}")


def guest_offset(api: httpx.Client, hostname: str) -> tuple[float, float]:
    """Bounds on (guest clock - host clock), in seconds, from one `date` in the guest: the guest read its clock
    somewhere between the moments the host sent the request and got the answer."""
    before = time.time()
    result = exec_buffered(api, hostname, "date", "+%s.%N")
    after = time.time()
    assert result["exit_code"] == 0, result
    guest = float(result["stdout"])
    return guest - after, guest - before


def test_the_first_exec_already_has_the_host_time(api: httpx.Client, fresh_sandbox: str) -> None:
    low, high = guest_offset(api, fresh_sandbox)
    assert low <= TOLERANCE and high >= -TOLERANCE, (
        f"the guest's clock is {low:+.3f}..{high:+.3f} s off the host's (the round trip took {high - low:.3f} s)"
    )
    for _ in range(5):  # and stays with it
        time.sleep(0.5)
        low, high = guest_offset(api, fresh_sandbox)
        assert low <= TOLERANCE and high >= -TOLERANCE, f"later, the guest's clock is {low:+.3f}..{high:+.3f} s off"
