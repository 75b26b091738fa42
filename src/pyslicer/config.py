"""Slicer's YAML config (``slicer up CONFIG.yaml``): loading, validation and the embedded default.

Keys this build does not use are ignored rather than rejected, so configs written for the real
Slicer load unchanged. Every problem becomes a :class:`ConfigError` whose message names the field
as a path into the YAML (``config.host_groups[0].ram_gb: ...``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Hashable, Iterable, Mapping
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasPath,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pyslicer.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_RESOURCE",
    "MIN_RAM_BYTES",
    "ApiConfig",
    "HostGroupConfig",
    "NetworkConfig",
    "SlicerConfig",
    "is_unix_socket_address",
    "load_config",
    "parse_config",
    "parse_size",
]

DEFAULT_CONFIG_RESOURCE = "default-config.yaml"
MIB = 1024 * 1024
GIB = 1024 * MIB
MIN_RAM_BYTES = 64 * MIB

SUPPORTED_STORAGE = "image"
KNOWN_STORAGE = ("image", "devmapper", "zfs")
SUPPORTED_HYPERVISOR = "qemu"
KNOWN_HYPERVISORS = ("firecracker", "cloud-hypervisor", "qemu")

_GROUP_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
# Linux interface names are at most 15 bytes (IFNAMSIZ - 1); taps get a number appended.
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_SIZE_RE = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[KMGT](?:i?B)?|B)?", re.IGNORECASE)
_SIZE_MULTIPLIERS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}

# Strict so that YAML booleans (`count: yes`) are not silently taken as 1.
_StrictInt = Annotated[int, Field(strict=True)]


class _FieldError(ValueError):
    """A model-level check that blames one field; the error converter appends ``loc`` to the path."""

    def __init__(self, loc: str | tuple[str | int, ...], message: str, *, sibling: bool = False) -> None:
        super().__init__(message)
        self.loc = (loc,) if isinstance(loc, str) else loc
        self.message = message
        # A sibling's loc replaces the last element of where pydantic reported the error.
        self.sibling = sibling


class _Deferred:
    """A cross-field error found in a before-validator, stored in place of a field's value.

    Raising it from that field's own validator (rather than from the model validator) lets
    pydantic go on validating, and reporting, the model's other fields.
    """

    def __init__(self, error: _FieldError) -> None:
        self.error = error


def _invalid(kind: str, message: str) -> PydanticCustomError:
    # Messages are formatted here: pydantic's templates know only "{name}", not "{name!r}".
    return PydanticCustomError(kind, "{message}", {"message": message})


def is_unix_socket_address(address: str) -> bool:
    """Slicer's client rule: a path-looking address (or ``unix://``) is a unix socket, not TCP."""
    return address.startswith(("/", "./", "~/", "unix://")) or address.endswith(".sock")


def parse_size(text: str | int) -> int:
    """Parse a size such as ``25G``, ``512MiB``, ``4GB`` or ``1073741824`` into bytes.

    Every unit is binary (``G`` = ``GB`` = ``GiB`` = 1024**3), as in Slicer. A fraction is allowed
    when the result is a whole number of bytes (``1.5G``).
    """
    if isinstance(text, bool):
        raise ConfigError(f"invalid size {text!r}: expected a number of bytes or a string like 25G")
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"invalid size {text}: must not be negative")
        return text
    if not isinstance(text, str):
        raise ConfigError(f"invalid size {text!r}: expected a number of bytes or a string like 25G")
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ConfigError(
            f"invalid size {text!r}: expected a number with an optional unit K, M, G or T "
            "(also KiB/KB, MiB/MB, GiB/GB, TiB/TB), e.g. 25G"
        )
    multiplier = _SIZE_MULTIPLIERS[(match.group("unit") or "")[:1].upper()]
    exact = Fraction(match.group("num")) * multiplier
    if exact.denominator != 1:
        raise ConfigError(f"invalid size {text!r}: not a whole number of bytes")
    return int(exact)


