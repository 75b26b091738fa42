"""The built-in config's sandbox group takes what the official TS SDK suite asks for: 1 vCPU and 1 GiB,
several sandboxes at once."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import pytest

from tests.integration.conftest import start_daemon, stop_daemon
from tests.integration.helpers import sh

GIB = 1024**3


def default_config_template() -> str:
    """The embedded default, with its own API address and port and without its service VM."""
    text = resources.files("pyslicer").joinpath("default-config.yaml").read_text()
    text = text.replace("{", "{{").replace("}", "}}")
    text = re.sub(r"(?m)^(\s*bind_address:).*$", r"\1 {address}", text)
    text = re.sub(r"(?m)^(\s*port:).*$", r"\1 {port}", text)
    return re.sub(r"(?m)^(\s*count:) 1\b", r"\1 0", text, count=1)


def test_the_default_sandbox_group_takes_1_vcpu_1_gib_sandboxes(
    guest_image: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    daemon = start_daemon(
        tmp_path_factory.mktemp("default-config"), guest_image, config_template=default_config_template()
    )
    try:
        with daemon.client() as api:
            assert [n["hostname"] for n in api.get("/nodes").json()] == []  # count: 0 for the service here

            def create(_: int) -> str:
                response = api.post("/hostgroup/sbox/nodes?wait=agent&timeout=4m", json={"cpus": 1, "ram_bytes": GIB})
                assert response.status_code == 201, response.text
                return str(response.json()["hostname"])

            with ThreadPoolExecutor(2) as pool:
                hostnames = list(pool.map(create, range(2)))
            for hostname in hostnames:
                node = next(n for n in api.get("/hostgroup/sbox/nodes").json() if n["hostname"] == hostname)
                assert node["cpus"] == 1 and node["ram_bytes"] == GIB
                kib = int(sh(api, hostname, "awk '/MemTotal/ {print $2}' /proc/meminfo"))
                assert 0.8 * GIB < kib * 1024 <= GIB
                assert sh(api, hostname, "nproc").strip() == "1"
                assert api.delete(f"/hostgroup/sbox/nodes/{hostname}").status_code == 200
    finally:
        stop_daemon(daemon)
