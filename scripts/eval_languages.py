#!/usr/bin/env python
"""Per-language detection and false-positive rates of a preset's prompt stage on the multilingual set.

Reads ``tests/data/multilingual_prompts.csv`` (or the CSV given), at least 30 unsafe (explicit sexual content
between adults, graphic violence) and 30 benign prompts in each of 13 languages, and prints per language:
unsafe detected, per category, benign flagged and blocked, and the worst language. The figures come from
:func:`safeguard.reports.language_eval.language_table`.

Usage:
    scripts/eval_languages.py [CSV] [--preset balanced] [--details]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import safeguard
from safeguard.errors import InputError
from safeguard.guard import Guard
from safeguard.reports.data import read_labelled_csv
from safeguard.reports.language_eval import language_table, language_table_text

DEFAULT_CSV = Path(__file__).resolve().parents[1] / "tests" / "data" / "multilingual_prompts.csv"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", nargs="?", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--policy", default=safeguard.policy.DEFAULT_POLICY)
    parser.add_argument("--details", action="store_true", help="list the missed and the flagged benign prompts")
    args = parser.parse_args()
    try:
        rows = read_labelled_csv(args.csv)
    except InputError as err:
        raise SystemExit(str(err)) from err
    table = language_table(rows, Guard.create(args.policy, args.preset))
    print(language_table_text(table, args.preset, details=args.details))
    return 0


if __name__ == "__main__":
    sys.exit(main())
