"""The reporting commands: ``safeguard scan`` (image files) and ``safeguard eval`` (labelled data, HTML report),
and the work behind ``safeguard check --file``.

Exit codes:

* ``scan``: 0 every file allowed, 1 any file blocked, 4 some files could not be checked (and none blocked),
  2 bad arguments or configuration (nothing checked).
* ``check --file`` and ``check -`` (standard input): 0 allowed, 1 any prompt blocked, 4 some lines could not be
  checked (none blocked), 3 some flagged for steering (none blocked, every line checked), 2 bad input or
  configuration.
* ``eval``: 0 the report was written, 2 bad input or configuration.

Registered in :data:`safeguard.cli.COMMAND_MODULES`; torch and the stages are imported only inside the
commands, so ``safeguard --help`` stays fast.

Example:
    $ safeguard scan photos/ --redact-to photos-redacted/
    $ safeguard scan --json --preset strict upload.png
    $ safeguard check --file ../shared/datasets/coco_5k.csv --json > verdicts.jsonl
    $ safeguard eval ../shared/datasets --ablate --out safeguard-eval
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from safeguard.cli import EXIT_ALLOWED, EXIT_BLOCKED, EXIT_STEER, _policy_options
from safeguard.errors import InputError

__all__ = ["EXIT_UNCHECKED", "add_commands", "run_check_file"]

#: Some inputs could not be checked (unreadable files, over-long prompts) and nothing was blocked.
EXIT_UNCHECKED = 4


def add_commands(subparsers: Any) -> None:
    """Add ``scan`` and ``eval`` to the ``safeguard`` command line's subparsers."""
    scan = subparsers.add_parser(
        "scan", help="check image files and folders (PNG, JPEG, WebP) through the output stage"
    )
    scan.add_argument("paths", nargs="+", metavar="PATH", help="image files, or folders scanned recursively")
    scan.add_argument("--json", action="store_true", help="print one JSON object per file (JSON Lines)")
    scan.add_argument(
        "--redact-to",
        type=Path,
        metavar="DIR",
        help="write allowed files as they are and blocked ones redacted here (a flagged original is never copied)",
    )
    scan.add_argument("--batch", type=int, default=16, help="files decoded and checked together (default 16)")
    _progress_option(scan)
    _policy_options(scan)
    scan.set_defaults(run=_run_scan)

    evaluate = subparsers.add_parser(
        "eval", help="evaluate stages on labelled prompts and images; writes an HTML report and a JSON file"
    )
    evaluate.add_argument(
        "data", nargs="*", metavar="DATA", help="labelled prompt CSVs, folders of them, or labelled image folders"
    )
    evaluate.add_argument("--ablate", action="store_true", help="also each stage alone, all but one, and none")
    evaluate.add_argument("--out", type=Path, default=Path("safeguard-eval"), help="folder for report.html/.json")
    evaluate.add_argument("--toy-world", action="store_true", help="add the toy world's generated-image figures")
    evaluate.add_argument("--toy-images", type=int, default=16, help="toy world images per prompt (default 16)")
    evaluate.add_argument("--toy-steps", type=int, default=20, help="toy world denoising steps (default 20)")
    evaluate.add_argument("--toy-steering", default="strong", help="steering strength when steering is on")
    evaluate.add_argument("--batch", type=int, default=512, help="prompts per check call (default 512)")
    evaluate.add_argument("--single", type=int, default=200, help="prompts timed one at a time (default 200)")
    _progress_option(evaluate)
    _policy_options(evaluate)
    evaluate.set_defaults(run=_run_eval)


def _progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (there is none off a terminal)")


def _progress(args: argparse.Namespace) -> bool | None:
    return False if getattr(args, "no_progress", False) else None


def _positive(value: int, name: str) -> int:
    if value < 1:
        raise InputError(f"{name} must be at least 1, got {value}")
    return value


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _print_verdict(label: str, verdict: Any) -> None:
    print(f"{verdict.action.value.upper():6} {label}")
    for finding in verdict.findings:
        print(
            f"       {finding.category:32} score {finding.score:.3f} >= {finding.threshold:.3f}"
            f"  {finding.stage}/{finding.source}  {finding.detail}"
        )


def _run_scan(args: argparse.Namespace) -> int:
    from safeguard.guard import Guard
    from safeguard.reports.data import find_image_files
    from safeguard.reports.progress import ProgressBar
    from safeguard.reports.scan import scan_images

    batch = _positive(args.batch, "--batch")
    files = find_image_files(args.paths)
    if not files:
        raise InputError(f"no files found in {', '.join(args.paths)}")
    guard = Guard.create(args.policy, args.preset, args.config)
    counts = {"allowed": 0, "blocked": 0, "unchecked": 0, "copied": 0, "redacted": 0, "withheld": 0}
    with ProgressBar(len(files), "scanning", enabled=_progress(args)) as bar:
        for result in scan_images(files, guard, redact_to=args.redact_to, batch_size=batch, progress=bar):
            if result.verdict is None:
                counts["unchecked"] += 1
                print(f"safeguard: scan: {result.error}", file=sys.stderr)
            else:
                counts["blocked" if result.verdict.blocked else "allowed"] += 1
                if result.copy is not None:
                    counts["redacted" if result.verdict.blocked else "copied"] += 1
                counts["withheld"] += result.withheld
            if args.json:
                print(json.dumps(result.to_dict(), ensure_ascii=False), flush=True)
            elif result.verdict is None:
                print(f"{'ERROR':6} {result.error}")
            else:
                size = f"{result.width}x{result.height}" + (f", {result.frames} frames" if result.frames > 1 else "")
                _print_verdict(f"{result.path}  ({result.format} {size})", result.verdict)
    if not args.json:
        print(
            f"{len(files)} files: {counts['allowed']} allowed, {counts['blocked']} blocked, "
            f"{counts['unchecked']} could not be checked; policy {guard.policy.id}@{guard.policy.version}, "
            f"preset {guard.settings.preset}"
        )
        if args.redact_to is not None:
            print(
                f"{args.redact_to}: {counts['copied']} copied as they are, {counts['redacted']} redacted "
                f"({guard.settings.output.redaction}), {counts['withheld']} withheld (not written)"
            )
    if counts["blocked"]:
        return EXIT_BLOCKED
    return EXIT_UNCHECKED if counts["unchecked"] else EXIT_ALLOWED


