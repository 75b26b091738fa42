"""The config's shape: a network, a host group, the API listener, and the whole ``config:`` mapping.

Unknown keys are ignored (``extra="ignore"``). A field's own value is checked by its type
(:mod:`pyslicer.config._values`); what needs several fields, or reads a file, is checked here and
blamed on one field with :class:`FieldError`.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasPath, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from pyslicer.config._field_errors import Deferred, FieldError, invalid
from pyslicer.config._values import (
    GIB,
    MIB,
    BindAddress,
    GatewayInterface,
    GroupName,
    InterfaceName,
    IPv4AddressField,
    IPv4NetworkField,
    TapPrefix,
    is_unix_socket_address,
    parse_size,
)
from pyslicer.errors import ConfigError

__all__ = [
    "DEFAULT_OVERCOMMIT_RATIO",
    "DEFAULT_TCG_TB_SIZE",
    "LINK_LOCAL",
    "MIN_RAM_BYTES",
    "ApiConfig",
    "DaemonNetworkConfig",
    "HostGroupConfig",
    "NetworkConfig",
    "SlicerConfig",
]

LINK_LOCAL = ipaddress.IPv4Network("169.254.0.0/16")

MIN_RAM_BYTES = 64 * MIB
# TCG's translation cache per VM (QEMU's own default is 1 GiB, which a long-lived guest fills): docs/sizing.md
# has the measurements behind this choice.
DEFAULT_TCG_TB_SIZE = 64 * MIB
MAX_TCG_TB_SIZE = 2 * GIB  # QEMU's ceiling for the x86-64 code buffer
# Guest RAM (plus each VM's expected VMM overhead) the daemon commits against the host's RAM: guests return
# what they free (free page reporting), so a sandbox holds far less than its RAM size (docs/sizing.md).
DEFAULT_OVERCOMMIT_RATIO = 3.0
MAX_OVERCOMMIT_RATIO = 100.0

SUPPORTED_STORAGE = "image"
KNOWN_STORAGE = ("image", "devmapper", "zfs")
SUPPORTED_HYPERVISOR = "qemu"
KNOWN_HYPERVISORS = ("firecracker", "cloud-hypervisor", "qemu")

# Strict so that YAML booleans (`count: yes`) are not silently taken as 1.
_StrictInt = Annotated[int, Field(strict=True)]


def _supported(value: str, supported: str, known: Iterable[str], kind: str, what: str) -> str:
    """Slicer's other choices are known but refused on this build; anything else is not a choice at all."""
    if value == supported:
        return value
    if value in known:
        raise invalid("not_supported", f"{value!r} is not supported on this build (use {supported})")
    raise invalid(kind, f"{value!r} is not {what}; expected one of {', '.join(known)}")


def _drop_nulls(data: Any) -> Any:
    # An empty YAML value (`kernel_file:`) means "use the default", as Go's zero values do.
    if isinstance(data, Mapping):
        return {k: v for k, v in data.items() if v is not None}
    return data


def _resolve_path(raw: str, info: ValidationInfo) -> Path:
    """``raw`` with ``~`` expanded; a relative path is taken from the config file's directory."""
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = _base_dir(info) / path
    return path


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context
    if isinstance(context, Mapping):
        base = context.get("base_dir")
        if isinstance(base, Path):
            return base
    return Path.cwd()


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_by_name=True, validate_by_alias=True)


