"""The ``safeguard`` command line: ``check``, ``policy`` and ``demo``; ``scan`` and ``eval`` come from
:mod:`safeguard.reports.commands`, ``serve``, ``keys`` and ``audit`` from :mod:`safeguard.server.commands`.

Exit codes of ``safeguard check``: 0 allowed, 1 blocked, 3 flagged for steering (not blocked), 2 bad input
or configuration; with ``--file`` or ``-`` (standard input), 4 when some lines could not be checked and none is
blocked. Every command exits with 2 on bad input or configuration, and with 141 when its output is piped into a
command that stops reading early.

Example:
    $ safeguard check "a watercolor painting of a lighthouse at dawn"
    $ safeguard check --json --preset strict "a nude portrait"; echo $?
    $ cut -f2 prompts.tsv | safeguard check -
    $ safeguard policy --preset strict
    $ safeguard demo --out ./safeguard-demo
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safeguard._quiet import hide_torchvision_notice
from safeguard.errors import InputError, SafeguardError

if TYPE_CHECKING:
    from safeguard.guard import Guard

__all__ = ["EXIT_ALLOWED", "EXIT_BLOCKED", "EXIT_BROKEN_PIPE", "EXIT_ERROR", "EXIT_STEER", "STDIN", "main"]

EXIT_ALLOWED, EXIT_BLOCKED, EXIT_ERROR, EXIT_STEER = 0, 1, 2, 3
#: 128 + SIGPIPE (13): what a shell reports for a command that stopped because its reader went away.
EXIT_BROKEN_PIPE = 141
#: The PROMPT argument that reads the prompts from standard input, one per line.
STDIN = "-"

# The parser's description is written for a terminal; the module docstring above is reStructuredText.
DESCRIPTION = (
    "Check prompts and images against a usage policy, before and after a diffusers pipeline runs. "
    "Exit codes of check: 0 allowed, 1 blocked, 3 flagged for steering (none blocked), 2 bad input or "
    "configuration; with --file or - (standard input), 4 when some lines could not be checked and none is blocked."
)

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
    hide_torchvision_notice()
    try:
        code: int = args.run(args)
        # Flushed here, so that a reader that went away shows up as the BrokenPipeError below, not at exit.
        sys.stdout.flush()
        return code
    except SafeguardError as err:
        print(f"safeguard: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader (``| head -1``) has all it wanted. Python flushes stdout again at exit, so point it at devnull
        # to keep that flush from failing a second time with a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _version() -> str:
    try:
        return f"safeguard {importlib.metadata.version('diffusers-safeguard')}"
    except importlib.metadata.PackageNotFoundError:
        return "safeguard (version unknown: the diffusers-safeguard distribution is not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safeguard", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="check prompts against the policy")
    check.add_argument(
        "prompts", nargs="*", metavar="PROMPT", help="prompts to check; - reads them from standard input"
    )
    check.add_argument("--json", action="store_true", help="print one JSON object per prompt, with the prompt")
    check.add_argument(
        "--file", type=Path, help="prompts from a text file (one per line) or a CSV with a prompt column, batched"
    )
    check.add_argument("--no-progress", action="store_true", help="no progress bar for --file (none off a terminal)")
    _policy_options(check)
    check.set_defaults(run=_run_check)

    policy = commands.add_parser("policy", help="list the policy's categories and the checks that run for each")
    _policy_options(policy)
    policy.add_argument("--json", action="store_true", help="print the listing as one JSON object")
    policy.set_defaults(run=_run_policy)

    demo = commands.add_parser("demo", help="protect a tiny offline pipeline and run two prompts")
    demo.add_argument("--out", type=_folder, default="safeguard-demo", help="folder for images and verdicts")
    demo.set_defaults(run=_run_demo)

    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(commands)
    return parser


def _folder(value: str) -> Path:
    """An ``--out`` folder: one that exists, or one that can be made (nothing in its way is a file)."""
    path = Path(value)
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise argparse.ArgumentTypeError(f"{part} exists and is not a folder")
            break
    return path


def _policy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", default="stability-aup-2025-07-31", help="policy id or YAML path")
    parser.add_argument("--preset", default=None, help="balanced (default), strict, research or a YAML path")
    parser.add_argument("--config", default=None, help="user YAML file layered over the preset")


def _run_check(args: argparse.Namespace) -> int:
    from safeguard.checks import check_prompts

    if args.file is not None or args.prompts == [STDIN]:
        from safeguard.reports.commands import run_check_file

        return run_check_file(args)
    if STDIN in args.prompts:
        raise InputError("- reads the prompts from standard input; give it alone, without other prompts")
    prompts = []
    for number, prompt in enumerate(args.prompts, start=1):
        if prompt.strip():
            prompts.append(prompt)
        else:
            print(f"safeguard: check: prompt {number} is empty; skipped", file=sys.stderr)
    if not prompts:
        raise InputError(
            "every prompt given is empty" if args.prompts else "give one or more prompts, - or --file FILE"
        )
    verdicts = check_prompts(prompts, args.policy, args.preset, config=args.config)
    for prompt, verdict in zip(prompts, verdicts, strict=True):
        if args.json:
            print(json.dumps({"prompt": prompt, **verdict.to_dict()}, ensure_ascii=False))
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
    from safeguard.guard import Guard
    from safeguard.stages.image import IMAGE_BACKENDS

    # The Guard the other commands build, so the listing shows the stages this configuration really runs.
    guard = Guard.create(args.policy, args.preset, args.config)
    policy, settings = guard.policy, guard.settings
    running = [stage.name for stage in guard.image_stages]
    idle = [name for name in IMAGE_BACKENDS if name not in running and name not in guard.skipped_backends]
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
                "checks": _checks_of(guard, c.id),
            }
            for c in policy.categories
        ]
        backends = {"enabled": settings.output.enabled, "running": running, "skipped": list(guard.skipped_backends)}
        document = {
            "id": policy.id,
            "version": policy.version,
            "preset": settings.preset,
            "image_backends": {**backends, "not_configured": idle},
            "categories": rows,
        }
        print(json.dumps(document, ensure_ascii=False))
        return EXIT_ALLOWED
    print(f"{policy.title} ({policy.id}, version {policy.version}); preset {settings.preset}\n")
    table: list[tuple[str, ...] | str] = [("category", "clauses", "prompt", "steering", "image", "")]
    section = None
    for c in policy.categories:
        if c.section != section:
            section = c.section
            table.append(section)
        checks = _checks_of(guard, c.id)
        if not c.enforced:
            cells = ("out of scope", "-", "-")
        else:
            cells = (
                ", ".join(checks["prompt"]) or ("not checked" if "prompt" in c.applies_to else "-"),
                "yes" if checks["steering"] else "-",
                ", ".join(checks["image"]) or ("not checked" if "image" in c.applies_to else "-"),
            )
        notes = ["locked: always blocks"] if c.locked else []
        if "disclosure" in c.applies_to:
            notes.append(f"disclosure: watermark {'on' if settings.disclosure.enabled else 'off'}")
        if "process" in c.applies_to:
            notes.append("also applies to process (not checked here)")
        table.append((c.id, ", ".join(cl.ref for cl in c.clauses), *cells, "; ".join(notes)))
    for line in _aligned(table):
        print(line)
    print()
    if not settings.output.enabled:
        print("image checks: off (output.enabled is false)")
    else:
        scored = [f"{s.name} ({', '.join(s.categories)})" for s in guard.image_stages]
        print(f"image backends running: {', '.join(scored) or 'none'}")
        if guard.skipped_backends:
            print(f"listed but scoring no category of this policy: {', '.join(guard.skipped_backends)}")
        if idle:
            print(f"not configured: {', '.join(idle)} (see output.backends, and output.<backend>.weights for models)")
    return EXIT_ALLOWED


def _checks_of(guard: Guard, category: str) -> dict[str, Any]:
    """Which of ``guard``'s stages score ``category``: prompt stage names, steering (bool), image backend names.

    Example:
        >>> from safeguard.guard import Guard
        >>> _checks_of(Guard.create(), "sexual")["image"]  # doctest: +SKIP
        ['opennsfw', 'nudenet']
    """
    steering = guard.steering_stage
    return {
        "prompt": [stage.name for stage in guard.prompt_stages if category in stage.categories],
        "steering": steering is not None and category in steering.categories,
        "image": [stage.name for stage in guard.image_stages if category in stage.categories],
    }


def _aligned(rows: Sequence[tuple[str, ...] | str]) -> list[str]:
    """Rows of cells padded to their column's widest cell; a plain string is a heading line between rows."""
    cells = [row for row in rows if isinstance(row, tuple)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return [
        row if isinstance(row, str) else "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


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
