"""API keys for the host service: a JSON keys file holding only salted hashes of the tokens.

A token looks like ``sgk_<key_id>_<secret>``: the key id lets the store find the one record to compare with, and
the secret is 32 random bytes (base64url). Only ``sha256(salt || secret)`` is stored, with a per-key random salt,
and it is compared in constant time. The secret is shown once, by :meth:`KeyStore.add`.

The file is replaced atomically (write a temporary file, fsync, rename) under an exclusive lock, so a running
server that re-reads it never sees half a file and two ``safeguard keys add`` never lose each other's key. A
server notices a changed file on the next request (it compares the file's inode, size and mtime), so a revoked key
stops working without a restart.

Example:
    >>> import tempfile, pathlib
    >>> store = KeyStore(pathlib.Path(tempfile.mkdtemp()) / "keys.json")
    >>> key, token = store.add("acme", "strict", rate_per_minute=60)
    >>> store.authenticate(token) == key
    True
    >>> store.revoke(key.key_id).revoked, store.authenticate(token)
    (True, None)
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from safeguard.config import available_presets
from safeguard.errors import ConfigError
from safeguard.server.durable import fsync_dir, replace_file

__all__ = ["ApiKey", "KeyStore", "validate_preset_name"]

_FORMAT = "safeguard-keys/1"
_TOKEN_PREFIX = "sgk_"
_TOKEN = re.compile(r"sgk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_RECORD_FIELDS = frozenset({"key_id", "name", "preset", "rate_per_minute", "revoked", "salt", "hash", "created"})
_MAX_NAME = 100


@dataclass(frozen=True)
class ApiKey:
    """One API key as the server sees it: who it is, which preset binds it, and its rate limit."""

    key_id: str
    name: str
    preset: str
    rate_per_minute: int | None
    revoked: bool


def validate_preset_name(preset: str) -> str:
    """Return ``preset`` if it names a bundled preset or an existing preset YAML file; else raise ConfigError.

    Example:
        >>> validate_preset_name("strict")
        'strict'
    """
    if not isinstance(preset, str) or not preset:
        raise ConfigError(f"preset must be a non-empty string, not {preset!r}")
    if preset in available_presets():
        return preset
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"preset file {preset!r} does not exist")
        return preset
    raise ConfigError(f"unknown preset {preset!r}; bundled: {', '.join(available_presets())}, or a path to a YAML file")


def _secret_hash(salt: bytes, secret: str) -> str:
    return hashlib.sha256(salt + secret.encode("ascii")).hexdigest()


class KeyStore:
    """The API keys in one JSON file; thread-safe. A missing file is an empty store (``add`` creates it).

    Example:
        >>> import tempfile, pathlib
        >>> store = KeyStore(pathlib.Path(tempfile.mkdtemp()) / "keys.json")
        >>> key, token = store.add("lab", "research")
        >>> [k.name for k in store.list()]
        ['lab']
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._records: dict[str, dict[str, Any]] = {}
        with self._lock:
            self._refresh()

    def __repr__(self) -> str:
        return f"KeyStore({str(self.path)!r})"

    # -- reading -----------------------------------------------------------------------------------------
    def authenticate(self, token: str) -> ApiKey | None:
        """The live key a bearer token belongs to; None for a malformed, unknown or revoked token.

        Raises:
            ConfigError: the keys file changed into something that is not a valid keys file.
        """
        match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
        with self._lock:
            self._refresh()
            record = self._records.get(match.group(1)) if match else None
        # Hash even when nothing matched, so that timing says nothing about which key ids exist.
        salt = bytes.fromhex(record["salt"]) if record else b"\0" * 16
        expected = record["hash"] if record else "0" * 64
        given = _secret_hash(salt, match.group(2) if match else "")
        if not hmac.compare_digest(given, expected) or record is None or record["revoked"]:
            return None
        return _api_key(record)

    def list(self) -> list[ApiKey]:
        """Every key in the file, revoked ones included, oldest first."""
        with self._lock:
            self._refresh()
            return [_api_key(r) for r in self._records.values()]

    def _refresh(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._records = None, {}
            return
        stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if stamp != self._stamp:
            self._records = self._read(self.path.read_bytes())
            self._stamp = stamp

    def _read(self, raw: bytes) -> dict[str, dict[str, Any]]:
        where = str(self.path)
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{where}: not a keys file (invalid JSON: {err})") from err
        if not isinstance(data, dict) or set(data) != {"format", "keys"} or data["format"] != _FORMAT:
            raise ConfigError(f"{where}: not a keys file (expected {{'format': {_FORMAT!r}, 'keys': [...]}})")
        if not isinstance(data["keys"], list):
            raise ConfigError(f"{where}: keys must be a list")
        records: dict[str, dict[str, Any]] = {}
        for index, record in enumerate(data["keys"]):
            here = f"{where}: keys[{index}]"
            if not isinstance(record, dict) or set(record) != _RECORD_FIELDS:
                found = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise ConfigError(f"{here}: expected exactly the fields {sorted(_RECORD_FIELDS)}, found {found}")
            _check_record(record, here)
            if record["key_id"] in records:
                raise ConfigError(f"{here}: duplicate key_id {record['key_id']!r}")
            records[record["key_id"]] = record
        return records

    # -- writing -----------------------------------------------------------------------------------------
    def add(self, name: str, preset: str, rate_per_minute: int | None = None) -> tuple[ApiKey, str]:
        """Create a key bound to ``preset``; returns the key and its secret token, which is never stored.

        Raises:
            ConfigError: empty or overlong name, unknown preset, or a rate that is not a positive integer.
        """
        if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME or not name.isprintable():
            raise ConfigError(f"key name must be 1-{_MAX_NAME} printable characters, not {name!r}")
        validate_preset_name(preset)
        _check_rate(rate_per_minute, "rate_per_minute")
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
        salt = secrets.token_bytes(16)
        record = {
            "key_id": secrets.token_hex(8),
            "name": name,
            "preset": preset,
            "rate_per_minute": rate_per_minute,
            "revoked": False,
            "salt": salt.hex(),
            "hash": _secret_hash(salt, secret),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

        def append(records: dict[str, dict[str, Any]]) -> None:
            records[record["key_id"]] = record

        self._update(append)
        return _api_key(record), f"{_TOKEN_PREFIX}{record['key_id']}_{secret}"

    def revoke(self, key_id: str) -> ApiKey:
        """Mark a key revoked (it stays listed); revoking a revoked key is a no-op.

        Raises:
            ConfigError: no key has this id.
        """

        def mark(records: dict[str, dict[str, Any]]) -> None:
            if key_id not in records:
                known = ", ".join(records) or "none"
                raise ConfigError(f"{self.path}: no key with id {key_id!r} (known: {known})")
            records[key_id]["revoked"] = True

        records = self._update(mark)
        return _api_key(records[key_id])

    def _update(self, change: Callable[[dict[str, dict[str, Any]]], None]) -> dict[str, dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with self._lock, open(lock_path, "a") as lock_file:
            # The lock file, not the keys file, is locked: the keys file is replaced by rename on every write.
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            self._refresh()
            records = {k: dict(v) for k, v in self._records.items()}
            change(records)
            body = json.dumps({"format": _FORMAT, "keys": list(records.values())}, indent=1, ensure_ascii=False)
            replace_file(self.path, body.encode("utf-8") + b"\n")
            fsync_dir(self.path.parent)
            self._refresh()
            return records


def _check_rate(value: Any, where: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{where} must be a positive integer or null, not {value!r}")


def _check_record(record: dict[str, Any], where: str) -> None:
    if not isinstance(record["key_id"], str) or not re.fullmatch(r"[0-9a-f]{16}", record["key_id"]):
        raise ConfigError(f"{where}: key_id must be 16 hex digits, not {record['key_id']!r}")
    if not isinstance(record["name"], str) or not record["name"]:
        raise ConfigError(f"{where}: name must be a non-empty string")
    validate_preset_name(record["preset"])
    _check_rate(record["rate_per_minute"], f"{where}: rate_per_minute")
    if not isinstance(record["revoked"], bool):
        raise ConfigError(f"{where}: revoked must be true or false")
    for field, digits in (("salt", 32), ("hash", 64)):
        if not isinstance(record[field], str) or not re.fullmatch(rf"[0-9a-f]{{{digits}}}", record[field]):
            raise ConfigError(f"{where}: {field} must be {digits} hex digits")


def _api_key(record: dict[str, Any]) -> ApiKey:
    return ApiKey(record["key_id"], record["name"], record["preset"], record["rate_per_minute"], record["revoked"])