class NetworkConfig(_Model):
    """A host group's network: a bridge with one tap per VM, or isolated /30s carved from ``range``.

    ``addresses`` (bridge mode) is the pool VMs take addresses from (default: every host of the gateway's
    subnet); ``allow``/``drop`` refine what a VM may reach (the most specific entry wins, ``drop`` on a tie);
    ``egress`` lets VMs out through the daemon's uplink; ``dns_servers`` go into the guest's resolv.conf.
    """

    bridge: InterfaceName | None = None
    tap_prefix: TapPrefix | None = None
    gateway: GatewayInterface | None = None
    addresses: list[IPv4AddressField] = Field(default_factory=list)
    mode: Literal["bridge", "isolated"] = "bridge"
    range: IPv4NetworkField | None = None
    allow: list[IPv4NetworkField] = Field(default_factory=list)
    drop: list[IPv4NetworkField] = Field(default_factory=list)
    egress: bool = True
    dns_servers: list[IPv4AddressField] = Field(default_factory=list, max_length=3)  # resolv.conf reads three

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        return _drop_nulls(data)

    @model_validator(mode="after")
    def _check_mode(self) -> NetworkConfig:
        if self.mode == "isolated":
            if self.range is None:
                raise FieldError("range", "is required when mode is isolated (e.g. 169.254.100.0/22)")
            if self.range.prefixlen > 30:
                raise FieldError("range", f"{self.range} is too small: each VM needs its own /30")
            if not self.range.subnet_of(LINK_LOCAL):
                raise FieldError("range", f"{self.range} is not inside {LINK_LOCAL} (isolated VMs use link-local /30s)")
            if self.addresses:
                raise FieldError("addresses", "is for bridge mode; an isolated VM takes the next free /30 of range")
        elif self.addresses:
            if self.gateway is None:
                raise FieldError("addresses", "needs a gateway (e.g. 192.168.137.1/24) whose subnet holds them")
            subnet = self.gateway.network
            for index, address in enumerate(self.addresses):
                if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
                    raise FieldError(("addresses", index), f"{address} is not a host address of {subnet}")
                if address == self.gateway.ip:
                    raise FieldError(("addresses", index), f"{address} is the gateway's own address")
                if address in self.addresses[:index]:
                    raise FieldError(("addresses", index), f"{address} is listed twice")
        return self


class DaemonNetworkConfig(_Model):
    """pyslicer's ``config.network``: where the group networks live and how guests get out.

    ``uplink``: "" (no way out: guests reach only what is inside the daemon's namespace), ``host`` (a veth into
    the namespace the daemon runs in) or the name of a network namespace (``ip netns``) that plays the outside.
    Egress is NAT on the daemon's end of it, ``uplink_address``; the far end takes the other host address of
    that /30. ``host_namespace: true`` puts the bridges and taps in the daemon's own namespace instead (the
    host reaches VMs directly; no uplink then: the host routes, and its firewall is the operator's).
    """

    host_namespace: bool = False
    uplink: str = ""
    uplink_address: GatewayInterface = ipaddress.IPv4Interface("10.254.254.1/30")

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        return _drop_nulls(data)

    @field_validator("uplink")
    @classmethod
    def _check_uplink(cls, value: str) -> str:
        if value not in ("", "host") and (len(value) > 64 or not value.replace("-", "").replace("_", "").isalnum()):
            raise invalid(
                "uplink", f"{value!r} is not host, empty, or a network namespace name (letters, digits, -, _)"
            )
        return value

    @model_validator(mode="after")
    def _check_combination(self) -> DaemonNetworkConfig:
        if self.host_namespace and self.uplink:
            raise FieldError("uplink", "cannot be used with host_namespace: the host itself routes its VMs out")
        if self.uplink_address.network.num_addresses < 4 or self.uplink_address.network.prefixlen > 30:
            raise FieldError("uplink_address", f"{self.uplink_address} needs a /30 or larger")
        return self