def run_check_file(args: argparse.Namespace) -> int:
    """``safeguard check --file FILE`` or ``safeguard check -``: the prompts of a text file, CSV or standard input
    (one per line), checked in batches.

    Blank lines are skipped with a warning naming them. The table lists the flagged prompts and the lines not
    checked, then a summary; ``--json`` prints one JSON Lines record per prompt, with its line (and CSV id).
    """
    import time

    from safeguard.cli import STDIN
    from safeguard.guard import Guard
    from safeguard.reports.data import prompt_lines, read_prompts
    from safeguard.reports.progress import ProgressBar
    from safeguard.reports.prompt_files import check_prompt_lines

    if args.file is not None and args.prompts:
        raise InputError("give prompts as arguments (or - for standard input) or --file FILE, not both")
    if args.file is None and args.prompts != [STDIN]:
        raise InputError(f"prompts come from --file FILE or from standard input ({STDIN}), not {args.prompts}")
    source = "standard input" if args.file is None else str(args.file)
    lines, blank = prompt_lines(_read_stdin()) if args.file is None else read_prompts(args.file)
    for number in blank:
        print(f"safeguard: check: {source}, line {number}: empty; skipped", file=sys.stderr)
    if not lines:
        raise InputError(f"{source}: no prompts in it")
    guard = Guard.create(args.policy, args.preset, args.config)
    counts = {"allow": 0, "steer": 0, "block": 0, "unchecked": 0}
    started = time.perf_counter()
    with ProgressBar(len(lines), "checking", enabled=_progress(args)) as bar:
        for result in check_prompt_lines(lines, guard, progress=bar):
            if result.verdict is None:
                counts["unchecked"] += 1
                print(f"safeguard: check: {source}, {result.error}", file=sys.stderr)
            else:
                counts[result.verdict.action.value] += 1
            if args.json:
                print(json.dumps(result.to_dict(), ensure_ascii=False))
            elif result.verdict is None:
                print(f"{'ERROR':6} {result.error}")
            elif result.verdict.flagged:
                where = f"line {result.line.line}" + (f" ({result.line.id})" if result.line.id else "")
                _print_verdict(f"{where}: {_clip(result.line.prompt)}", result.verdict)
    seconds = time.perf_counter() - started
    if not args.json:
        print(
            f"{len(lines)} prompts from {source}: {counts['allow']} allowed, {counts['steer']} flagged for "
            f"steering, {counts['block']} blocked, {counts['unchecked']} not checked "
            f"({len(lines) / seconds:.0f} prompts/s); policy {guard.policy.id}@{guard.policy.version}, "
            f"preset {guard.settings.preset}"
        )
    if counts["block"]:
        return EXIT_BLOCKED
    if counts["unchecked"]:
        return EXIT_UNCHECKED
    return EXIT_STEER if counts["steer"] else EXIT_ALLOWED


def _read_stdin() -> str:
    """Standard input as UTF-8 text (a byte-order mark dropped, as for files)."""
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"standard input: not UTF-8 text ({err.reason} at byte {err.start})") from err


def _run_eval(args: argparse.Namespace) -> int:
    from safeguard.reports.evaluate import run_evaluation, write_report
    from safeguard.reports.prompt_eval import prompt_report_text

    if not args.data and not args.toy_world:
        raise InputError("give DATA (labelled prompt CSVs or folders) or --toy-world")
    for name in ("toy_images", "toy_steps", "batch", "single"):
        _positive(getattr(args, name), f"--{name.replace('_', '-')}")
    result = run_evaluation(
        args.data,
        policy=args.policy,
        preset=args.preset,
        config=args.config,
        ablate=args.ablate,
        toy_world=args.toy_world,
        toy_images=args.toy_images,
        toy_steps=args.toy_steps,
        toy_steering=args.toy_steering,
        batch=args.batch,
        single=args.single,
        progress=_progress(args),
        command=shlex.join(["safeguard", *sys.argv[1:]]) if sys.argv[1:2] == ["eval"] else "safeguard eval",
    )
    if "prompts" in result:
        print(prompt_report_text(result["prompts"], ", ".join(args.data)))
        for config in result["prompts"]["configs"][1:]:
            print(
                f"  {config['name']}: detected {100 * config['pooled_detection']:.1f}%, benign flagged "
                f"{100 * config['pooled_false_positive']:.2f}%, {config['prompts_per_second']:.0f} prompts/s"
            )
    if "images" in result:
        for config in result["images"]["configs"]:
            print(
                f"images, {config['name']}: unsafe blocked {_percent(config['detection'])}, "
                f"benign blocked {_percent(config['false_positive'])}"
            )
    if "toy_world" in result:
        for config in result["toy_world"]["configs"]:
            print(
                f"toy world, {config['name']}: prohibited delivered {100 * config['prohibited_delivered']:.0f}%, "
                f"benign as asked {100 * config['benign_delivered_as_asked']:.0f}%"
            )
    html_path, json_path = write_report(result, args.out)
    print(f"wrote {html_path} and {json_path} in {result['seconds']:.0f} s")
    return EXIT_ALLOWED
