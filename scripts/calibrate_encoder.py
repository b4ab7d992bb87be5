#!/usr/bin/env python
"""Calibrate prompt scores from a pipeline's own text encoder for a policy, and write the calibration file.

The prompt stage scores prompts with the protected pipeline's text encoder only when the policy lists a
calibration for that encoder (see ``safeguard/stages/encoder.py``). This script makes one: it loads the
pipeline from a local folder (offline), scores labelled prompts, picks per-category thresholds from the benign
prompts' scores (``--block-fp``, ``--steer-fp``), prints detection and false-positive rates, and writes the
YAML with the data, date and command recorded. List the file under ``encoder_calibrations`` in the policy.

Data: CSVs in the ``../shared/datasets`` format (``id,prompt,label,categories,source``; ``label`` is ``safe`` or
``unsafe``, ``categories`` a ``;``-separated list of policy category ids), or ``--toy N`` for N labelled toy
world captions.

Usage:
    scripts/calibrate_encoder.py --pipeline PIPELINE_DIR --policy POLICY.yaml --data a.csv b.csv --out cal.yaml
    scripts/calibrate_encoder.py --toy 4000      # the toy world's calibration, next to its policy
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from safeguard.policy import load_policy
from safeguard.reports.data import policy_categories_of, read_labelled_csv
from safeguard.stages.encoder import calibrate_encoder
from safeguard.toy import TOY_WORLD_DIR, labelled_prompts, toy_world


def read_csvs(paths: list[Path], known: set[str]) -> tuple[list[str], list[list[str]]]:
    """Prompts and their category labels: empty for benign prompts; unsafe ones get the policy categories their
    source categories map to (:func:`safeguard.reports.data.policy_categories_of`). Unsafe rows whose categories
    map to none, and borderline rows, are left out: they are neither positives nor negatives."""
    prompts, labels = [], []
    for row in (row for path in paths for row in read_labelled_csv(path)):
        categories = sorted(policy_categories_of(row.categories, known))
        if row.label == "benign" or (row.label == "unsafe" and categories):
            prompts.append(row.prompt)
            labels.append(categories if row.label == "unsafe" else [])
    return prompts, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", type=Path, help="a diffusers pipeline folder (from_pretrained, offline)")
    parser.add_argument("--policy", type=Path, help="the policy YAML the calibration is for")
    parser.add_argument("--data", type=Path, nargs="*", default=[], help="labelled CSVs")
    parser.add_argument("--toy", type=int, metavar="N", help="calibrate the toy world on N labelled captions")
    parser.add_argument("--toy-path", type=Path, default=TOY_WORLD_DIR, help="toy world folder (with --toy)")
    parser.add_argument("--out", type=Path, help="where to write (with --toy: next to the toy policy)")
    parser.add_argument("--block-fp", type=float, default=0.005, help="benign share a block threshold may flag")
    parser.add_argument("--steer-fp", type=float, default=0.02, help="benign share a steer threshold may flag")
    args = parser.parse_args(argv)

    if args.toy:
        world = toy_world(args.toy_path)
        pipeline, policy = world.pipeline, world.policy
        prompts, labels = labelled_prompts(args.toy, seed=0)
        data = f"{args.toy} toy captions (safeguard.toy.labelled_prompts, seed 0)"
        out = args.out or args.toy_path / "encoder_calibration.yaml"
    else:
        if not (args.pipeline and args.policy and args.data and args.out):
            parser.error("give --pipeline, --policy, --data and --out, or --toy N")
        from diffusers import DiffusionPipeline

        pipeline = DiffusionPipeline.from_pretrained(args.pipeline, local_files_only=True)
        policy = load_policy(args.policy)
        prompts, labels = read_csvs(args.data, {c.id for c in policy.categories})
        data = ", ".join(p.name for p in args.data)
        out = args.out

    calibration = calibrate_encoder(
        pipeline,
        policy,
        prompts,
        labels,
        block_false_positives=args.block_fp,
        steer_false_positives=args.steer_fp,
        provenance={"data": data, "command": shlex.join(["scripts/calibrate_encoder.py", *(argv or sys.argv[1:])])},
    )
    print(f"{len(prompts)} prompts, {sum(not label for label in labels)} benign; encoder family {calibration.family}")
    print(f"{'category':<28} {'steer':>7} {'block':>7} {'unsafe':>7} {'flagged':>8} {'blocked':>8} {'benign fp':>9}")
    for category, f in calibration.provenance["figures"].items():
        if category not in calibration.thresholds:
            print(f"{category:<28} left out: {f['left_out']}")
            continue
        steer, block = calibration.thresholds[category]
        print(
            f"{category:<28} {steer:>7.4f} {block:>7.4f} {f['unsafe_prompts']:>7} {f['flagged']:>8.1%} "
            f"{f['blocked']:>8.1%} {f['benign_flagged']:>9.2%}"
        )
    print(f"wrote {calibration.save(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