def _supported(value: str, supported: str, known: Iterable[str], kind: str, what: str) -> str:
    """Slicer's other choices are known but refused on this build; anything else is not a choice at all."""
    if value == supported:
        return value
    if value in known:
        raise _invalid("not_supported", f"{value!r} is not supported on this build (use {supported})")
    raise _invalid(kind, f"{value!r} is not {what}; expected one of {', '.join(known)}")


def _drop_nulls(data: Any) -> Any:
    # An empty YAML value (`kernel_file:`) means "use the default", as Go's zero values do.
    if isinstance(data, Mapping):
        return {k: v for k, v in data.items() if v is not None}
    return data


def _resolve_path(raw: str, info: ValidationInfo) -> Path:
    path = Path(raw).expanduser()
    if not path.is_absolute():
        base = _base_dir(info)
        path = base / path
    return path


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context
    if isinstance(context, Mapping):
        base = context.get("base_dir")
        if isinstance(base, Path):
            return base
    return Path.cwd()


def _parse_ipv4_network(value: Any) -> ipaddress.IPv4Network:
    if isinstance(value, ipaddress.IPv4Network):
        return value
    if not isinstance(value, str):
        raise _invalid("ipv4_network", "Input should be an IPv4 network like 10.0.0.0/24")
    try:
        return ipaddress.IPv4Network(value.strip(), strict=False)
    except ValueError:
        raise _invalid("ipv4_network", f"{value!r} is not an IPv4 network like 10.0.0.0/24") from None


IPv4NetworkField = Annotated[ipaddress.IPv4Network, BeforeValidator(_parse_ipv4_network)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_by_name=True, validate_by_alias=True)


