"""The host service's API key store: hashed tokens, revocation without restart, atomic writes, the CLI."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from safeguard import cli
from safeguard.errors import ConfigError
from safeguard.server.keys import ApiKey, KeyStore


@pytest.fixture
def keys_path(tmp_path: Path) -> Path:
    return tmp_path / "keys.json"


def test_a_token_authenticates_as_its_key_and_only_its_hash_is_stored(keys_path: Path) -> None:
    store = KeyStore(keys_path)
    key, token = store.add("acme", "strict", rate_per_minute=30)
    assert key == ApiKey(key.key_id, "acme", "strict", 30, False)
    assert store.authenticate(token) == key
    secret = token.rsplit("_", 1)[1]
    raw = keys_path.read_text()
    assert secret not in raw and token not in raw
    record = json.loads(raw)["keys"][0]
    assert len(record["hash"]) == 64 and len(record["salt"]) == 32
    assert stat.S_IMODE(keys_path.stat().st_mode) == 0o600


def test_two_keys_get_different_tokens_salts_and_hashes(keys_path: Path) -> None:
    store = KeyStore(keys_path)
    (a, token_a), (b, token_b) = store.add("a", "balanced"), store.add("b", "balanced")
    assert a.key_id != b.key_id and token_a != token_b
    records = json.loads(keys_path.read_text())["keys"]
    assert records[0]["salt"] != records[1]["salt"] and records[0]["hash"] != records[1]["hash"]
    assert store.authenticate(token_a) == a and store.authenticate(token_b) == b


@pytest.mark.parametrize(
    "bad",
    ["", "Bearer x", "sgk_", "sgk_0123456789abcdef_short", "not-a-token" * 10, None, 42, b"sgk_"],
)
def test_malformed_tokens_do_not_authenticate(keys_path: Path, bad: object) -> None:
    store = KeyStore(keys_path)
    store.add("acme", "strict")
    assert store.authenticate(bad) is None  # type: ignore[arg-type]


def test_a_wrong_secret_or_a_secret_under_another_key_id_does_not_authenticate(keys_path: Path) -> None:
    store = KeyStore(keys_path)
    a, token_a = store.add("a", "strict")
    b, _ = store.add("b", "strict")
    prefix, key_id, secret = token_a.split("_", 2)
    flipped = ("A" if secret[0] != "A" else "B") + secret[1:]
    assert store.authenticate(f"{prefix}_{key_id}_{flipped}") is None
    assert store.authenticate(f"{prefix}_{b.key_id}_{secret}") is None
    assert store.authenticate(token_a) == a


def test_revocation_reaches_a_running_store_without_restart(keys_path: Path) -> None:
    server = KeyStore(keys_path)
    admin = KeyStore(keys_path)
    key, token = admin.add("acme", "strict")
    assert server.authenticate(token) == key  # a key added after the server started works at once
    revoked = admin.revoke(key.key_id)
    assert revoked.revoked
    assert server.authenticate(token) is None
    assert [k.revoked for k in server.list()] == [True]
    assert admin.revoke(key.key_id).revoked  # revoking twice is a no-op


def test_revoking_an_unknown_key_names_it(keys_path: Path) -> None:
    store = KeyStore(keys_path)
    store.add("acme", "strict")
    with pytest.raises(ConfigError, match="no key with id 'ffffffffffffffff'"):
        store.revoke("ffffffffffffffff")


def test_a_missing_file_is_an_empty_store_and_a_deleted_file_authenticates_nobody(keys_path: Path) -> None:
    store = KeyStore(keys_path)
    assert store.list() == [] and not keys_path.exists()
    _, token = store.add("acme", "balanced")
    keys_path.unlink()
    assert store.authenticate(token) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "x", "preset": "lenient"}, "unknown preset 'lenient'; bundled: balanced, research, strict"),
        ({"name": "x", "preset": "missing.yaml"}, "preset file 'missing.yaml' does not exist"),
        ({"name": "", "preset": "strict"}, "key name must be"),
        ({"name": "a\nb", "preset": "strict"}, "key name must be"),
        ({"name": "x" * 101, "preset": "strict"}, "key name must be"),
        ({"name": "x", "preset": "strict", "rate_per_minute": 0}, "rate_per_minute must be a positive integer"),
        ({"name": "x", "preset": "strict", "rate_per_minute": True}, "rate_per_minute must be a positive integer"),
        ({"name": "x", "preset": "strict", "rate_per_minute": 1.5}, "rate_per_minute must be a positive integer"),
    ],
)
def test_bad_key_settings_are_config_errors(keys_path: Path, kwargs: dict, message: str) -> None:
    store = KeyStore(keys_path)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        store.add(**kwargs)
    assert not keys_path.exists()


def test_a_preset_file_path_is_accepted(keys_path: Path, tmp_path: Path) -> None:
    preset = tmp_path / "host.yaml"
    preset.write_text("on_block: raise\n")
    key, token = KeyStore(keys_path).add("acme", str(preset))
    assert KeyStore(keys_path).authenticate(token) == key and key.preset == str(preset)


def _with_field(data: dict, field: str, value: object) -> str:
    return json.dumps({**data, "keys": [{**data["keys"][0], field: value}]})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda data: "{not json", "invalid JSON"),
        (lambda data: json.dumps({**data, "extra": 1}), "not a keys file"),
        (lambda data: _with_field(data, "admin", True), "expected exactly the fields"),
        (lambda data: _with_field(data, "preset", "open"), "unknown preset 'open'"),
        (lambda data: _with_field(data, "revoked", "no"), "revoked must be"),
        (lambda data: json.dumps({**data, "keys": data["keys"] * 2}), "duplicate key_id"),
    ],
)
def test_a_damaged_keys_file_is_an_error_naming_the_problem(keys_path: Path, edit, message: str) -> None:
    store = KeyStore(keys_path)
    _, token = store.add("acme", "strict")
    keys_path.write_text(edit(json.loads(keys_path.read_text())))
    with pytest.raises(ConfigError, match=message):
        store.authenticate(token)


def test_concurrent_adds_from_two_stores_lose_no_key_and_leave_no_temporary_files(keys_path: Path) -> None:
    stores = [KeyStore(keys_path), KeyStore(keys_path)]
    tokens: list[str] = []

    def add_some(store: KeyStore, worker: int) -> None:
        for i in range(5):
            tokens.append(store.add(f"w{worker}-{i}", "balanced")[1])

    threads = [threading.Thread(target=add_some, args=(stores[w % 2], w)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    reader = KeyStore(keys_path)
    assert len(reader.list()) == 30
    assert all(reader.authenticate(t) is not None for t in tokens)
    assert sorted(os.listdir(keys_path.parent)) == ["keys.json", "keys.json.lock"]


# -- the command line ------------------------------------------------------------------------------------
def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_keys_add_list_revoke(keys_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "keys", "add", "--keys", str(keys_path), "--name", "acme", "--preset", "strict",
                        "--rate", "60", "--json")  # fmt: skip
    assert code == 0
    added = json.loads(out)
    assert added["name"] == "acme" and added["preset"] == "strict" and added["rate_per_minute"] == 60
    assert KeyStore(keys_path).authenticate(added["token"]).key_id == added["key_id"]

    code, out, _ = _run(capsys, "keys", "list", "--keys", str(keys_path))
    assert code == 0 and added["key_id"] in out and "acme" in out and "active" in out
    assert added["token"] not in out

    code, out, _ = _run(capsys, "keys", "revoke", "--keys", str(keys_path), added["key_id"])
    assert code == 0 and "revoked" in out
    assert KeyStore(keys_path).authenticate(added["token"]) is None
    code, out, _ = _run(capsys, "keys", "list", "--keys", str(keys_path), "--json")
    assert [k["revoked"] for k in json.loads(out)] == [True]


def test_cli_keys_add_prints_the_token_once_in_text_mode(keys_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "keys", "add", "--keys", str(keys_path), "--name", "lab", "--preset", "research")
    assert code == 0
    token = next(line.split()[-1] for line in out.splitlines() if line.startswith("token"))
    assert KeyStore(keys_path).authenticate(token).name == "lab"
    assert "shown once" in out


def test_cli_keys_errors_exit_2_with_the_reason(keys_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "keys", "add", "--keys", str(keys_path), "--name", "x", "--preset", "nope")
    assert code == cli.EXIT_ERROR and "unknown preset 'nope'" in err
    code, _, err = _run(capsys, "keys", "revoke", "--keys", str(keys_path), "0123456789abcdef")
    assert code == cli.EXIT_ERROR and "no key with id '0123456789abcdef'" in err


def test_serve_without_the_server_extra_names_it(monkeypatch, capsys):
    import importlib.util

    from safeguard.cli import EXIT_ERROR, main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    assert main(["serve"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "needs fastapi" in err and "pip install 'diffusers-safeguard[server]'" in err
