"""A fresh guest runs on the host's time from its first command on (docs/protocol.md, "The guest's clock")."""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.helpers import created_sandbox

TOLERANCE = 0.05


@pytest.fixture
def fresh_sandbox(api: httpx.Client) -> Iterator[str]:
    """A sandbox nothing has talked to but the create: no health call (which once carried the time)."""
    with created_sandbox(api) as hostname:
        yield hostname


def guest_offset(api: httpx.Client, hostname: str) -> tuple[float, float]:
    """Bounds on (guest clock - host clock) in seconds, from one streamed exec of `date`.

    The guest read its clock twice: for the exec's started_at (before the spawn) and in `date`; each read
    happened after the host sent the request and before the host got the frame that carries it."""
    params = [("cmd", "date"), ("args", "+%s.%N")]
    sent = time.time()
    with api.stream("POST", f"/vm/{hostname}/exec", params=params) as response:
        assert response.status_code == 200, response.read()
        frames = [(time.time(), json.loads(line)) for line in response.iter_lines() if line.strip()]
    arrived, started = next((t, f) for t, f in frames if f["type"] == "started")
    started_at = datetime.datetime.fromisoformat(started["started_at"].replace("Z", "+00:00")).timestamp()
    printed_at, printed = next((t, f) for t, f in frames if f["type"] == "stdout")
    date = float(printed["data"])
    assert frames[-1][1]["type"] == "exit" and frames[-1][1]["exit_code"] == 0, frames
    low = max(started_at - arrived, date - printed_at)
    high = min(started_at - sent, date - sent)
    assert low <= high, f"inconsistent readings: {frames}"
    return low, high


def test_the_first_exec_already_has_the_host_time(api: httpx.Client, fresh_sandbox: str) -> None:
    low, high = guest_offset(api, fresh_sandbox)
    print(f"first exec: the guest's clock is {low:+.4f}..{high:+.4f} s off the host's")
    assert low <= TOLERANCE and high >= -TOLERANCE, f"the guest's clock is {low:+.3f}..{high:+.3f} s off the host's"
    for _ in range(8):  # and stays with it, past a resync (every 5 s)
        time.sleep(0.75)
        low, high = guest_offset(api, fresh_sandbox)
        print(f"later: {low:+.4f}..{high:+.4f} s")
        assert low <= TOLERANCE and high >= -TOLERANCE, f"later, the guest's clock is {low:+.3f}..{high:+.3f} s off"
