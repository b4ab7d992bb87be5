"""Reading the YAML files that hold policies and presets, with errors that name the file and key."""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from safeguard.errors import ConfigError

PathLike = str | Path


def bundled(kind: str, name: str) -> Path | None:
    """Path of ``configs/<kind>/<name>.yaml`` inside the installed package, or None if absent."""
    return bundled_file(kind, f"{name}.yaml")


def bundled_file(kind: str, name: str) -> Path | None:
    """Path of ``configs/<kind>/<name>`` inside the installed package, or None if absent."""
    resource = importlib.resources.files("safeguard.configs").joinpath(kind, name)
    return Path(str(resource)) if resource.is_file() else None


def bundled_names(kind: str) -> list[str]:
    """Names of the bundled ``configs/<kind>/*.yaml`` files, without the suffix."""
    folder = importlib.resources.files("safeguard.configs").joinpath(kind)
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml") and not entry.name.startswith("_")
    )


def read_yaml(path: PathLike) -> dict[str, Any]:
    """Load a YAML mapping; a missing or non-UTF-8 file, a syntax error or a non-mapping top level is a ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8 and try again"
        ) from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, not {type(data).__name__}")
    return data


def check_keys(
    data: Mapping[str, Any],
    allowed: Iterable[str],
    where: str,
    required: Iterable[str] = (),
) -> None:
    """Raise ConfigError for a key outside ``allowed`` or a missing ``required`` key.

    ``where`` names the file and the position in it, e.g. ``"balanced.yaml: prompt"``.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    allowed = set(allowed)
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in data:
            raise ConfigError(f"{where}: missing required key {key!r}")


def string_list(value: Any, where: str) -> tuple[str, ...]:
    """Validate a list of non-empty strings."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{where}: expected a list of non-empty strings")
    return tuple(v.strip() for v in value)
