#!/usr/bin/env python
"""Measure the prompt stage's speed on labelled prompt CSVs: batched throughput and single-prompt latency.

In one run, after a warm-up (model loads are not throughput): prompts per second over ``--count`` prompts checked
in batches of ``--batch``, the median and 90th percentile latency of ``--single`` prompts checked one at a time
(spread evenly over the data, so every source is represented), and how many prompts the student (second tier) scored.

Usage:
    scripts/bench_prompts.py [FOLDER] [--preset balanced] [--count N] [--batch 512] [--single 300]

Example output:
    batched: 10635 prompts in 15.0 s = 711 prompts/s (5417 scored by the student)
    single:  300 prompts one at a time: median 1.9 ms, p90 6.3 ms (151 scored by the student)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from eval_prompts import DEFAULT_FOLDER

from safeguard.guard import Guard
from safeguard.reports.data import read_labelled_csv
from safeguard.stages.semantic import SemanticPromptStage


def full_model_count(guard: Guard) -> int:
    """Prompts the semantic stage's student has scored so far (0 without a semantic stage)."""
    return sum(s.full_scored for s in guard.prompt_stages if isinstance(s, SemanticPromptStage))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--count", type=int, default=0, help="prompts for the batched figure (0: all)")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--single", type=int, default=300, help="prompts timed one at a time")
    args = parser.parse_args()

    guard = Guard.create(preset=args.preset)
    rows = [row for path in sorted(args.folder.glob("*.csv")) for row in read_labelled_csv(path)]
    prompts = [row.prompt[: guard.settings.prompt.max_chars] for row in rows]
    if args.count:
        prompts = prompts[: args.count]
    # Warm-up on prompts of every source, so that both tiers have run (and built their caches) before timing.
    guard.check_prompts(prompts[:: max(1, len(prompts) // 64)])

    before = full_model_count(guard)
    started = time.perf_counter()
    for start in range(0, len(prompts), args.batch):
        guard.check_prompts(prompts[start : start + args.batch])
    seconds = time.perf_counter() - started
    batched_full = full_model_count(guard) - before

    single = prompts[:: max(1, len(prompts) // args.single)][: args.single]
    before = full_model_count(guard)
    latencies = []
    for prompt in single:
        t0 = time.perf_counter()
        guard.check_prompts([prompt])
        latencies.append(1000 * (time.perf_counter() - t0))
    single_full = full_model_count(guard) - before
    deciles = statistics.quantiles(latencies, n=10)

    print(f"preset {args.preset}, data {args.folder}, {os.cpu_count()} CPUs")
    print(
        f"batched: {len(prompts)} prompts in {seconds:.1f} s = {len(prompts) / seconds:.0f} prompts/s "
        f"({batched_full} scored by the student)"
    )
    print(
        f"single:  {len(single)} prompts one at a time: median {statistics.median(latencies):.1f} ms, "
        f"p90 {deciles[8]:.1f} ms ({single_full} scored by the student)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