class HostGroupConfig(_Model):
    """One ``host_groups`` entry: a template for VMs named ``<name>-N``.

    ``count`` VMs start with the daemon (services); the API can add more (sandboxes). ``vcpu`` and
    ``ram_bytes`` are both what a new VM gets and the most an API request may ask for.
    """

    name: GroupName
    count: _StrictInt = Field(default=0, ge=0)
    vcpu: _StrictInt = Field(default=1, ge=1)
    ram_bytes: _StrictInt
    storage: str = SUPPORTED_STORAGE
    storage_size: int | None = None
    persistent: bool = True
    userdata: str = ""
    network: NetworkConfig | None = None
    fast_create: bool = True  # API creates restore a snapshot of a booted guest instead of booting one

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any, info: ValidationInfo) -> Any:
        data = _drop_nulls(data)
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        try:
            data["ram_bytes"] = _ram_bytes(data)
        except FieldError as exc:
            data["ram_bytes"] = Deferred(exc)
        for key in ("ram_gb", "ram_mb"):
            data.pop(key, None)
        userdata_file = data.pop("userdata_file", None)
        if userdata_file is not None and userdata_file != "":
            if data.get("userdata"):
                message = "cannot be used together with userdata; set only one"
                data["userdata"] = Deferred(FieldError("userdata_file", message, sibling=True))
            else:
                try:
                    data["userdata"] = _read_userdata(userdata_file, info)
                except FieldError as exc:
                    data["userdata"] = Deferred(exc)
        return data

    @field_validator("ram_bytes", "userdata", mode="before")
    @classmethod
    def _raise_deferred(cls, value: Any) -> Any:
        if isinstance(value, Deferred):
            raise value.error
        return value

    @field_validator("storage")
    @classmethod
    def _check_storage(cls, value: str) -> str:
        return _supported(value, SUPPORTED_STORAGE, KNOWN_STORAGE, "storage", "a storage type")

    @field_validator("storage_size", mode="before")
    @classmethod
    def _check_storage_size(cls, value: Any) -> Any:
        try:
            size = parse_size(value)
        except ConfigError as exc:
            raise invalid("size", exc.message) from None
        if size <= 0:
            raise invalid("size", "must be greater than 0")
        return size


def _ram_bytes(data: Mapping[str, Any]) -> int:
    """Exactly one of ``ram_gb``, ``ram_mb``, ``ram_bytes``, as bytes: at least 64 MiB, whole MiB."""
    present = [key for key in ("ram_gb", "ram_mb", "ram_bytes") if key in data]
    if not present:
        raise FieldError((), "one of ram_gb, ram_mb or ram_bytes is required", sibling=True)
    if len(present) > 1:
        message = f"{', '.join(present)} are set together; use exactly one of ram_gb, ram_mb or ram_bytes"
        raise FieldError((), message, sibling=True)
    key = present[0]
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(key, "Input should be a valid integer", sibling=True)
    ram = value * {"ram_gb": GIB, "ram_mb": MIB, "ram_bytes": 1}[key]
    if ram < MIN_RAM_BYTES:
        raise FieldError(key, f"must be at least 64 MiB ({MIN_RAM_BYTES} bytes), got {value}", sibling=True)
    if ram % MIB:
        raise FieldError(key, f"must be a whole number of MiB, got {value}", sibling=True)
    return ram


