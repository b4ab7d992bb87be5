#!/usr/bin/env python
"""Evaluate a preset's prompt stage on labelled prompt CSVs (``id,prompt,label,categories,source``).

Prints, per file, label and source category, the share flagged (block or steer) and the share blocked; the
pooled and per-source detection rates on unsafe prompts; the benign false-positive rate pooled and per source,
the worst source named; short benign prompts (one to three words) on their own line; both again per language
(identified by py3langid); and throughput measured in the same run (batched prompts per second, median
single-prompt latency).

A prompt counts as detected when its verdict is flagged; the same rule counts false positives. Borderline rows
are reported but enter neither rate. The figures come from :func:`safeguard.reports.prompt_eval.evaluate_prompts`,
which ``safeguard eval`` also uses (with ablations, sweeps and an HTML report).

Usage:
    scripts/eval_prompts.py [FOLDER|FILE.csv ...] [--preset balanced] [--policy ID|PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import safeguard
from safeguard.errors import InputError
from safeguard.guard import Guard
from safeguard.reports.data import read_labelled_csv
from safeguard.reports.prompt_eval import evaluate_prompts, prompt_report_text, summary

DEFAULT_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="*", type=Path, help=f"folders of CSVs or CSV files (default {DEFAULT_FOLDER})")
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--policy", default=safeguard.policy.DEFAULT_POLICY)
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    parser.add_argument("--single", type=int, default=200, help="prompts timed one at a time for the latency")
    args = parser.parse_args()

    data = args.data or [DEFAULT_FOLDER]
    files = [f for path in data for f in (sorted(path.glob("*.csv")) if path.is_dir() else [path])]
    if not files:
        raise SystemExit(f"no CSV files in {', '.join(map(str, data))}")
    try:
        rows = [row for path in files for row in read_labelled_csv(path)]
    except InputError as err:
        raise SystemExit(str(err)) from err
    guard = Guard.create(args.policy, args.preset)
    result = evaluate_prompts(rows, guard, single=args.single, languages=True)
    print(prompt_report_text(result, ", ".join(map(str, data))))
    if args.json:
        print(json.dumps(summary(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
