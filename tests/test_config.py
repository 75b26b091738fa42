"""Slicer YAML config: the embedded default, valid configs, and many bad inputs."""

from __future__ import annotations

import ipaddress
import textwrap
from importlib import resources
from pathlib import Path

import pytest
import yaml

from pyslicer.config import (
    DEFAULT_OVERCOMMIT_RATIO,
    DEFAULT_TCG_TB_SIZE,
    MIN_RAM_BYTES,
    ApiConfig,
    HostGroupConfig,
    SlicerConfig,
    is_unix_socket_address,
    load_config,
    parse_config,
    parse_size,
)
from pyslicer.errors import ConfigError

GIB = 1024**3
MIB = 1024**2

MINIMAL = """
config:
  host_groups:
  - name: vm
    ram_gb: 1
"""


def parse(text: str, base_dir: Path | None = None) -> SlicerConfig:
    return parse_config(textwrap.dedent(text), source="test.yaml", base_dir=base_dir or Path("/nonexistent"))


def error(text: str, base_dir: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, base_dir)
    message = info.value.message
    assert message.startswith("test.yaml: ")
    assert "Traceback" not in message
    return message.removeprefix("test.yaml: ")


def group_yaml(**fields: object) -> str:
    """A config with one host group made of ``fields`` (YAML flow values), plus name/ram defaults."""
    fields = {"name": "vm", "ram_gb": 1, **fields}
    lines = "\n".join(f"    {key}: {value}" for key, value in fields.items() if value is not ...)
    return f"config:\n  host_groups:\n  - {lines.lstrip()}\n"


def group_error(**fields: object) -> str:
    return error(group_yaml(**fields))


# --- the embedded default -------------------------------------------------------------------


def test_default_config_loads() -> None:
    config = load_config(None)
    assert [g.name for g in config.host_groups] == ["vm", "sbox"]
    vm, sbox = config.host_groups
    assert (vm.count, vm.vcpu, vm.ram_bytes, vm.storage, vm.storage_size, vm.persistent) == (
        1,
        1,
        512 * MIB,
        "image",
        4 * GIB,
        True,
    )
    assert (sbox.count, sbox.vcpu, sbox.ram_bytes, sbox.storage, sbox.storage_size, sbox.persistent) == (
        0,
        2,
        2 * GIB,
        "image",
        4 * GIB,
        False,
    )
    assert vm.userdata == "" and vm.network is None
    assert config.hypervisor == "qemu"
    assert config.accel == "auto"
    assert config.api.bind_address == "127.0.0.1"
    assert config.api.port == 8080
    assert config.api.auth_enabled is True
    assert config.api.uses_auth is True
    assert config.api.unix_socket is None
    assert config.kernel_file is None
    assert config.image == ""
    assert config.github_user == "" and config.ssh_keys == []


def test_default_sbox_group_takes_the_sdk_suites_requests() -> None:
    # The official TS SDK's tests create sandboxes with {"cpus": 1, "ram_bytes": 1 GiB}. A group's
    # vcpu/ram are the ceiling a request may ask for; this is the daemon's check on them.
    group = load_config(None).host_group("sbox")
    assert group is not None and group.count == 0 and group.persistent is False
    cpus, ram_bytes = 1, GIB
    assert 1 <= cpus <= group.vcpu
    assert MIN_RAM_BYTES <= ram_bytes <= group.ram_bytes


def test_default_config_is_package_data_with_comments() -> None:
    text = resources.files("pyslicer").joinpath("default-config.yaml").read_text(encoding="utf-8")
    assert text.count("#") >= 10
    document = yaml.safe_load(text)
    assert set(document) == {"config"}


def test_host_group_lookup() -> None:
    config = load_config(None)
    group = config.host_group("sbox")
    assert group is not None and group.name == "sbox"
    assert config.host_group("nope") is None


# --- a full, valid config -------------------------------------------------------------------

FULL = """
# comments are fine
config:
  host_groups:
  - name: vm
    storage: image
    storage_size: 25G
    persistent: true
    count: 3
    vcpu: 2
    ram_gb: 4
    userdata: |
      #!/bin/bash
      echo hi
    network:
      bridge: brvm0
      tap_prefix: vmtap
      gateway: 192.168.137.1/24
  - name: sbox
    count: 0
    vcpu: 4
    ram_mb: 2048
    persistent: false
    network:
      mode: isolated
      range: 169.254.100.0/22
      allow: [0.0.0.0/0]
      drop: [192.168.1.0/24, 10.0.0.1]
  github_user: alexellis
  ssh_keys:
  - ssh-ed25519 AAAA user@host
  image: "ghcr.io/openfaasltd/slicer-systemd:6.1.90-x86_64-latest"
  kernel_file: ""
  hypervisor: qemu
  accel: kvm
  api:
    bind_address: 0.0.0.0
    port: 9090
    auth:
      enabled: false
"""