class NetworkConfig(_Model):
    """A host group's network: a bridge with one tap per VM, or isolated /30s carved from ``range``."""

    bridge: str | None = None
    tap_prefix: str | None = None
    gateway: ipaddress.IPv4Interface | None = None
    mode: Literal["bridge", "isolated"] = "bridge"
    range: IPv4NetworkField | None = None
    allow: list[IPv4NetworkField] = Field(default_factory=list)
    drop: list[IPv4NetworkField] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        return _drop_nulls(data)

    @field_validator("bridge")
    @classmethod
    def _check_bridge(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not _IFNAME_RE.fullmatch(value) or len(value) > 15:
            raise _invalid(
                "interface_name",
                f"{value!r} is not a valid interface name (1-15 characters: letters, digits, '-', '_', '.')",
            )
        return value

    @field_validator("tap_prefix")
    @classmethod
    def _check_tap_prefix(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if len(value) > 14:
            raise _invalid(
                "tap_prefix_too_long",
                f"{value!r} is too long: at most 14 characters (a VM number is appended)",
            )
        if not _IFNAME_RE.fullmatch(value):
            raise _invalid(
                "interface_name",
                f"{value!r} is not a valid interface name prefix (letters, digits, '-', '_', '.')",
            )
        return value

    @field_validator("gateway", mode="before")
    @classmethod
    def _check_gateway(cls, value: Any) -> Any:
        if isinstance(value, ipaddress.IPv4Interface):
            iface = value
        else:
            # Require the prefix: a bare address would silently become a /32 with no room for VMs.
            if not (isinstance(value, str) and "/" in value):
                raise _invalid(
                    "gateway",
                    f"{value!r} should be an IPv4 address with a prefix length, e.g. 192.168.137.1/24",
                )
            try:
                iface = ipaddress.IPv4Interface(value.strip())
            except ValueError:
                raise _invalid("gateway", f"{value!r} is not an IPv4 address with a prefix length") from None
        net = iface.network
        if net.prefixlen <= 30 and iface.ip in (net.network_address, net.broadcast_address):
            raise _invalid(
                "gateway",
                f"{iface} is the network or broadcast address of {net}; use a host address such as "
                f"{net.network_address + 1}",
            )
        return iface

    @model_validator(mode="after")
    def _check_mode(self) -> NetworkConfig:
        if self.mode == "isolated":
            if self.range is None:
                raise _FieldError("range", "is required when mode is isolated (e.g. 169.254.100.0/22)")
            if self.range.prefixlen > 30:
                raise _FieldError("range", f"{self.range} is too small: each VM needs its own /30")
        return self


class HostGroupConfig(_Model):
    """One ``host_groups`` entry: a template for VMs named ``<name>-N``.

    ``count`` VMs start with the daemon (services); the API can add more (sandboxes).
    """

    name: str
    count: _StrictInt = Field(default=0, ge=0)
    vcpu: _StrictInt = Field(default=1, ge=1)
    ram_bytes: _StrictInt
    storage: str = SUPPORTED_STORAGE
    storage_size: int | None = None
    persistent: bool = True
    userdata: str = ""
    network: NetworkConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any, info: ValidationInfo) -> Any:
        data = _drop_nulls(data)
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        try:
            data["ram_bytes"] = _ram_bytes(data)
        except _FieldError as exc:
            data["ram_bytes"] = _Deferred(exc)
        for key in ("ram_gb", "ram_mb"):
            data.pop(key, None)
        userdata_file = data.pop("userdata_file", None)
        if userdata_file is not None and userdata_file != "":
            if data.get("userdata"):
                message = "cannot be used together with userdata; set only one"
                data["userdata"] = _Deferred(_FieldError("userdata_file", message, sibling=True))
            else:
                try:
                    data["userdata"] = _read_userdata(userdata_file, info)
                except _FieldError as exc:
                    data["userdata"] = _Deferred(exc)
        return data

    @field_validator("ram_bytes", "userdata", mode="before")
    @classmethod
    def _raise_deferred(cls, value: Any) -> Any:
        if isinstance(value, _Deferred):
            raise value.error
        return value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _GROUP_NAME_RE.fullmatch(value):
            raise _invalid(
                "group_name",
                f"{value!r} is not a valid host group name: 1-32 characters of lowercase letters, digits "
                "and '-', starting and ending with a letter or digit (VMs are named <name>-N)",
            )
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
            raise _invalid("size", exc.message) from None
        if size <= 0:
            raise _invalid("size", "must be greater than 0")
        return size


def _ram_bytes(data: Mapping[str, Any]) -> int:
    present = [key for key in ("ram_gb", "ram_mb", "ram_bytes") if key in data]
    if not present:
        raise _FieldError((), "one of ram_gb, ram_mb or ram_bytes is required", sibling=True)
    if len(present) > 1:
        message = f"{', '.join(present)} are set together; use exactly one of ram_gb, ram_mb or ram_bytes"
        raise _FieldError((), message, sibling=True)
    key = present[0]
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _FieldError(key, "Input should be a valid integer", sibling=True)
    ram = value * {"ram_gb": GIB, "ram_mb": MIB, "ram_bytes": 1}[key]
    if ram < MIN_RAM_BYTES:
        raise _FieldError(key, f"must be at least 64 MiB ({MIN_RAM_BYTES} bytes), got {value}", sibling=True)
    if ram % MIB:
        raise _FieldError(key, f"must be a whole number of MiB, got {value}", sibling=True)
    return ram


def _read_userdata(raw: Any, info: ValidationInfo) -> str:
    def fail(message: str) -> _FieldError:
        return _FieldError("userdata_file", message, sibling=True)

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

    bind_address: str = "127.0.0.1"
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
                raise _FieldError("auth", "Input should be a mapping like {enabled: true}")
            if isinstance(auth, Mapping):
                data = {**data, "auth": _drop_nulls(auth)}
        return data

    @field_validator("bind_address")
    @classmethod
    def _check_bind_address(cls, value: str) -> str:
        value = value.strip()
        if is_unix_socket_address(value):
            if not value.removeprefix("unix://"):
                raise _invalid("bind_address", "unix:// needs a socket path after it")
            return value
        host = value[1:-1] if value.startswith("[") and value.endswith("]") else value
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            pass
        if _HOSTNAME_RE.fullmatch(host):
            return host
        raise _invalid(
            "bind_address",
            f"{value!r} is neither an IP address, a hostname nor a unix socket path "
            "(a path starts with /, ./, ~/ or unix://, or ends with .sock)",
        )

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

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        return _drop_nulls(data)

    @field_validator("kernel_file", mode="before")
    @classmethod
    def _check_kernel_file(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and value.strip() == "":
            return None
        if not isinstance(value, str | os.PathLike):
            raise _invalid("path", "Input should be a path string")
        path = _resolve_path(os.fspath(value), info)
        if not path.exists():
            raise _invalid("path", f"file {str(path)!r} does not exist")
        if not path.is_file():
            raise _invalid("path", f"{str(path)!r} is not a regular file")
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
                raise _FieldError(
                    ("host_groups", index, "name"),
                    f"duplicate host group name {group.name!r} (also used by host_groups[{seen_names[group.name]}])",
                )
            seen_names[group.name] = index
            tap = group.network.tap_prefix if group.network else None
            if tap is not None:
                if tap in seen_taps:
                    raise _FieldError(
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


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _describe(exc: ValidationError, prefix: tuple[str, ...]) -> str:
    problems: list[str] = []
    for err in exc.errors():
        loc: tuple[int | str, ...] = (*prefix, *err["loc"])
        message = err["msg"]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _FieldError):
            loc = (*(loc[:-1] if cause.sibling else loc), *cause.loc)
            message = cause.message
        elif isinstance(cause, ValueError):
            message = str(cause)  # drops pydantic's "Value error, " prefix
        problem = f"{_format_loc(loc)}: {message}"
        if problem not in problems:
            problems.append(problem)
    return "; ".join(problems)


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate keys, which PyYAML would otherwise let the last one win."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
    seen: set[Hashable] = set()
    for key_node, _ in node.value:
        # Merge keys (<<) may be overridden by explicit keys; only repeated explicit keys are errors.
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                "found an unhashable key",
                key_node.start_mark,
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_error(exc: yaml.YAMLError, source: str) -> ConfigError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if mark is not None:
            return ConfigError(f"{source}: invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}")
        return ConfigError(f"{source}: invalid YAML: {problem}")
    return ConfigError(f"{source}: invalid YAML: {exc}")


def parse_config(text: str, *, source: str, base_dir: Path) -> SlicerConfig:
    """Parse and validate YAML config text.

    ``source`` names the text in messages (usually the file path); relative paths inside the
    config (``userdata_file``, ``kernel_file``) are resolved against ``base_dir``.
    """
    try:
        document = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    if document is None:
        raise ConfigError(f"{source}: the file is empty; expected a mapping with a top-level 'config:' key")
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a 'config:' key, not {_yaml_type(document)}")
    if "config" not in document:
        raise ConfigError(f"{source}: missing the top-level 'config:' key (everything goes under config:)")
    body = document["config"]
    if not isinstance(body, dict):
        raise ConfigError(f"{source}: config: must be a mapping with host_groups, not {_yaml_type(body)}")
    try:
        return SlicerConfig.model_validate(body, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc, ('config',))}") from None


def _yaml_type(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return f"a {type(value).__name__}"


def load_config(path: Path | None) -> SlicerConfig:
    """Load a config file, or the embedded default (``pyslicer/default-config.yaml``) when None."""
    if path is None:
        text = resources.files("pyslicer").joinpath(DEFAULT_CONFIG_RESOURCE).read_text(encoding="utf-8")
        return parse_config(text, source="<embedded default config>", base_dir=Path.cwd())
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a directory") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from None
    return parse_config(text, source=str(path), base_dir=path.absolute().parent)
