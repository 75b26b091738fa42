"""One value at a time: sizes, addresses, networks and names, as they are written in the YAML.

Each check takes the raw value and returns it parsed, or raises :func:`invalid` with a message that
the loader puts after the field's path. The annotated types bind a check to a field's type, so a
model only declares ``bridge: InterfaceName | None``.
"""

from __future__ import annotations

import ipaddress
import re
from fractions import Fraction
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

from pyslicer.config._field_errors import invalid
from pyslicer.errors import ConfigError

__all__ = [
    "GIB",
    "MIB",
    "BindAddress",
    "GatewayInterface",
    "GroupName",
    "IPv4AddressField",
    "IPv4NetworkField",
    "InterfaceName",
    "TapPrefix",
    "check_bind_address",
    "check_group_name",
    "check_interface_name",
    "check_tap_prefix",
    "is_unix_socket_address",
    "parse_gateway",
    "parse_ipv4_network",
    "parse_size",
]

MIB = 1024 * 1024
GIB = 1024 * MIB

_GROUP_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
# Linux interface names are at most 15 bytes (IFNAMSIZ - 1); taps get a number appended.
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_IFNAME_MAX = 15
_TAP_PREFIX_MAX = _IFNAME_MAX - 1
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_SIZE_RE = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[KMGT](?:i?B)?|B)?", re.IGNORECASE)
_SIZE_MULTIPLIERS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


# --- sizes -----------------------------------------------------------------------------------


def parse_size(text: str | int) -> int:
    """Parse a size such as ``25G``, ``512MiB``, ``4GB`` or ``1073741824`` into bytes.

    Every unit is binary (``G`` = ``GB`` = ``GiB`` = 1024**3), as in Slicer. A fraction is allowed
    when the result is a whole number of bytes (``1.5G``). Raises :class:`ConfigError`.
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


# --- addresses and networks --------------------------------------------------------------------


def is_unix_socket_address(address: str) -> bool:
    """Slicer's client rule: a path-looking address (or ``unix://``) is a unix socket, not TCP."""
    return address.startswith(("/", "./", "~/", "unix://")) or address.endswith(".sock")


def check_bind_address(value: str) -> str:
    """An IP address (normalised, brackets dropped), a hostname, or a unix socket path as given."""
    value = value.strip()
    if is_unix_socket_address(value):
        if not value.removeprefix("unix://"):
            raise invalid("bind_address", "unix:// needs a socket path after it")
        return value
    host = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if _HOSTNAME_RE.fullmatch(host):
        return host
    raise invalid(
        "bind_address",
        f"{value!r} is neither an IP address, a hostname nor a unix socket path "
        "(a path starts with /, ./, ~/ or unix://, or ends with .sock)",
    )


def parse_ipv4_network(value: Any) -> ipaddress.IPv4Network:
    """``10.0.0.0/24``; host bits are allowed and dropped, a bare address is a /32."""
    if isinstance(value, ipaddress.IPv4Network):
        return value
    if not isinstance(value, str):
        raise invalid("ipv4_network", "Input should be an IPv4 network like 10.0.0.0/24")
    try:
        return ipaddress.IPv4Network(value.strip(), strict=False)
    except ValueError:
        raise invalid("ipv4_network", f"{value!r} is not an IPv4 network like 10.0.0.0/24") from None


def parse_ipv4_address(value: Any) -> ipaddress.IPv4Address:
    """``10.0.0.2`` (a prefix, as in ``10.0.0.2/24``, is allowed and dropped: the network says it)."""
    if isinstance(value, ipaddress.IPv4Address):
        return value
    if not isinstance(value, str):
        raise invalid("ipv4_address", "Input should be an IPv4 address like 192.168.137.2")
    try:
        return ipaddress.IPv4Interface(value.strip()).ip
    except ValueError:
        raise invalid("ipv4_address", f"{value!r} is not an IPv4 address like 192.168.137.2") from None


def parse_gateway(value: Any) -> ipaddress.IPv4Interface:
    """A bridge's own address with its prefix (``192.168.137.1/24``), which must be a host address."""
    if isinstance(value, ipaddress.IPv4Interface):
        iface = value
    else:
        # Require the prefix: a bare address would silently become a /32 with no room for VMs.
        if not (isinstance(value, str) and "/" in value):
            raise invalid(
                "gateway",
                f"{value!r} should be an IPv4 address with a prefix length, e.g. 192.168.137.1/24",
            )
        try:
            iface = ipaddress.IPv4Interface(value.strip())
        except ValueError:
            raise invalid("gateway", f"{value!r} is not an IPv4 address with a prefix length") from None
    net = iface.network
    if net.prefixlen <= 30 and iface.ip in (net.network_address, net.broadcast_address):
        raise invalid(
            "gateway",
            f"{iface} is the network or broadcast address of {net}; use a host address such as "
            f"{net.network_address + 1}",
        )
    return iface


# --- names -------------------------------------------------------------------------------------


def check_interface_name(value: str) -> str:
    """A Linux network interface name (a bridge's)."""
    if not _IFNAME_RE.fullmatch(value) or len(value) > _IFNAME_MAX:
        raise invalid(
            "interface_name",
            f"{value!r} is not a valid interface name (1-15 characters: letters, digits, '-', '_', '.')",
        )
    return value


def check_tap_prefix(value: str) -> str:
    """The start of a tap's interface name, which gets a number appended: one character shorter than a name."""
    if len(value) > _TAP_PREFIX_MAX:
        raise invalid(
            "tap_prefix_too_long",
            f"{value!r} is too long: at most 14 characters (a VM number is appended)",
        )
    if not _IFNAME_RE.fullmatch(value):
        raise invalid(
            "interface_name",
            f"{value!r} is not a valid interface name prefix (letters, digits, '-', '_', '.')",
        )
    return value


def check_group_name(value: str) -> str:
    """A host group's name, which is also the start of its VMs' hostnames (``<name>-N``)."""
    if not _GROUP_NAME_RE.fullmatch(value):
        raise invalid(
            "group_name",
            f"{value!r} is not a valid host group name: 1-32 characters of lowercase letters, digits "
            "and '-', starting and ending with a letter or digit (VMs are named <name>-N)",
        )
    return value


BindAddress = Annotated[str, AfterValidator(check_bind_address)]
IPv4AddressField = Annotated[ipaddress.IPv4Address, BeforeValidator(parse_ipv4_address)]
IPv4NetworkField = Annotated[ipaddress.IPv4Network, BeforeValidator(parse_ipv4_network)]
GatewayInterface = Annotated[ipaddress.IPv4Interface, BeforeValidator(parse_gateway)]
InterfaceName = Annotated[str, AfterValidator(check_interface_name)]
TapPrefix = Annotated[str, AfterValidator(check_tap_prefix)]
GroupName = Annotated[str, AfterValidator(check_group_name)]