def test_full_config() -> None:
    config = parse(FULL)
    vm, sbox = config.host_groups
    assert vm.name == "vm"
    assert vm.storage == "image"
    assert vm.storage_size == 25 * GIB
    assert vm.persistent is True
    assert vm.count == 3
    assert vm.vcpu == 2
    assert vm.ram_bytes == 4 * GIB
    assert vm.userdata == "#!/bin/bash\necho hi\n"
    assert vm.network is not None
    assert vm.network.bridge == "brvm0"
    assert vm.network.tap_prefix == "vmtap"
    assert vm.network.gateway == ipaddress.IPv4Interface("192.168.137.1/24")
    assert vm.network.mode == "bridge"
    assert sbox.ram_bytes == 2 * GIB
    assert sbox.persistent is False
    assert sbox.storage_size is None
    assert sbox.network is not None
    assert sbox.network.mode == "isolated"
    assert sbox.network.range == ipaddress.IPv4Network("169.254.100.0/22")
    assert sbox.network.allow == [ipaddress.IPv4Network("0.0.0.0/0")]
    assert sbox.network.drop == [ipaddress.IPv4Network("192.168.1.0/24"), ipaddress.IPv4Network("10.0.0.1/32")]
    assert config.github_user == "alexellis"
    assert config.ssh_keys == ["ssh-ed25519 AAAA user@host"]
    assert config.image == "ghcr.io/openfaasltd/slicer-systemd:6.1.90-x86_64-latest"
    assert config.kernel_file is None
    assert config.accel == "kvm"
    assert config.api == ApiConfig(bind_address="0.0.0.0", port=9090, auth_enabled=False)
    assert config.api.uses_auth is False


def test_minimal_config_defaults() -> None:
    config = parse(MINIMAL)
    (group,) = config.host_groups
    assert group.count == 0
    assert group.vcpu == 1
    assert group.storage == "image"
    assert group.storage_size is None
    assert group.persistent is True
    assert group.userdata == ""
    assert group.network is None
    assert config.hypervisor == "qemu"
    assert config.accel == "auto"
    assert config.api.bind_address == "127.0.0.1"
    assert config.api.port == 8080
    assert config.api.auth_enabled is True


def test_unknown_keys_are_ignored() -> None:
    config = parse(
        """
        top_level_extra: 1
        config:
          something_new: {a: 1}
          host_groups:
          - name: vm
            ram_gb: 1
            gpu_count: 0
            arch: x86_64
            network:
              future_option: true
          api:
            tls: {enabled: true}
            auth:
              enabled: true
              token_file: /x
        """
    )
    assert config.host_groups[0].name == "vm"
    assert not hasattr(config, "something_new")


def test_null_values_take_defaults() -> None:
    config = parse(
        """
        config:
          host_groups:
          - name: vm
            ram_gb: 1
            count:
            userdata:
            storage_size:
            network:
          kernel_file:
          github_user:
          ssh_keys:
          image:
          api:
            bind_address:
            auth:
              enabled:
        """
    )
    group = config.host_groups[0]
    assert (group.count, group.userdata, group.storage_size, group.network) == (0, "", None, None)
    assert config.kernel_file is None and config.github_user == "" and config.ssh_keys == []
    assert config.api.bind_address == "127.0.0.1"
    assert config.api.auth_enabled is True


def test_yaml_merge_keys_can_be_overridden() -> None:
    config = parse(
        """
        defaults: &defaults
          vcpu: 2
          ram_gb: 2
          name: ignored
        config:
          host_groups:
          - <<: *defaults
            name: a
          - <<: *defaults
            name: b
            vcpu: 4
        """
    )
    assert [(g.name, g.vcpu, g.ram_bytes) for g in config.host_groups] == [("a", 2, 2 * GIB), ("b", 4, 2 * GIB)]


def test_single_ssh_key_scalar_is_a_list() -> None:
    config = parse(MINIMAL + "  ssh_keys: ssh-ed25519 AAAA\n")
    assert config.ssh_keys == ["ssh-ed25519 AAAA"]


# --- RAM -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"ram_gb": 4}, 4 * GIB),
        ({"ram_mb": 512}, 512 * MIB),
        ({"ram_mb": 64}, 64 * MIB),
        ({"ram_bytes": 1073741824}, GIB),
        ({"ram_bytes": MIN_RAM_BYTES}, MIN_RAM_BYTES),
        ({"ram_gb": 1024}, 1024 * GIB),
    ],
)
def test_ram_units(fields: dict[str, int], expected: int) -> None:
    text = group_yaml(**{"ram_gb": ..., **fields})
    assert parse(text).host_groups[0].ram_bytes == expected


def test_ram_missing() -> None:
    assert group_error(ram_gb=...) == "config.host_groups[0]: one of ram_gb, ram_mb or ram_bytes is required"


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"ram_mb": 512}, "ram_gb, ram_mb"),
        ({"ram_bytes": GIB}, "ram_gb, ram_bytes"),
        ({"ram_mb": 512, "ram_bytes": GIB}, "ram_gb, ram_mb, ram_bytes"),
    ],
)
def test_ram_more_than_one(fields: dict[str, int], names: str) -> None:
    message = group_error(**fields)
    assert message == (
        f"config.host_groups[0]: {names} are set together; use exactly one of ram_gb, ram_mb or ram_bytes"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("ram_gb", 0), ("ram_mb", 63), ("ram_mb", 0), ("ram_bytes", MIN_RAM_BYTES - 1), ("ram_gb", -1), ("ram_mb", -512)],
)
def test_ram_below_minimum(field: str, value: int) -> None:
    message = group_error(**{"ram_gb": ..., field: value})
    assert message == f"config.host_groups[0].{field}: must be at least 64 MiB (67108864 bytes), got {value}"


@pytest.mark.parametrize(
    ("field", "value"),
    [("ram_gb", "four"), ("ram_gb", "1.5"), ("ram_mb", "true"), ("ram_bytes", "[1]"), ("ram_gb", '"4"')],
)
def test_ram_not_an_integer(field: str, value: str) -> None:
    message = group_error(**{"ram_gb": ..., field: value})
    assert message == f"config.host_groups[0].{field}: Input should be a valid integer"