def _read_userdata(raw: Any, info: ValidationInfo) -> str:
    def fail(message: str) -> FieldError:
        return FieldError("userdata_file", message, sibling=True)

    if not isinstance(raw, str):
        raise fail("Input should be a path string")
    path = _resolve_path(raw, info)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise fail(f"file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise fail(f"{str(path)!r} is a directory, not a file") from None
    except UnicodeDecodeError:
        raise fail(f"file {str(path)!r} is not UTF-8 text") from None
    except OSError as exc:
        raise fail(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None


class ApiConfig(_Model):
    """Where the REST API listens: TCP ``bind_address:port`` or a unix socket path."""

    bind_address: BindAddress = "127.0.0.1"
    # 0 asks the OS for a free port (useful for tests); ignored for a unix socket.
    port: _StrictInt = Field(default=8080, ge=0, le=65535)
    auth_enabled: bool = Field(default=True, validation_alias=AliasPath("auth", "enabled"))

    @model_validator(mode="before")
    @classmethod
    def _check_auth(cls, data: Any) -> Any:
        data = _drop_nulls(data)
        if isinstance(data, Mapping):
            auth = data.get("auth")
            if auth is not None and not isinstance(auth, Mapping):
                raise FieldError("auth", "Input should be a mapping like {enabled: true}")
            if isinstance(auth, Mapping):
                data = {**data, "auth": _drop_nulls(auth)}
        return data

    @property
    def unix_socket(self) -> Path | None:
        """The socket path when the API listens on a unix socket, else None."""
        if not is_unix_socket_address(self.bind_address):
            return None
        return Path(self.bind_address.removeprefix("unix://")).expanduser()

    @property
    def uses_auth(self) -> bool:
        """Bearer-token auth applies over TCP only: a unix socket is guarded by file permissions."""
        return self.auth_enabled and self.unix_socket is None


class SlicerConfig(_Model):
    """The ``config:`` mapping of a Slicer YAML file."""

    host_groups: list[HostGroupConfig] = Field(min_length=1)
    # The guest image to boot. Kept for compatibility; this build always boots the image it built.
    image: str = ""
    kernel_file: Path | None = None
    hypervisor: str = SUPPORTED_HYPERVISOR
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    api: ApiConfig = Field(default_factory=ApiConfig)
    github_user: str = ""
    ssh_keys: list[str] = Field(default_factory=list)
    # pyslicer's own memory knobs (docs/sizing.md); Slicer has none of them.
    tcg_tb_size: int = DEFAULT_TCG_TB_SIZE
    free_page_reporting: bool = True
    memory_overcommit_ratio: float = DEFAULT_OVERCOMMIT_RATIO
    network: DaemonNetworkConfig = Field(default_factory=DaemonNetworkConfig)

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        return _drop_nulls(data)

    @field_validator("tcg_tb_size", mode="before")
    @classmethod
    def _check_tb_size(cls, value: Any) -> int:
        try:
            size = parse_size(value)
        except ConfigError as exc:
            raise invalid("size", exc.message) from None
        if size % MIB or not MIB <= size <= MAX_TCG_TB_SIZE:
            raise invalid("tb_size", f"must be a whole number of MiB from 1M to 2G (e.g. 64M), got {value!r}")
        return size

    @field_validator("memory_overcommit_ratio", mode="before")
    @classmethod
    def _check_overcommit(cls, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid("ratio", f"must be a number such as 1.5, got {value!r}")
        if not 0 < value <= MAX_OVERCOMMIT_RATIO:  # (a NaN fails this too)
            raise invalid("ratio", f"must be more than 0 and at most {MAX_OVERCOMMIT_RATIO:g}, got {value!r}")
        return float(value)

    @field_validator("kernel_file", mode="before")
    @classmethod
    def _check_kernel_file(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and value.strip() == "":
            return None
        if not isinstance(value, str | os.PathLike):
            raise invalid("path", "Input should be a path string")
        path = _resolve_path(os.fspath(value), info)
        if not path.exists():
            raise invalid("path", f"file {str(path)!r} does not exist")
        if not path.is_file():
            raise invalid("path", f"{str(path)!r} is not a regular file")
        return path

    @field_validator("hypervisor")
    @classmethod
    def _check_hypervisor(cls, value: str) -> str:
        return _supported(value, SUPPORTED_HYPERVISOR, KNOWN_HYPERVISORS, "hypervisor", "a hypervisor")

    @field_validator("ssh_keys", mode="before")
    @classmethod
    def _single_key(cls, value: Any) -> Any:
        # A lone key written as a scalar is an easy slip in YAML; accept it as a one-item list.
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_unique(self) -> SlicerConfig:
        seen_names: dict[str, int] = {}
        seen_taps: dict[str, int] = {}
        for index, group in enumerate(self.host_groups):
            if group.name in seen_names:
                raise FieldError(
                    ("host_groups", index, "name"),
                    f"duplicate host group name {group.name!r} (also used by host_groups[{seen_names[group.name]}])",
                )
            seen_names[group.name] = index
            tap = group.network.tap_prefix if group.network else None
            if tap is not None:
                if tap in seen_taps:
                    raise FieldError(
                        ("host_groups", index, "network", "tap_prefix"),
                        f"duplicate tap_prefix {tap!r} (also used by host_groups[{seen_taps[tap]}]); "
                        "tap devices would collide",
                    )
                seen_taps[tap] = index
        return self

    def host_group(self, name: str) -> HostGroupConfig | None:
        """The host group called ``name``, or None."""
        for group in self.host_groups:
            if group.name == name:
                return group
        return None
