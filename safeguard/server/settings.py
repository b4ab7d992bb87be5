"""Server settings, read from one YAML file with strict keys (an unknown key is a ConfigError naming it).

Every option, with its default (``configs/server/example.yaml`` is the same list, commented):

- ``host`` (``127.0.0.1``): address to listen on. Loopback by default; expose it behind a proxy you control.
- ``port`` (``8000``): port to listen on; ``0`` picks a free one.
- ``keys`` (required to serve, no default): the keys file managed by ``safeguard keys``. Every request must carry
  a key; there is no anonymous access, because a host that forgot to set keys must not end up open.
- ``audit.path`` (``safeguard-audit.jsonl``): the hash-chained audit log. ``audit.max_bytes`` (64 MiB): rotate
  past it. ``audit.store_prompt_text`` (``false``): keep only the prompt's SHA-256 unless set.
- ``limits``: ``max_body_bytes`` (8 MiB), ``max_prompt_chars`` (4000), ``max_image_pixels`` (4,194,304),
  ``max_images_per_request`` (4), ``rate_per_minute`` (60, per key, unless the key sets its own),
  ``queue_size`` (16 requests waiting for the pipeline), ``deadline_s`` (120 s per request).
- ``pipeline`` (``null``): ``null`` is the embedded toy world; otherwise a local diffusers folder, loaded with
  ``DiffusionPipeline.from_pretrained(folder, local_files_only=True)``.
- ``credentials`` (``null``): a C2PA credentials folder (``signer-chain.pem`` and ``signer.key``, the host's own or
  from ``safeguard credentials init``). With it, every returned PNG carries signed content credentials with its
  verdict; without it, PNGs carry the IPTC digital source type only. Needs the ``disclosure`` extra.

Example:
    >>> s = server_settings_from_mapping({"port": 0, "limits": {"queue_size": 1}})
    >>> s.host, s.limits.queue_size, s.audit.store_prompt_text
    ('127.0.0.1', 1, False)
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from safeguard.errors import ConfigError

__all__ = ["AuditSettings", "Limits", "ServerSettings", "load_server_settings", "server_settings_from_mapping"]


@dataclass(frozen=True)
class Limits:
    """Per-request limits and back-pressure; each is a positive number."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_prompt_chars: int = 4000
    max_image_pixels: int = 2048 * 2048
    max_images_per_request: int = 4
    rate_per_minute: int = 60
    queue_size: int = 16
    deadline_s: float = 120.0


@dataclass(frozen=True)
class AuditSettings:
    """Where the audit log goes, when it rotates and whether prompt text is kept (default: only its hash)."""

    path: Path = Path("safeguard-audit.jsonl")
    max_bytes: int = 64 * 1024 * 1024
    store_prompt_text: bool = False


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``safeguard serve`` needs; see the module docstring for each option."""

    host: str = "127.0.0.1"
    port: int = 8000
    keys: Path | None = None
    audit: AuditSettings = field(default_factory=AuditSettings)
    limits: Limits = field(default_factory=Limits)
    pipeline: Path | None = None
    credentials: Path | None = None


_TOP = {"host", "port", "keys", "audit", "limits", "pipeline", "credentials"}
_AUDIT = {"path", "max_bytes", "store_prompt_text"}
_LIMITS = {f for f in Limits.__dataclass_fields__}


def _check_keys(mapping: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown server setting {where}{key!r}{hint}; known: {', '.join(sorted(allowed))}")


def _positive(value: Any, name: str, kind: type) -> Any:
    # bool is an int in Python; a YAML `true` for a size is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
        raise ConfigError(f"server setting {name} must be a positive {kind.__name__}, got {value!r}")
    return kind(value)


def server_settings_from_mapping(data: dict[str, Any] | None, base: Path | None = None) -> ServerSettings:
    """Build settings from a mapping (as read from YAML); relative paths are taken from ``base``.

    Example:
        >>> server_settings_from_mapping({"limits": {"rate_per_minute": 5}}).limits.rate_per_minute
        5
    """
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError("server settings must be a mapping")
    _check_keys(data, _TOP, "")

    def path(value: Any, name: str) -> Path | None:
        if value is None:
            return None
        if not isinstance(value, (str, Path)) or not str(value):
            raise ConfigError(f"server setting {name} must be a path, got {value!r}")
        p = Path(value).expanduser()
        return p if p.is_absolute() or base is None else base / p

    host = data.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"server setting host must be a non-empty string, got {host!r}")
    port = data.get("port", 8000)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"server setting port must be an integer from 0 to 65535, got {port!r}")

    audit_in = data.get("audit") or {}
    if not isinstance(audit_in, dict):
        raise ConfigError("server setting audit must be a mapping")
    _check_keys(audit_in, _AUDIT, "audit.")
    store = audit_in.get("store_prompt_text", False)
    if not isinstance(store, bool):
        raise ConfigError(f"server setting audit.store_prompt_text must be true or false, got {store!r}")
    audit = AuditSettings(
        path=path(audit_in.get("path", "safeguard-audit.jsonl"), "audit.path") or AuditSettings().path,
        max_bytes=_positive(audit_in.get("max_bytes", AuditSettings.max_bytes), "audit.max_bytes", int),
        store_prompt_text=store,
    )

    limits_in = data.get("limits") or {}
    if not isinstance(limits_in, dict):
        raise ConfigError("server setting limits must be a mapping")
    _check_keys(limits_in, _LIMITS, "limits.")
    defaults = Limits()
    limits = Limits(
        **{
            name: _positive(
                limits_in.get(name, getattr(defaults, name)),
                f"limits.{name}",
                float if name == "deadline_s" else int,
            )
            for name in _LIMITS
        }
    )
    return ServerSettings(
        host=host,
        port=port,
        keys=path(data.get("keys"), "keys"),
        audit=audit,
        limits=limits,
        pipeline=path(data.get("pipeline"), "pipeline"),
        credentials=path(data.get("credentials"), "credentials"),
    )


def load_server_settings(path: str | Path | None = None, **overrides: Any) -> ServerSettings:
    """Read server settings from a YAML file (``None``: the defaults), then apply non-``None`` overrides.

    Example:
        >>> load_server_settings(None, port=0).port
        0
    """
    if path is None:
        settings = server_settings_from_mapping({})
    else:
        file = Path(path)
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError(f"cannot read server settings {file}: {err}") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"server settings {file} are not valid YAML: {err}") from err
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"server settings {file} must be a mapping at the top level")
        settings = server_settings_from_mapping(data, base=file.parent)
    unknown = set(overrides) - _TOP
    if unknown:
        raise ConfigError(f"unknown server setting override(s): {', '.join(sorted(unknown))}")
    paths = {"keys", "pipeline", "credentials"}
    given = {k: (Path(v) if k in paths else v) for k, v in overrides.items() if v is not None}
    return replace(settings, **given)