def test_ram_bytes_must_be_whole_mib() -> None:
    message = group_error(ram_gb=..., ram_bytes=MIN_RAM_BYTES + 1)
    assert message == f"config.host_groups[0].ram_bytes: must be a whole number of MiB, got {MIN_RAM_BYTES + 1}"


# --- other host group fields -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["vm", "a", "0", "sbox", "vm-1", "a-b-c", "x" * 32, "9lives", "a1"])
def test_good_group_names(name: str) -> None:
    assert parse(group_yaml(name=f"'{name}'")).host_groups[0].name == name


@pytest.mark.parametrize(
    "name", ["Vm", "VM", "-vm", "vm-", "v_m", "v.m", "v m", "x" * 33, "'é'", "'vm\\n'", "'a/b'", "''", "'-'"]
)
def test_bad_group_names(name: str) -> None:
    message = group_error(name=name)
    assert message.startswith("config.host_groups[0].name: ")
    assert "is not a valid host group name" in message


@pytest.mark.parametrize(
    ("value", "detail"), [("123", "valid string"), ("no", "valid string"), ("[a]", "valid string")]
)
def test_group_name_wrong_type(value: str, detail: str) -> None:
    message = group_error(name=value)
    assert message.startswith("config.host_groups[0].name: ") and detail in message


def test_group_name_missing() -> None:
    assert group_error(name=...) == "config.host_groups[0].name: Field required"


def test_duplicate_group_names() -> None:
    message = error(
        """
        config:
          host_groups:
          - {name: vm, ram_gb: 1}
          - {name: other, ram_gb: 1}
          - {name: vm, ram_gb: 1}
        """
    )
    assert message == "config.host_groups[2].name: duplicate host group name 'vm' (also used by host_groups[0])"


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (1, 1), (100, 100)])
def test_count(value: int, expected: int) -> None:
    assert parse(group_yaml(count=value)).host_groups[0].count == expected


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("-1", "Input should be greater than or equal to 0"),
        ("yes", "Input should be a valid integer"),
        ("1.5", "Input should be a valid integer"),
        ('"2"', "Input should be a valid integer"),
        ("[1]", "Input should be a valid integer"),
    ],
)
def test_bad_count(value: str, detail: str) -> None:
    assert group_error(count=value) == f"config.host_groups[0].count: {detail}"


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("0", "Input should be greater than or equal to 1"),
        ("-2", "Input should be greater than or equal to 1"),
        ("true", "Input should be a valid integer"),
        ("two", "Input should be a valid integer"),
        ("2.0", "Input should be a valid integer"),
    ],
)
def test_bad_vcpu(value: str, detail: str) -> None:
    assert group_error(vcpu=value) == f"config.host_groups[0].vcpu: {detail}"


def test_vcpu_error_in_second_group_names_index() -> None:
    message = error(
        """
        config:
          host_groups:
          - {name: a, ram_gb: 1}
          - {name: b, ram_gb: 1, vcpu: 0}
        """
    )
    assert message == "config.host_groups[1].vcpu: Input should be greater than or equal to 1"


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("false", False), ("yes", True), ("off", False)])
def test_persistent(value: str, expected: bool) -> None:
    assert parse(group_yaml(persistent=value)).host_groups[0].persistent is expected


@pytest.mark.parametrize("value", ["maybe", "[true]", "2"])
def test_bad_persistent(value: str) -> None:
    assert group_error(persistent=value).startswith("config.host_groups[0].persistent: Input should be a valid boolean")


def test_fast_create_is_on_unless_turned_off() -> None:
    assert parse(MINIMAL).host_groups[0].fast_create is True
    assert parse(group_yaml(fast_create="false")).host_groups[0].fast_create is False
    assert group_error(fast_create="sometimes").startswith(
        "config.host_groups[0].fast_create: Input should be a valid boolean"
    )


@pytest.mark.parametrize("storage", ["devmapper", "zfs"])
def test_unsupported_storage(storage: str) -> None:
    assert group_error(storage=storage) == (
        f"config.host_groups[0].storage: '{storage}' is not supported on this build (use image)"
    )


@pytest.mark.parametrize("storage", ["nfs", "Image", "''", "raw"])
def test_unknown_storage(storage: str) -> None:
    message = group_error(storage=storage)
    assert message.startswith("config.host_groups[0].storage: ")
    assert "expected one of image, devmapper, zfs" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("25G", 25 * GIB),
        ("25GiB", 25 * GIB),
        ("25GB", 25 * GIB),
        ("512M", 512 * MIB),
        ("1T", 1024 * GIB),
        ("26843545600", 25 * GIB),
        ('"1024"', 1024),
    ],
)
def test_storage_size(value: str, expected: int) -> None:
    assert parse(group_yaml(storage_size=value)).host_groups[0].storage_size == expected


@pytest.mark.parametrize("value", ["25X", "G", "-1G", "abc", "1.2.3G", "true", "[25G]", "1e3", "25 G B"])
def test_bad_storage_size(value: str) -> None:
    message = group_error(storage_size=value)
    assert message.startswith("config.host_groups[0].storage_size: invalid size ")


@pytest.mark.parametrize("value", ["0", "0G", "'0'"])
def test_zero_storage_size(value: str) -> None:
    assert group_error(storage_size=value) == "config.host_groups[0].storage_size: must be greater than 0"


