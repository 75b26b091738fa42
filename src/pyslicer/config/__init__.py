"""Slicer's YAML config (``slicer up CONFIG.yaml``): loading, validation and the embedded default.

Keys this build does not use are ignored rather than rejected, so configs written for the real
Slicer load unchanged. Every problem becomes a :class:`~pyslicer.errors.ConfigError` whose message
names the field as a path into the YAML (``config.host_groups[0].ram_gb: ...``).

The modules, each importing only those above it::

    _field_errors   how a check blames a field; pydantic's errors -> one message of YAML paths
    _values         one value at a time: sizes, addresses, networks, interface and group names
    _models         NetworkConfig, HostGroupConfig, ApiConfig, SlicerConfig (the cross-field rules)
    _loading        YAML -> SlicerConfig: the strict loader, parse_config, load_config, the default

Import from here; the modules are private.
"""

from pyslicer.config._loading import DEFAULT_CONFIG_RESOURCE, load_config, parse_config
from pyslicer.config._models import (
    DEFAULT_OVERCOMMIT_RATIO,
    DEFAULT_TCG_TB_SIZE,
    MIN_RAM_BYTES,
    ApiConfig,
    HostGroupConfig,
    NetworkConfig,
    SlicerConfig,
)
from pyslicer.config._values import is_unix_socket_address, parse_size

__all__ = [
    "DEFAULT_CONFIG_RESOURCE",
    "DEFAULT_OVERCOMMIT_RATIO",
    "DEFAULT_TCG_TB_SIZE",
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
