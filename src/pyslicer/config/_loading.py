"""YAML text or a file -> a validated :class:`SlicerConfig`, and the embedded default config.

Every problem becomes a :class:`ConfigError` whose message starts with where the text came from
(``slicer.yaml: config.host_groups[0].ram_gb: ...``).
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pyslicer.config._field_errors import describe
from pyslicer.config._models import SlicerConfig
from pyslicer.errors import ConfigError

__all__ = ["DEFAULT_CONFIG_RESOURCE", "load_config", "parse_config"]

# In the ``pyslicer`` package's data, next to the code (pyproject.toml's package-data packages it).
DEFAULT_CONFIG_RESOURCE = "default-config.yaml"


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


def parse_config(text: str, *, source: str, base_dir: Path) -> SlicerConfig:
    """Parse and validate YAML config text; raises :class:`ConfigError`.

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
        raise ConfigError(f"{source}: {describe(exc, ('config',))}") from None


def load_config(path: Path | None) -> SlicerConfig:
    """Load a config file, or the embedded default (``pyslicer/default-config.yaml``) when None.

    Raises :class:`ConfigError`, also when the file cannot be read.
    """
    if path is None:
        # Imported here: importlib.resources costs ~10 ms, and only the default config needs it.
        from importlib import resources

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