# --- userdata ------------------------------------------------------------------------------


def test_userdata_file_relative_to_config_dir(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "init.sh").write_text("#!/bin/sh\necho héllo\n", encoding="utf-8")
    config_file = tmp_path / "slicer.yaml"
    config_file.write_text(group_yaml(userdata_file="scripts/init.sh"), encoding="utf-8")
    config = load_config(config_file)
    assert config.host_groups[0].userdata == "#!/bin/sh\necho héllo\n"


def test_userdata_file_absolute(tmp_path: Path) -> None:
    script = tmp_path / "init.sh"
    script.write_text("echo abs\n", encoding="utf-8")
    config = parse(group_yaml(userdata_file=str(script)), base_dir=Path("/elsewhere"))
    assert config.host_groups[0].userdata == "echo abs\n"


def test_userdata_file_with_tilde(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "u.sh").write_text("echo home\n", encoding="utf-8")
    config = parse(group_yaml(userdata_file="~/u.sh"))
    assert config.host_groups[0].userdata == "echo home\n"


def test_userdata_file_missing(tmp_path: Path) -> None:
    message = error(group_yaml(userdata_file="nope.sh"), base_dir=tmp_path)
    assert message == f"config.host_groups[0].userdata_file: file '{tmp_path / 'nope.sh'}' does not exist"


def test_userdata_file_is_a_directory(tmp_path: Path) -> None:
    message = error(group_yaml(userdata_file="."), base_dir=tmp_path)
    assert message.startswith("config.host_groups[0].userdata_file: ")
    assert "is a directory" in message


def test_userdata_file_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "bin.sh").write_bytes(b"\xff\xfe\x00")
    message = error(group_yaml(userdata_file="bin.sh"), base_dir=tmp_path)
    assert message.startswith("config.host_groups[0].userdata_file: ")
    assert "not UTF-8" in message


