"""The host service's commands: ``safeguard serve``, ``safeguard keys add|list|revoke``, ``safeguard audit verify``.

Registered in :data:`safeguard.cli.COMMAND_MODULES`; the server's own modules (FastAPI, uvicorn, Ray) are
imported only inside the command that runs them, so ``safeguard --help`` stays fast.

Example:
    $ safeguard keys add --keys keys.json --name acme --preset strict --rate 60
    $ safeguard keys list --keys keys.json
    $ safeguard keys revoke --keys keys.json 3f0c9a1e5b7d2468
    $ safeguard serve --config server.yaml --port 8000
    $ safeguard serve --ray --config server.yaml --gpus-per-replica 1 --max-replicas 4
    $ safeguard audit verify audit.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from safeguard.cli import EXIT_ALLOWED
from safeguard.errors import ConfigError

__all__ = ["EXIT_AUDIT_BROKEN", "add_commands"]

# `safeguard audit verify`: 0 the chain holds, 1 it is broken (2, as everywhere, is bad input or configuration).
EXIT_AUDIT_BROKEN = 1


def add_commands(subparsers: Any) -> None:
    """Add ``serve``, ``keys`` and ``audit`` to the ``safeguard`` command line's subparsers."""
    serve = subparsers.add_parser("serve", help="run the host service (HTTP API: moderation, generation, metrics)")
    serve.add_argument("--config", type=Path, default=None, help="server settings YAML (default: built-in defaults)")
    serve.add_argument("--pipeline", type=Path, default=None, help="local diffusers folder (default: the toy world)")
    serve.add_argument(
        "--credentials", type=Path, default=None, help="C2PA credentials folder: sign every returned PNG"
    )
    serve.add_argument("--host", default=None, help="address to listen on (overrides the settings file)")
    serve.add_argument("--port", type=int, default=None, help="port to listen on (overrides the settings file)")
    ray = serve.add_argument_group("Ray Serve (pip install 'diffusers-safeguard[server,ray]')")
    ray.add_argument("--ray", action="store_true", help="run as a Ray Serve application")
    ray.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs each pipeline replica reserves")
    ray.add_argument("--min-replicas", type=int, default=1, help="autoscaling floor per deployment (default 1)")
    ray.add_argument("--max-replicas", type=int, default=1, help="autoscaling ceiling per deployment (default 1)")
    ray.add_argument("--ray-address", default=None, help="join this Ray cluster (default: start Ray on this machine)")
    ray.add_argument("--ray-cpus", type=int, default=None, help="CPUs for a local Ray (default: all)")
    serve.set_defaults(run=_run_serve)

    keys = subparsers.add_parser("keys", help="manage the service's API keys (a file of salted hashes)")
    key_commands = keys.add_subparsers(required=True, metavar="ACTION")
    add = key_commands.add_parser("add", help="create a key bound to a preset; prints its token once")
    add.add_argument("--name", required=True, help="who the key is for (a label)")
    add.add_argument("--preset", required=True, help="preset the key is bound to: balanced, strict, research or a YAML")
    add.add_argument("--rate", type=int, default=None, help="requests per minute (default: the server's default)")
    listing = key_commands.add_parser("list", help="list the keys (never their tokens)")
    revoke = key_commands.add_parser("revoke", help="revoke a key; a running server refuses it on the next request")
    revoke.add_argument("key_id", help="the key's id, as `keys list` shows it")
    for parser, run in ((add, _run_keys_add), (listing, _run_keys_list), (revoke, _run_keys_revoke)):
        parser.add_argument("--keys", type=Path, required=True, metavar="FILE", help="the keys file")
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.set_defaults(run=run)

    audit = subparsers.add_parser("audit", help="check the service's hash-chained audit log")
    audit_commands = audit.add_subparsers(required=True, metavar="ACTION")
    verify = audit_commands.add_parser("verify", help="verify the chain; exit 1 at the first broken or missing link")
    verify.add_argument("file", type=Path, metavar="FILE", help="the live audit log (rotated FILE.1, FILE.2... too)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(run=_run_audit_verify)


def _run_serve(args: argparse.Namespace) -> int:
    from safeguard.server.settings import load_server_settings

    _require("fastapi", "uvicorn", "prometheus_client", extra="server")
    if args.ray:
        _require("ray", extra="server,ray")
    from safeguard.server.app import serve

    settings = load_server_settings(
        args.config, host=args.host, port=args.port, pipeline=args.pipeline, credentials=args.credentials
    )
    if args.ray:
        from safeguard.server.ray_app import run_ray

        run_ray(
            settings,
            address=args.ray_address,
            num_cpus=args.ray_cpus,
            num_gpus=args.gpus_per_replica,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
        )
        return EXIT_ALLOWED
    serve(settings)
    return EXIT_ALLOWED


def _require(*modules: str, extra: str) -> None:
    """ConfigError naming the extra to install when one of ``modules`` is missing (not a bare traceback)."""
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"safeguard serve needs {', '.join(missing)}: pip install 'diffusers-safeguard[{extra}]'")


def _key_row(key: Any) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "name": key.name,
        "preset": key.preset,
        "rate_per_minute": key.rate_per_minute,
        "revoked": key.revoked,
    }


def _run_keys_add(args: argparse.Namespace) -> int:
    from safeguard.server.keys import KeyStore

    key, token = KeyStore(args.keys).add(args.name, args.preset, rate_per_minute=args.rate)
    if args.json:
        print(json.dumps({**_key_row(key), "token": token}, ensure_ascii=False))
        return EXIT_ALLOWED
    rate = f"{key.rate_per_minute}/min" if key.rate_per_minute else "server default"
    print(f"key_id  {key.key_id}\nname    {key.name}\npreset  {key.preset}\nrate    {rate}\ntoken   {token}")
    print("The token is shown once: only its salted hash is stored. Clients send it as 'Authorization: Bearer TOKEN'.")
    return EXIT_ALLOWED


def _run_keys_list(args: argparse.Namespace) -> int:
    from safeguard.server.keys import KeyStore

    keys = KeyStore(args.keys).list()
    if args.json:
        print(json.dumps([_key_row(k) for k in keys], ensure_ascii=False))
        return EXIT_ALLOWED
    print(f"{'key_id':16}  {'status':7}  {'rate/min':8}  {'preset':12}  name")
    for key in keys:
        rate = str(key.rate_per_minute) if key.rate_per_minute else "default"
        status = "revoked" if key.revoked else "active"
        print(f"{key.key_id:16}  {status:7}  {rate:8}  {key.preset:12}  {key.name}")
    return EXIT_ALLOWED


def _run_keys_revoke(args: argparse.Namespace) -> int:
    from safeguard.server.keys import KeyStore

    key = KeyStore(args.keys).revoke(args.key_id)
    if args.json:
        print(json.dumps(_key_row(key), ensure_ascii=False))
    else:
        print(f"revoked {key.key_id} ({key.name})")
    return EXIT_ALLOWED


def _run_audit_verify(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from safeguard.server.audit import verify_audit

    report = verify_audit(args.file)
    print(json.dumps(asdict(report)) if args.json else report)
    return EXIT_ALLOWED if report.ok else EXIT_AUDIT_BROKEN
