"""``safeguard verify`` and ``safeguard credentials init``: the disclosure command group.

Exit codes of ``safeguard verify``: 0 when every file discloses that it was generated (a watermark, or valid
content credentials) and none was tampered with, 1 otherwise, 2 for a file that cannot be read.

Example:
    $ safeguard credentials init ./dev-credentials
    $ safeguard verify --trust-anchor ./dev-credentials/ca.pem out.png
    $ safeguard verify --json shared.jpg
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from safeguard.cli import EXIT_ALLOWED, EXIT_BLOCKED

__all__ = ["add_commands"]


def add_commands(subparsers: Any) -> None:
    """Register ``verify`` and ``credentials`` on the ``safeguard`` command line."""
    verify = subparsers.add_parser("verify", help="read the watermark and content credentials of image files")
    verify.add_argument("files", nargs="+", type=Path, metavar="FILE")
    verify.add_argument("--trust-anchor", type=Path, default=None, help="PEM root certificate(s) to trust")
    verify.add_argument("--json", action="store_true", help="print one JSON object per file")
    verify.set_defaults(run=_run_verify)

    credentials = subparsers.add_parser("credentials", help="signing credentials for content credentials")
    actions = credentials.add_subparsers(required=True, metavar="ACTION")
    init = actions.add_parser("init", help="make a local test CA and signing certificate (development only)")
    init.add_argument("folder", type=Path, metavar="DIR")
    init.add_argument("--force", action="store_true", help="replace credentials already in DIR")
    init.set_defaults(run=_run_credentials_init)


def _run_verify(args: argparse.Namespace) -> int:
    from safeguard.disclosure.verify import verify

    anchors = None
    if args.trust_anchor is not None:
        from safeguard.errors import InputError

        try:
            anchors = args.trust_anchor.read_bytes()
        except OSError as err:
            raise InputError(f"trust anchor {args.trust_anchor}: {err}") from err
    all_disclosed = True
    for path in args.files:
        report = verify(path, trust_anchors=anchors)
        all_disclosed &= report.disclosed
        if args.json:
            print(json.dumps(report.to_dict(), ensure_ascii=False))
            continue
        mark = report.watermark
        if mark.found and mark.payload is not None:
            what = (
                f"found (generator {mark.payload.generator_id}, content tag {mark.payload.content_tag:04x}, "
                f"word {mark.payload.hex()}, confidence {mark.confidence:.2f}, {mark.bit_errors} bits corrected)"
            )
        else:
            what = f"not found (strength {mark.confidence:.2f})"
        manifest = report.manifest
        print(path)
        print(f"  watermark   {what}")
        line = manifest.state
        if manifest.signer:
            line += f", signed by {manifest.signer}"
        if manifest.failures:
            line += f"; failures: {', '.join(manifest.failures)}"
        print(f"  c2pa        {line}")
        if manifest.assertion:
            policy, verdict = manifest.assertion.get("policy", {}), manifest.assertion.get("verdict", {})
            print(
                f"  verdict     {verdict.get('action')} under {policy.get('id')}@{policy.get('version')}"
                f" (stages {', '.join(verdict.get('stages', []))})"
            )
        if report.watermark_matches_manifest is not None:
            print(f"  mark = manifest's record: {'yes' if report.watermark_matches_manifest else 'NO'}")
        print(f"  iptc        {report.digital_source_type or 'no digital source type in metadata'}")
        print(f"  => {_conclusion(report)}")
    return EXIT_ALLOWED if all_disclosed else EXIT_BLOCKED


def _conclusion(report: Any) -> str:
    if report.manifest.state == "tampered":
        return "TAMPERED: the pixels or the manifest changed after signing"
    if report.manifest.state == "invalid":
        return "INVALID content credentials"
    return "discloses that it was generated" if report.disclosed else "NOT disclosed: no watermark, no credentials"


def _run_credentials_init(args: argparse.Namespace) -> int:
    from safeguard.disclosure.credentials import CA_FILE, CHAIN_FILE, KEY_FILE, create_test_credentials

    folder = create_test_credentials(args.folder, overwrite=args.force)
    print(f"wrote test credentials to {folder.resolve()} (development only: this CA is trusted by nobody else)")
    print(f"  {CHAIN_FILE}  signing certificate, then the test CA")
    print(f"  {KEY_FILE}         its private key")
    print(f"  {CA_FILE}             the test CA: pass it to `safeguard verify --trust-anchor`")
    return EXIT_ALLOWED