def test_userdata_file_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret.sh").write_text("x", encoding="utf-8")

    def denied(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    message = error(group_yaml(userdata_file="secret.sh"), base_dir=tmp_path)
    assert message == f"config.host_groups[0].userdata_file: cannot read '{tmp_path / 'secret.sh'}': Permission denied"


def test_userdata_file_not_a_string() -> None:
    message = group_error(userdata_file="[a, b]")
    assert message == "config.host_groups[0].userdata_file: Input should be a path string"


def test_userdata_and_userdata_file_together(tmp_path: Path) -> None:
    (tmp_path / "u.sh").write_text("x", encoding="utf-8")
    message = error(group_yaml(userdata="'echo hi'", userdata_file="u.sh"), base_dir=tmp_path)
    assert message == "config.host_groups[0].userdata_file: cannot be used together with userdata; set only one"


def test_empty_userdata_file_is_ignored() -> None:
    assert parse(group_yaml(userdata="'echo hi'", userdata_file="''")).host_groups[0].userdata == "echo hi"


def test_userdata_must_be_text() -> None:
    assert group_error(userdata="[1]") == "config.host_groups[0].userdata: Input should be a valid string"


# --- network -------------------------------------------------------------------------------


def network_error(network: str) -> str:
    return group_error(network=network)


def test_network_bridge_mode_defaults() -> None:
    network = parse(group_yaml(network="{bridge: br0}")).host_groups[0].network
    assert network is not None
    assert network.mode == "bridge" and network.gateway is None and network.range is None
    assert network.allow == [] and network.drop == []


@pytest.mark.parametrize("prefix", ["vmtap", "t", "x" * 14, "tap_a-1"])
def test_good_tap_prefix(prefix: str) -> None:
    network = parse(group_yaml(network=f"{{tap_prefix: '{prefix}'}}")).host_groups[0].network
    assert network is not None and network.tap_prefix == prefix


def test_tap_prefix_too_long() -> None:
    message = network_error("{tap_prefix: abcdefghijklmno}")
    assert message == (
        "config.host_groups[0].network.tap_prefix: 'abcdefghijklmno' is too long: "
        "at most 14 characters (a VM number is appended)"
    )


@pytest.mark.parametrize("prefix", ["'a b'", "'a/b'", "''", "'tap:'"])
def test_bad_tap_prefix(prefix: str) -> None:
    message = network_error(f"{{tap_prefix: {prefix}}}")
    assert message.startswith("config.host_groups[0].network.tap_prefix: ")
    assert "not a valid interface name prefix" in message


def test_duplicate_tap_prefix() -> None:
    message = error(
        """
        config:
          host_groups:
          - {name: a, ram_gb: 1, network: {tap_prefix: tap}}
          - {name: b, ram_gb: 1, network: {tap_prefix: tap}}
        """
    )
    assert message.startswith("config.host_groups[1].network.tap_prefix: duplicate tap_prefix 'tap'")


@pytest.mark.parametrize("bridge", ["'a b'", "x" * 16, "''", "'br/0'"])
def test_bad_bridge(bridge: str) -> None:
    message = network_error(f"{{bridge: {bridge}}}")
    assert message.startswith("config.host_groups[0].network.bridge: ")
    assert "not a valid interface name" in message


@pytest.mark.parametrize(
    "gateway", ["192.168.137.1", "192.168.137.1/33", "300.1.1.1/24", "fe80::1/64", "gw", "[1]", "10.0.0.1/abc"]
)
def test_bad_gateway(gateway: str) -> None:
    message = network_error(f"{{gateway: '{gateway}'}}" if "[" not in gateway else f"{{gateway: {gateway}}}")
    assert message.startswith("config.host_groups[0].network.gateway: ")
    assert "IPv4 address with a prefix length" in message


@pytest.mark.parametrize("gateway", ["192.168.137.0/24", "192.168.137.255/24"])
def test_gateway_cannot_be_network_or_broadcast(gateway: str) -> None:
    message = network_error(f"{{gateway: {gateway}}}")
    assert message == (
        f"config.host_groups[0].network.gateway: {gateway} is the network or broadcast address of "
        "192.168.137.0/24; use a host address such as 192.168.137.1"
    )


def test_bad_mode() -> None:
    message = network_error("{mode: nat}")
    assert message == "config.host_groups[0].network.mode: Input should be 'bridge' or 'isolated'"


def test_isolated_needs_range() -> None:
    message = network_error("{mode: isolated}")
    assert message == "config.host_groups[0].network.range: is required when mode is isolated (e.g. 169.254.100.0/22)"


def test_isolated_range_too_small() -> None:
    message = network_error("{mode: isolated, range: 10.0.0.0/31}")
    assert message == "config.host_groups[0].network.range: 10.0.0.0/31 is too small: each VM needs its own /30"


def test_range_with_host_bits_is_normalised() -> None:
    network = parse(group_yaml(network="{mode: isolated, range: 169.254.100.7/22}")).host_groups[0].network
    assert network is not None and network.range == ipaddress.IPv4Network("169.254.100.0/22")


@pytest.mark.parametrize("value", ["'10.0.0.0/33'", "nope", "'::/0'", "5"])
def test_bad_range(value: str) -> None:
    message = network_error(f"{{mode: isolated, range: {value}}}")
    assert message.startswith("config.host_groups[0].network.range: ")


def test_bad_allow_and_drop_entries_name_their_index() -> None:
    message = network_error("{allow: [10.0.0.0/8, nope], drop: [1.2.3.4, 999.0.0.0/8]}")
    assert message == (
        "config.host_groups[0].network.allow[1]: 'nope' is not an IPv4 network like 10.0.0.0/24; "
        "config.host_groups[0].network.drop[1]: '999.0.0.0/8' is not an IPv4 network like 10.0.0.0/24"
    )


def test_network_not_a_mapping() -> None:
    message = network_error("bridge")
    assert message.startswith("config.host_groups[0].network: ")


# --- top level fields ----------------------------------------------------------------------


@pytest.mark.parametrize("hypervisor", ["firecracker", "cloud-hypervisor"])
def test_unsupported_hypervisor(hypervisor: str) -> None:
    message = error(MINIMAL + f"  hypervisor: {hypervisor}\n")
    assert message == f"config.hypervisor: '{hypervisor}' is not supported on this build (use qemu)"


@pytest.mark.parametrize("hypervisor", ["kvm", "QEMU", "vmware", "''"])
def test_unknown_hypervisor(hypervisor: str) -> None:
    message = error(MINIMAL + f"  hypervisor: {hypervisor}\n")
    assert message.startswith("config.hypervisor: ")
    assert "expected one of firecracker, cloud-hypervisor, qemu" in message


@pytest.mark.parametrize("accel", ["auto", "kvm", "tcg"])
def test_accel(accel: str) -> None:
    assert parse(MINIMAL + f"  accel: {accel}\n").accel == accel


@pytest.mark.parametrize("accel", ["hvf", "KVM", "1", "''"])
def test_bad_accel(accel: str) -> None:
    assert error(MINIMAL + f"  accel: {accel}\n").startswith("config.accel: Input should be 'auto', 'kvm' or 'tcg'")


def test_memory_knobs_default() -> None:
    config = parse(MINIMAL)
    assert config.tcg_tb_size == DEFAULT_TCG_TB_SIZE == 64 * 1024 * 1024
    assert config.free_page_reporting is True
    assert config.memory_overcommit_ratio == DEFAULT_OVERCOMMIT_RATIO


@pytest.mark.parametrize(("value", "mib"), [("16M", 16), ("256MiB", 256), ("1G", 1024), ("2G", 2048), (1048576, 1)])
def test_tcg_tb_size(value: object, mib: int) -> None:
    assert parse(MINIMAL + f"  tcg_tb_size: {value}\n").tcg_tb_size == mib * 1024 * 1024


@pytest.mark.parametrize("value", ["0", "64", "512K", "1.5M", "3G", "-1", "true", "lots", "[64M]"])
def test_impossible_tcg_tb_size(value: str) -> None:
    message = error(MINIMAL + f"  tcg_tb_size: {value}\n")
    assert message.startswith("config.tcg_tb_size: "), message


@pytest.mark.parametrize(("value", "ratio"), [("1", 1.0), ("0.5", 0.5), ("3", 3.0), ("100", 100.0)])
def test_memory_overcommit_ratio(value: str, ratio: float) -> None:
    assert parse(MINIMAL + f"  memory_overcommit_ratio: {value}\n").memory_overcommit_ratio == ratio


@pytest.mark.parametrize("value", ["0", "-1", "101", ".nan", ".inf", "'2'", "true", "[]"])
def test_impossible_memory_overcommit_ratio(value: str) -> None:
    message = error(MINIMAL + f"  memory_overcommit_ratio: {value}\n")
    assert message.startswith("config.memory_overcommit_ratio: "), message


def test_free_page_reporting() -> None:
    assert parse(MINIMAL + "  free_page_reporting: false\n").free_page_reporting is False
    assert error(MINIMAL + "  free_page_reporting: maybe\n").startswith("config.free_page_reporting: ")


def test_image_is_kept() -> None:
    assert parse(MINIMAL + "  image: docker.io/library/ubuntu:24.04\n").image == "docker.io/library/ubuntu:24.04"


def test_kernel_file_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "vmlinux").write_bytes(b"\x7fELF")
    config = parse(MINIMAL + "  kernel_file: vmlinux\n", base_dir=tmp_path)
    assert config.kernel_file == tmp_path / "vmlinux"


