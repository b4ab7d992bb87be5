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
    import torch

    import safeguard
    from safeguard.testing import tiny

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    pipe = safeguard.protect(tiny.sd_pipeline())
    print(f"protected {type(pipe.pipeline).__name__} (tiny, random weights): {pipe!r}")
    records = []
    for name, prompt in (("allowed", "a watercolor painting of a lighthouse at dawn"), ("blocked", "a pipe bomb")):
        generator = torch.Generator().manual_seed(0)
        try:
            result = pipe(prompt, num_inference_steps=4, generator=generator)
        except safeguard.PromptBlocked as blocked:
            print(f"[{name}] {prompt!r}: blocked before denoising -> {blocked.verdict}")
            records.append({"prompt": prompt, "blocked": True, "verdict": blocked.verdict.to_dict()})
            continue
        path = out / f"{name}.png"
        credentials = _demo_credentials(out)
        safeguard.save(result.images[0], path, verdict=result.verdicts[0], credentials=credentials)
        print(f"[{name}] {prompt!r}: {result.verdicts[0]} -> {path}")
        anchor = None if credentials is None else credentials / "ca.pem"
        report = safeguard.verify(path, trust_anchors=anchor)
        payload = report.watermark.payload
        print(
            f"[{name}] disclosure: watermark {'found' if report.watermark.found else 'NOT found'}"
            f"{f' (generator id {payload.generator_id})' if payload else ''}, content credentials "
            f"{report.manifest.state}"
            + ("" if credentials else " (pip install 'diffusers-safeguard[disclosure]' to sign them)")
        )
        records.append({"prompt": prompt, "image": str(path), "verdict": result.verdicts[0].to_dict()})
    verdicts_path = out / "verdicts.json"
    verdicts_path.write_text(json.dumps(records, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"wrote images and verdicts to {out.resolve()} (verdicts: {verdicts_path})")
    return EXIT_ALLOWED


def _demo_credentials(out: Path) -> Path | None:
    """A test CA and signer under ``out/credentials`` when c2pa-python is installed (the disclosure extra)."""
    import importlib.util

    from safeguard.disclosure import create_test_credentials

    if importlib.util.find_spec("c2pa") is None:
        return None
    folder = out / "credentials"
    if not (folder / "signer.key").is_file():
        create_test_credentials(folder)
    return folder


if __name__ == "__main__":
    sys.exit(main())
