#!/usr/bin/env python
"""Calibrate the semantic prompt stage on labelled prompt CSVs and write the results into the repository.

A thin command line over :mod:`safeguard.prompt_calibration` (which says what the calibration does): it embeds
the rows (the student's embeddings are cached by text under the cache folder), calibrates, prints the
out-of-fold figures per source, and writes the heads with their thresholds (one table per strictness) to the
file the policy names under ``semantic_heads`` (or ``--out``), with the data, date and command recorded.

Usage:
    scripts/calibrate_prompts.py [FOLDER] [--policy ID] [--steer-fp 0.004] [--block-fp 0.001] [--source-steer-fp 0.03]
                                  [--source-block-fp 0.01] [--out FILE] [--dry-run]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from safeguard import prompt_calibration as pc
from safeguard.policy import DEFAULT_POLICY, load_policy
from safeguard.semantic import OnnxMiniLMEncoder, StaticMiniLMEncoder, _tokenizer, cache_dir

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = ROOT.parent / "shared" / "datasets"


def cached_full_embeddings(texts: list[str]) -> np.ndarray:
    """Student embeddings, cached by text and keyed by the encoder's name (another encoder's never train these
    heads), so that re-running only embeds new prompts."""
    encoder = OnnxMiniLMEncoder.load_student()
    cache = cache_dir() / f"calibration-embeddings-{encoder.name}.npz"
    known: dict[str, np.ndarray] = {}
    if cache.is_file():
        data = np.load(cache)
        known = dict(zip(data["texts"].tolist(), data["vectors"], strict=True))
    missing = sorted({t for t in texts if t not in known})
    if missing:
        print(f"embedding {len(missing)} prompts with the student ...", flush=True)
        known.update(zip(missing, encoder.encode(missing), strict=True))
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, texts=np.array(list(known)), vectors=np.stack(list(known.values())))
    return np.stack([known[t] for t in texts])


def idf_weights(texts: list[str]) -> np.ndarray:
    tokenizer = _tokenizer()
    df = np.zeros(len(tokenizer), np.float64)
    for ids in tokenizer(texts, add_special_tokens=False, truncation=True, max_length=256)["input_ids"]:
        df[list(set(ids))] += 1
    return (np.log((len(texts) + 1) / (df + 1)) + 1).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--policy", default=DEFAULT_POLICY)
    parser.add_argument("--steer-fp", type=float, default=0.004, help="share of all benign rows flagged")
    parser.add_argument("--block-fp", type=float, default=0.001, help="share of all benign rows blocked")
    parser.add_argument("--source-steer-fp", type=float, default=0.03, help="share of each benign source flagged")
    parser.add_argument("--source-block-fp", type=float, default=0.01, help="share of each benign source blocked")
    parser.add_argument("--settle-recall", type=float, default=0.98)
    parser.add_argument("--out", type=Path, help="heads file (default: the one the policy names)")
    parser.add_argument("--dry-run", action="store_true", help="print the figures, write nothing")
    args = parser.parse_args()

    policy = load_policy(args.policy)
    rows = pc.read_calibration_rows(args.folder, policy)
    texts = [r.text for r in rows]
    print(f"{len(rows)} rows from {args.folder} and configs/semantic/")
    idf = idf_weights(texts)
    static = StaticMiniLMEncoder.load()
    center = static.table.mean(axis=0)
    x_static = StaticMiniLMEncoder(static.table - center, idf).encode(texts)
    x_full = cached_full_embeddings(texts)
    calibration = pc.calibrate(
        rows,
        [c.id for c in policy.enforced("prompt")],
        x_static,
        x_full,
        steer_fp=args.steer_fp,
        block_fp=args.block_fp,
        source_steer_fp=args.source_steer_fp,
        source_block_fp=args.source_block_fp,
        settle_recall=args.settle_recall,
    )
    print(pc.format_figures(calibration))
    for name, table in calibration.thresholds.items():
        print(name, {c: (round(t["steer"], 4), round(t["block"], 4)) for c, t in table.items()})
    if args.dry_run:
        return 0

    date = datetime.date.today().isoformat()
    command = ("scripts/calibrate_prompts.py " + " ".join(sys.argv[1:])).strip()
    data = ", ".join([*sorted(p.name for p in args.folder.glob("*.csv")), *pc.WRITTEN_FILES, pc.LOOKALIKES_TXT])
    out = args.out or policy.semantic_heads or ROOT / "configs" / "semantic" / "minilm-student-heads.npz"
    provenance = {"date": date, "data": data, "command": command, "policy_version": policy.version}
    pc.write_heads(
        calibration,
        out,
        encoder_name=OnnxMiniLMEncoder.load_student().name,
        idf=idf,
        center=center,
        provenance=provenance,
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