def test_kernel_file_missing(tmp_path: Path) -> None:
    message = error(MINIMAL + "  kernel_file: vmlinux\n", base_dir=tmp_path)
    assert message == f"config.kernel_file: file '{tmp_path / 'vmlinux'}' does not exist"


def test_kernel_file_directory(tmp_path: Path) -> None:
    message = error(MINIMAL + f"  kernel_file: {tmp_path}\n")
    assert message == f"config.kernel_file: '{tmp_path}' is not a regular file"


def test_kernel_file_not_a_string() -> None:
    assert error(MINIMAL + "  kernel_file: [a]\n") == "config.kernel_file: Input should be a path string"


@pytest.mark.parametrize(("value", "detail"), [("[a]", "valid string"), ("{a: 1}", "valid string")])
def test_bad_github_user(value: str, detail: str) -> None:
    message = error(MINIMAL + f"  github_user: {value}\n")
    assert message.startswith("config.github_user: ") and detail in message


def test_bad_ssh_keys() -> None:
    message = error(MINIMAL + "  ssh_keys: [ok, 5, {a: 1}]\n")
    assert message == (
        "config.ssh_keys[1]: Input should be a valid string; config.ssh_keys[2]: Input should be a valid string"
    )


# --- api -----------------------------------------------------------------------------------


def api(text: str) -> ApiConfig:
    return parse(MINIMAL + "  api:\n" + textwrap.indent(textwrap.dedent(text), "    ")).api


def api_error(text: str) -> str:
    return error(MINIMAL + "  api:\n" + textwrap.indent(textwrap.dedent(text), "    "))


@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0", "::1", "::", "localhost", "my-host.example.com"])
def test_tcp_bind_address(address: str) -> None:
    config = api(f"bind_address: '{address}'\n")
    assert config.bind_address == address
    assert config.unix_socket is None
    assert config.uses_auth is True


def test_bracketed_ipv6_is_unwrapped() -> None:
    assert api("bind_address: '[::1]'\n").bind_address == "::1"


@pytest.mark.parametrize(
    ("address", "socket"),
    [
        ("/run/slicer.sock", Path("/run/slicer.sock")),
        ("/run/slicer/api", Path("/run/slicer/api")),
        ("./slicer.sock", Path("slicer.sock")),
        ("unix:///tmp/s.sock", Path("/tmp/s.sock")),
        ("unix://relative/api", Path("relative/api")),
        ("slicer.sock", Path("slicer.sock")),
    ],
)
def test_unix_socket_bind_address(address: str, socket: Path) -> None:
    config = api(f"bind_address: '{address}'\nauth:\n  enabled: true\n")
    assert config.bind_address == address
    assert config.unix_socket == socket
    assert config.auth_enabled is True
    assert config.uses_auth is False


def test_unix_socket_expands_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/alex")
    assert api("bind_address: ~/slicer-mac/slicer.sock\n").unix_socket == Path("/home/alex/slicer-mac/slicer.sock")
    assert api("bind_address: unix://~/s.sock\n").unix_socket == Path("/home/alex/s.sock")


@pytest.mark.parametrize("address", ["''", "'bad host'", "'-x'", "'a..b'", "'unix://'", "'host:8080'", "'[::1'"])
def test_bad_bind_address(address: str) -> None:
    message = api_error(f"bind_address: {address}\n")
    assert message.startswith("config.api.bind_address: ")


def test_bind_address_not_a_string() -> None:
    assert api_error("bind_address: 8080\n") == "config.api.bind_address: Input should be a valid string"


@pytest.mark.parametrize("port", [0, 1, 80, 8080, 65535])
def test_port(port: int) -> None:
    assert api(f"port: {port}\n").port == port


@pytest.mark.parametrize(
    ("port", "detail"),
    [
        ("-1", "Input should be greater than or equal to 0"),
        ("65536", "Input should be less than or equal to 65535"),
        ("http", "Input should be a valid integer"),
        ("'8080'", "Input should be a valid integer"),
        ("true", "Input should be a valid integer"),
    ],
)
def test_bad_port(port: str, detail: str) -> None:
    assert api_error(f"port: {port}\n") == f"config.api.port: {detail}"


def test_auth_disabled() -> None:
    config = api("auth:\n  enabled: false\n")
    assert config.auth_enabled is False
    assert config.uses_auth is False


def test_auth_default_on_over_tcp() -> None:
    config = api("port: 1234\n")
    assert config.auth_enabled is True and config.uses_auth is True


def test_auth_empty_mapping_keeps_default() -> None:
    assert api("auth: {}\n").auth_enabled is True


def test_bad_auth_enabled() -> None:
    assert api_error("auth:\n  enabled: sometimes\n").startswith(
        "config.api.auth.enabled: Input should be a valid boolean"
    )


