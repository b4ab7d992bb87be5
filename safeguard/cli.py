"""The ``safeguard`` command line: ``check``, ``policy`` and ``demo``; ``scan`` and ``eval`` come from
:mod:`safeguard.reports.commands`, ``serve``, ``keys`` and ``audit`` from :mod:`safeguard.server.commands`.

Exit codes of ``safeguard check``: 0 allowed, 1 blocked, 3 flagged for steering (not blocked), 2 bad input
or configuration; with ``--file``, 4 when some lines could not be checked and none is blocked.

Example:
    $ safeguard check "a watercolor painting of a lighthouse at dawn"
    $ safeguard check --json --preset strict "a nude portrait"; echo $?
    $ safeguard policy
    $ safeguard demo --out ./safeguard-demo
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safeguard.errors import InputError, SafeguardError

__all__ = ["EXIT_ALLOWED", "EXIT_BLOCKED", "EXIT_ERROR", "EXIT_STEER", "main"]

EXIT_ALLOWED, EXIT_BLOCKED, EXIT_ERROR, EXIT_STEER = 0, 1, 2, 3

# Larger command groups live beside the code they drive; each module has ``add_commands(subparsers)`` and must
# import its heavy dependencies only inside the command it runs, so that ``safeguard --help`` stays fast.
COMMAND_MODULES: tuple[str, ...] = (
    "safeguard.server.commands",
    "safeguard.disclosure.commands",
    "safeguard.reports.commands",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    Example:
        >>> main(["check", "a red bicycle"])  # doctest: +SKIP
        0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except SafeguardError as err:
        print(f"safeguard: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_ERROR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safeguard", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="check prompts against the policy")
    check.add_argument("prompts", nargs="*", metavar="PROMPT")
    check.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    check.add_argument(
        "--file", type=Path, help="prompts from a text file (one per line) or a CSV with a prompt column, batched"
    )
    check.add_argument("--no-progress", action="store_true", help="no progress bar for --file (none off a terminal)")
    _policy_options(check)
    check.set_defaults(run=_run_check)

    policy = commands.add_parser("policy", help="list the policy's categories")
    policy.add_argument("--policy", default="stability-aup-2025-07-31", help="policy id or YAML path")
    policy.add_argument("--json", action="store_true")
    policy.set_defaults(run=_run_policy)

    demo = commands.add_parser("demo", help="protect a tiny offline pipeline and run two prompts")
    demo.add_argument("--out", type=Path, default=Path("safeguard-demo"), help="folder for images and verdicts")
    demo.set_defaults(run=_run_demo)

    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(commands)
    return parser


def _policy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", default="stability-aup-2025-07-31", help="policy id or YAML path")
    parser.add_argument("--preset", default=None, help="balanced (default), strict, research or a YAML path")
    parser.add_argument("--config", default=None, help="user YAML file layered over the preset")


def _run_check(args: argparse.Namespace) -> int:
    from safeguard.checks import check_prompts

    if args.file is not None:
        from safeguard.reports.commands import run_check_file

        return run_check_file(args)
    if not args.prompts:
        raise InputError("give one or more prompts, or --file FILE")
    verdicts = check_prompts(args.prompts, args.policy, args.preset, config=args.config)
    for prompt, verdict in zip(args.prompts, verdicts, strict=True):
        if args.json:
            print(json.dumps(verdict.to_dict(), ensure_ascii=False))
            continue
        print(f"{verdict.action.value.upper():6} {prompt}")
        for finding in verdict.findings:
            print(
                f"       {finding.category:32} score {finding.score:.3f} >= {finding.threshold:.3f}"
                f"  {finding.stage}/{finding.source}  {finding.detail}"
            )
    if not args.json:
        print(f"policy {verdicts[0].policy_id}@{verdicts[0].policy_version}")
    if any(v.blocked for v in verdicts):
        return EXIT_BLOCKED
    return EXIT_STEER if any(v.flagged for v in verdicts) else EXIT_ALLOWED


def _run_policy(args: argparse.Namespace) -> int:
    from safeguard.policy import load_policy

    policy = load_policy(args.policy)
    if args.json:
        rows = [
            {
                "id": c.id,
                "name": c.name,
                "section": c.section,
                "applies_to": list(c.applies_to),
                "clauses": [cl.ref for cl in c.clauses],
                "locked": c.locked,
                "out_of_scope": c.out_of_scope,
            }
            for c in policy.categories
        ]
        print(json.dumps({"id": policy.id, "version": policy.version, "categories": rows}, ensure_ascii=False))
        return EXIT_ALLOWED
    print(f"{policy.title} ({policy.id}, version {policy.version})\n")
    print(f"{'category':32} {'clauses':28} applies to")
    for c in policy.categories:
        where = ", ".join(c.applies_to) if c.enforced else "out of scope"
        lock = " (locked: always blocks)" if c.locked else ""
        print(f"{c.id:32} {', '.join(cl.ref for cl in c.clauses):28} {where}{lock}")
        print(f"{'':32} {c.section}")
    return EXIT_ALLOWED


def _run_demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from safeguard.demo import run_demo

    result = run_demo(args.out)
    for item in result.items:
        verdict = item.verdict
        summary = "" if verdict is None else f" ({verdict['action']}{_finding_summary(verdict)})"
        where = f" -> {item.path}" if item.path else ""
        print(f"[{item.row}] {item.prompt!r}: {item.outcome}{summary}{where}")
    marks = {
        str(i.verdict["disclosure"].get("reason") or "marked")
        for i in result.items
        if i.verdict and i.verdict.get("disclosure")
    }
    if marks:
        print(f"watermark: {'; '.join(sorted(marks))}")
    if result.credentials is None:
        print("content credentials: not signed (pip install 'diffusers-safeguard[disclosure]' to sign them)")
    else:
        print(f"content credentials: signed by a local test CA ({result.credentials / 'ca.pem'})")
    print(f"contact sheet: {result.sheet.resolve()} (frames: green allowed, blue steered, red blocked and redacted,")
    print("  dark grey blocked before denoising, light grey the unprotected pipeline)")
    print(f"wrote images and verdicts to {args.out.resolve()} (verdicts: {result.verdicts})")
    return EXIT_ALLOWED


def _finding_summary(verdict: dict[str, Any]) -> str:
    findings = verdict.get("findings") or []
    if not findings:
        return ""
    first = findings[0]
    return (
        f": {first['category']} {first['score']:.2f} >= {first['threshold']:.2f} [{first['stage']}/{first['source']}]"
    )


if __name__ == "__main__":
    sys.exit(main())
