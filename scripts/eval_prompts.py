#!/usr/bin/env python
"""Evaluate a preset's prompt stage on labelled prompt CSVs (``id,prompt,label,categories,source``).

Prints, per file, label and source category, the share flagged (block or steer) and the share blocked; the
pooled and per-source detection rates on unsafe prompts; the benign false-positive rate pooled and per source;
and throughput measured in the same run (batched prompts per second, median single-prompt latency).

A prompt counts as detected when its verdict is flagged; the same rule counts false positives. Borderline rows
are reported but enter neither rate.

Usage:
    scripts/eval_prompts.py [FOLDER] [--preset balanced] [--policy ID|PATH] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import safeguard
from safeguard.guard import Guard

DEFAULT_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
MIN_UNSAFE_PER_SOURCE = 20
MIN_BENIGN_PER_SOURCE = 50


def read_rows(folder: Path) -> dict[str, list[dict[str, str]]]:
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise SystemExit(f"no CSV files in {folder}")
    rows = {}
    for path in files:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"id", "prompt", "label", "categories", "source"} - set(reader.fieldnames or ())
            if missing:
                raise SystemExit(f"{path}: missing columns {sorted(missing)}")
            rows[path.name] = [r for r in reader if r["prompt"].strip()]
    return rows


def share(numerator: int, denominator: int) -> str:
    return f"{100 * numerator / denominator:5.1f}%" if denominator else "    -"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--policy", default=safeguard.policy.DEFAULT_POLICY)
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    parser.add_argument("--single", type=int, default=200, help="prompts timed one at a time for the latency")
    args = parser.parse_args()

    guard = Guard.create(args.policy, args.preset)
    files = read_rows(args.folder)
    all_rows = [row for rows in files.values() for row in rows]
    prompts = [row["prompt"][: guard.settings.prompt.max_chars] for row in all_rows]

    guard.check_prompts(prompts[:32])  # warm-up: lazy model loads are not throughput
    started = time.perf_counter()
    verdicts = []
    for i in range(0, len(prompts), 512):
        verdicts.extend(guard.check_prompts(prompts[i : i + 512]))
    batched_seconds = time.perf_counter() - started
    latencies = []
    # Spread over the files: the first rows are all benign captions, which the static pass settles in under 1 ms.
    for prompt in prompts[:: max(1, len(prompts) // args.single)][: args.single]:
        t0 = time.perf_counter()
        guard.check_prompts([prompt])
        latencies.append(time.perf_counter() - t0)

    by_source = defaultdict(lambda: defaultdict(lambda: [0, 0]))  # label -> source -> [n, flagged]
    for row, verdict in zip(all_rows, verdicts, strict=True):
        counts = by_source[row["label"]][row["source"]]
        counts[0] += 1
        counts[1] += verdict.flagged

    offset = 0
    print(f"preset {args.preset}, policy {guard.policy.id}@{guard.policy.version}, data {args.folder}\n")
    for name, rows in files.items():
        table = defaultdict(lambda: [0, 0, 0])
        for row, verdict in zip(rows, verdicts[offset : offset + len(rows)], strict=True):
            cats = [c for c in row["categories"].split("|") if c] or ["(none)"]
            for key in [(row["label"], "(all)"), *((row["label"], c) for c in cats)]:
                table[key][0] += 1
                table[key][1] += verdict.flagged
                table[key][2] += verdict.blocked
        offset += len(rows)
        print(f"{name}")
        print(f"  {'label':11} {'category':20} {'n':>6} {'flagged':>8} {'blocked':>8}")
        for (label, category), (n, flagged, blocked) in sorted(table.items()):
            print(f"  {label:11} {category:20} {n:6d} {share(flagged, n):>8} {share(blocked, n):>8}")
        print()

    unsafe = by_source["unsafe"]
    benign = by_source["benign"]
    pooled_detection = sum(f for _, f in unsafe.values()) / max(1, sum(n for n, _ in unsafe.values()))
    eligible = {s: f / n for s, (n, f) in unsafe.items() if n >= MIN_UNSAFE_PER_SOURCE}
    mean_detection = statistics.mean(eligible.values()) if eligible else float("nan")
    pooled_fp = sum(f for _, f in benign.values()) / max(1, sum(n for n, _ in benign.values()))
    fp_by_source = {s: f / n for s, (n, f) in benign.items() if n >= MIN_BENIGN_PER_SOURCE}
    throughput = len(prompts) / batched_seconds
    median_ms = 1000 * statistics.median(latencies)

    print("detection on unsafe prompts (flagged = block or steer)")
    for source, (n, flagged) in sorted(unsafe.items()):
        print(f"  {source:24} {n:6d} {share(flagged, n)}")
    print(
        f"  pooled {100 * pooled_detection:.1f}%, mean over sources with >= {MIN_UNSAFE_PER_SOURCE}: "
        f"{100 * mean_detection:.1f}%"
    )
    print("false positives on benign prompts")
    for source, (n, flagged) in sorted(benign.items()):
        print(f"  {source:24} {n:6d} {share(flagged, n)}")
    print(
        f"  pooled {100 * pooled_fp:.2f}%, worst source with >= {MIN_BENIGN_PER_SOURCE}: "
        f"{100 * max(fp_by_source.values(), default=0):.2f}%"
    )
    print(
        f"throughput: {throughput:.0f} prompts/s batched ({len(prompts)} prompts), "
        f"single-prompt median {median_ms:.2f} ms over {len(latencies)}"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "preset": args.preset,
                    "pooled_detection": pooled_detection,
                    "mean_source_detection": mean_detection,
                    "pooled_false_positive": pooled_fp,
                    "false_positive_by_source": fp_by_source,
                    "detection_by_source": eligible,
                    "prompts_per_second": throughput,
                    "single_median_ms": median_ms,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