@pytest.mark.parametrize("value", ["true", "[enabled]", "on"])
def test_auth_not_a_mapping(value: str) -> None:
    assert api_error(f"auth: {value}\n") == "config.api.auth: Input should be a mapping like {enabled: true}"


def test_api_not_a_mapping() -> None:
    assert error(MINIMAL + "  api: 8080\n").startswith("config.api: ")


def test_api_config_in_python() -> None:
    config = ApiConfig(bind_address="/tmp/x.sock", auth_enabled=True)
    assert config.unix_socket == Path("/tmp/x.sock")
    assert config.uses_auth is False
    assert ApiConfig().uses_auth is True


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("/a", True),
        ("./a", True),
        ("~/a", True),
        ("unix://a", True),
        ("x.sock", True),
        ("127.0.0.1", False),
        ("localhost", False),
        ("http://x", False),
        ("a/b", False),
    ],
)
def test_is_unix_socket_address(address: str, expected: bool) -> None:
    assert is_unix_socket_address(address) is expected


# --- document shape and YAML errors --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("- a\n- b\n", "the top level must be a mapping with a 'config:' key, not a list"),
        ("just text\n", "the top level must be a mapping with a 'config:' key, not a string"),
        ("42\n", "the top level must be a mapping with a 'config:' key, not a number"),
        ("host_groups: []\n", "missing the top-level 'config:' key"),
        ("Config: {}\n", "missing the top-level 'config:' key"),
        ("config:\n", "config: must be a mapping with host_groups, not empty"),
        ("config: [a]\n", "config: must be a mapping with host_groups, not a list"),
        ("config: text\n", "config: must be a mapping with host_groups, not a string"),
    ],
)
def test_document_shape(text: str, detail: str) -> None:
    assert detail in error(text)


def test_host_groups_missing() -> None:
    assert error("config:\n  api: {port: 1}\n") == "config.host_groups: Field required"


def test_host_groups_empty() -> None:
    assert error("config:\n  host_groups: []\n").startswith("config.host_groups: List should have at least 1 item")


def test_host_groups_not_a_list() -> None:
    assert error("config:\n  host_groups: {name: vm}\n") == "config.host_groups: Input should be a valid list"


def test_host_group_not_a_mapping() -> None:
    message = error("config:\n  host_groups: [vm]\n")
    assert message.startswith("config.host_groups[0]: Input should be a valid dictionary")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("config:\n  host_groups: [\n", 3),
        ("config:\n  host_groups:\n  - name: vm\n   ram_gb: 1\n", 4),
        ("config:\n\thost_groups: []\n", 2),
        ("config: {a: 1\n", 2),
        ("config:\n  a: 'unterminated\n", 3),
        ("a: b: c\n", 1),
        ("--- a\n--- b\n", 2),
    ],
)
def test_yaml_syntax_errors_give_line(text: str, line: int) -> None:
    message = error(text)
    assert message.startswith(f"invalid YAML at line {line}, column ")


def test_duplicate_keys_are_errors() -> None:
    message = error("config:\n  host_groups:\n  - name: vm\n    ram_gb: 1\n    ram_gb: 2\n")
    assert message == "invalid YAML at line 5, column 5: duplicate key 'ram_gb'"


def test_duplicate_top_level_config_key() -> None:
    assert "duplicate key 'config'" in error("config: {}\nconfig: {}\n")


def test_unhashable_key() -> None:
    assert "unhashable key" in error("config:\n  ? [a]\n  : 1\n")


def test_python_tags_are_refused() -> None:
    message = error("config: !!python/object/apply:os.system ['echo pwned']\n")
    assert message.startswith("invalid YAML at line 1")


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    message = error("config: " + "[" * 20000 + "]" * 20000 + "\n")
    assert "invalid YAML" in message


def test_several_errors_joined() -> None:
    message = error(
        """
        config:
          host_groups:
          - name: vm
            ram_gb: 4
            storage: zfs
          - name: Bad
            vcpu: 0
            ram_mb: 1
          - name: x
          hypervisor: firecracker
          accel: fast
          api: {port: 99999}
        """
    )
    parts = message.split("; ")
    assert parts[0] == "config.host_groups[0].storage: 'zfs' is not supported on this build (use image)"
    assert parts[1].startswith("config.host_groups[1].name: 'Bad' is not a valid host group name")
    assert parts[2:] == [
        "config.host_groups[1].vcpu: Input should be greater than or equal to 1",
        "config.host_groups[1].ram_mb: must be at least 64 MiB (67108864 bytes), got 1",
        "config.host_groups[2]: one of ram_gb, ram_mb or ram_bytes is required",
        "config.hypervisor: 'firecracker' is not supported on this build (use qemu)",
        "config.accel: Input should be 'auto', 'kvm' or 'tcg'",
        "config.api.port: Input should be less than or equal to 65535",
    ]


# --- load_config ---------------------------------------------------------------------------


def test_load_config_from_file(tmp_path: Path) -> None:
    path = tmp_path / "slicer.yaml"
    path.write_text(FULL, encoding="utf-8")
    assert load_config(path) == parse(FULL)


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "slicer.yaml"
    path.write_text(group_yaml(vcpu=0), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.message == f"{path}: config.host_groups[0].vcpu: Input should be greater than or equal to 1"
    assert info.value.code == "invalid_config"


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_load_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"config: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_load_config_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "c.yaml").write_text(MINIMAL, encoding="utf-8")
    assert load_config(Path("~/c.yaml")).host_groups[0].name == "vm"


def test_load_config_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "u.sh").write_text("echo rel\n", encoding="utf-8")
    (tmp_path / "conf" / "c.yaml").write_text(group_yaml(userdata_file="u.sh"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert load_config(Path("conf/c.yaml")).host_groups[0].userdata == "echo rel\n"


# --- parse_size ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1", 1),
        ("1024", 1024),
        ("1B", 1),
        ("1K", 1024),
        ("1k", 1024),
        ("1KB", 1024),
        ("1KiB", 1024),
        ("1kib", 1024),
        ("512M", 512 * MIB),
        ("512MB", 512 * MIB),
        ("512MiB", 512 * MIB),
        ("25G", 25 * GIB),
        ("25g", 25 * GIB),
        ("25GB", 25 * GIB),
        ("25GiB", 25 * GIB),
        ("2T", 2 * 1024 * GIB),
        ("2TB", 2 * 1024 * GIB),
        ("2TiB", 2 * 1024 * GIB),
        ("1.5G", 1536 * MIB),
        ("0.5K", 512),
        (" 4G ", 4 * GIB),
        ("4 G", 4 * GIB),
        ("99999999999999999999999999999999T", 99999999999999999999999999999999 * 1024**4),
        (0, 0),
        (123, 123),
        (25 * GIB, 25 * GIB),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "G",
        "abc",
        "25X",
        "25P",
        "25iB",
        "25Gi",
        "25GBB",
        "-1",
        "-1G",
        "+1G",
        "1e3",
        "1,5G",
        "1.G",
        ".5G",
        "1.2.3",
        "0x10",
        "25G\n4G",
        "\u0661G",  # Arabic-Indic digit one
        -1,
        True,
        False,
        1.5,
        None,
        [1],
    ],
)
def test_parse_size_invalid(text: object) -> None:
    with pytest.raises(ConfigError, match="invalid size"):
        parse_size(text)  # type: ignore[arg-type]


def test_parse_size_fraction_of_a_byte() -> None:
    with pytest.raises(ConfigError, match="not a whole number of bytes"):
        parse_size("0.3K")


# --- models used directly from Python ------------------------------------------------------


def test_host_group_model_round_trips() -> None:
    group = HostGroupConfig(name="vm", ram_bytes=GIB)
    assert HostGroupConfig.model_validate(group.model_dump()) == group


def test_slicer_config_model_round_trips() -> None:
    config = load_config(None)
    assert SlicerConfig.model_validate(config.model_dump()) == config


def test_addresses_pool_and_dns_servers() -> None:
    network = (
        parse(
            group_yaml(
                network="{gateway: 10.1.0.1/24, addresses: [10.1.0.5, 10.1.0.6/24], dns_servers: [203.0.113.53]}"
            )
        )
        .host_groups[0]
        .network
    )
    assert network is not None and network.egress is True
    assert network.addresses == [ipaddress.IPv4Address("10.1.0.5"), ipaddress.IPv4Address("10.1.0.6")]
    assert network.dns_servers == [ipaddress.IPv4Address("203.0.113.53")]


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ("{addresses: [10.1.0.5]}", "network.addresses: needs a gateway"),
        ("{gateway: 10.1.0.1/24, addresses: [10.2.0.5]}", "network.addresses[0]: 10.2.0.5 is not a host address"),
        ("{gateway: 10.1.0.1/24, addresses: [10.1.0.255]}", "network.addresses[0]: 10.1.0.255 is not a host address"),
        ("{gateway: 10.1.0.1/24, addresses: [10.1.0.1]}", "network.addresses[0]: 10.1.0.1 is the gateway's own"),
        ("{gateway: 10.1.0.1/24, addresses: [10.1.0.3, 10.1.0.3]}", "network.addresses[1]: 10.1.0.3 is listed twice"),
        ("{gateway: 10.1.0.1/24, addresses: [nope]}", "network.addresses[0]: 'nope' is not an IPv4 address"),
        ("{mode: isolated, range: 10.0.0.0/24}", "network.range: 10.0.0.0/24 is not inside 169.254.0.0/16"),
        ("{mode: isolated, range: 169.254.1.0/24, addresses: [169.254.1.2]}", "network.addresses: is for bridge"),
        ("{dns_servers: [1.1.1.1, 1.0.0.1, 8.8.8.8, 8.8.4.4]}", "network.dns_servers: "),
        ("{egress: maybe}", "network.egress: "),
    ],
)
def test_bad_network_fields_are_named(network: str, message: str) -> None:
    assert message in network_error(network)


def test_daemon_network_section() -> None:
    config = parse(MINIMAL + "  network: {uplink: outside, uplink_address: 10.9.9.1/29}\n")
    assert config.network.uplink == "outside" and str(config.network.uplink_address) == "10.9.9.1/29"
    assert parse(MINIMAL).network.uplink == "" and not parse(MINIMAL).network.host_namespace


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ("{uplink: 'a b'}", "config.network.uplink: 'a b' is not host, empty, or a network namespace name"),
        ("{uplink: host, host_namespace: true}", "config.network.uplink: cannot be used with host_namespace"),
        ("{uplink_address: 10.0.0.1/31}", "config.network.uplink_address: 10.0.0.1/31 needs a /30 or larger"),
    ],
)
def test_bad_daemon_network(network: str, message: str) -> None:
    assert error(MINIMAL + f"  network: {network}\n").startswith(message)
