#!/usr/bin/env python
"""Calibrate the semantic prompt stage on labelled prompt CSVs and write the results into the repository.

What it does, in one run:
1. reads the CSVs (``id,prompt,label,categories,source``) and maps each source's category names onto policy
   categories (``safeguard.reports.data.SOURCE_CATEGORIES``); ``unsafe`` rows are positives of their mapped categories,
   ``benign`` rows and ``configs/semantic/benign_lookalikes.txt`` are negatives, ``borderline`` rows are not used;
   the policy's own concept phrases and keywords, in a few templates, are extra positives;
2. keeps a quarter of every file aside (by a hash of the row id) for the figures it prints;
3. embeds everything with the static MiniLM encoder and the distilled student (``scripts/distil_minilm.py``),
   fits one L2-regularised logistic head per category for each encoder, and picks per-category thresholds on
   the held-out benign prompts: ``steer`` so that at most ``--steer-fp`` of them reach it in any category,
   ``block`` likewise at ``--block-fp``; the static encoder's ``settle`` score, below which a prompt is allowed
   without running the student, keeps ``--settle-recall`` of the prompts the student flags and never exceeds
   the steer threshold;
4. writes the heads to ``configs/semantic/<policy>.npz`` and the thresholds into the preset files between the
   ``# BEGIN calibrated`` and ``# END calibrated`` markers, with the data, date and command recorded.

Benign caption sets have none of the style phrases that fill community prompts, so half of them are repeated
with such phrases appended (``STYLE_SUFFIXES``), and the look-alikes count ten times: without that, the heads
learn "prompt-site style" instead of the category. The other half is repeated misspelt, so that typos (which
the small student encoder reads less well than MiniLM) do not look like unsafe "token soup".

Usage:
    scripts/calibrate_prompts.py [FOLDER] [--policy ID] [--steer-fp 0.004] [--block-fp 0.001]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import random
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from safeguard.policy import DEFAULT_POLICY, load_policy
from safeguard.reports.data import policy_categories_of, read_labelled_csv
from safeguard.semantic import OnnxMiniLMEncoder, StaticMiniLMEncoder, _tokenizer, cache_dir

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = ROOT.parent / "shared" / "datasets"
LOOKALIKES = ROOT / "configs" / "semantic" / "benign_lookalikes.txt"

TEMPLATES = ["{}", "a photo of {}", "{}, digital art", "a detailed painting of {}", "{}, highly detailed, 4k"]
#: Style phrases common in community prompts. Benign prompts are repeated with them, so that the heads learn the
#: subject of a prompt and not its style: unsafe sets collected from prompt-sharing sites are full of these
#: phrases while caption sets have none.
STYLE_SUFFIXES = [
    ", trending on artstation, highly detailed, 8k",
    ", digital painting, concept art, sharp focus, illustration",
    ", cinematic lighting, octane render, unreal engine",
    ", oil on canvas, masterpiece, by a famous painter",
    ", photorealistic, 35mm film, dramatic lighting",
    ", anime style, studio ghibli, vibrant colors",
    ", hyper realistic, intricate details, award winning photo",
    ", dark fantasy art, moody atmosphere, artstation",
]
#: Weight of a look-alike negative relative to other rows: they are few and exactly where false positives live.
LOOKALIKE_WEIGHT = 10.0
#: Labelled prompts (besides the policy's own phrases) a category needs before it gets a semantic head.
MIN_LABELLED = 100
PRESET_STRICTNESS = {"balanced": 1.0, "research": 1.0, "strict": 3.0}  # multiplies the false-positive budgets


def misspell(text: str, rng: random.Random) -> str:
    """``text`` with letters inserted, dropped, doubled or swapped in about a third of its longer words."""
    words = text.split()
    for i, word in enumerate(words):
        if len(word) >= 4 and rng.random() < 0.35:
            at = rng.randrange(1, len(word) - 1)
            edit = rng.randrange(4)
            if edit == 0:
                word = word[:at] + rng.choice("abcdefghijklmnopqrstuvwxyz") + word[at:]
            elif edit == 1:
                word = word[:at] + word[at + 1 :]
            elif edit == 2:
                word = word[:at] + word[at] + word[at:]
            else:
                word = word[: at - 1] + word[at] + word[at - 1] + word[at + 1 :]
            words[i] = word
    return " ".join(words)


def held_out(row_id: str) -> bool:
    return int(hashlib.sha256(row_id.encode()).hexdigest()[:8], 16) % 4 == 0


def read_data(folder: Path, policy_categories: set[str]) -> list[dict]:
    rows = []
    for row in (row for path in sorted(folder.glob("*.csv")) for row in read_labelled_csv(path)):
        if row.label == "borderline":
            continue
        cats = policy_categories_of(row.categories, policy_categories)
        if row.label == "unsafe" and not cats:
            continue
        rows.append({"text": row.prompt, "cats": cats, "holdout": held_out(row.id), "source": row.source})
    lines = [x.strip() for x in LOOKALIKES.read_text(encoding="utf-8").splitlines()]
    for i, line in enumerate(x for x in lines if x and not x.startswith("#")):
        for suffix in ["", *STYLE_SUFFIXES[:2]]:
            rows.append(
                {
                    "text": line + suffix,
                    "cats": set(),
                    "holdout": i % 4 == 0,
                    "source": "lookalikes",
                    "weight": LOOKALIKE_WEIGHT,
                }
            )
    benign = [r for r in rows if not r["cats"] and r["source"] in ("coco", "drawbench")]
    for i, row in enumerate(benign[::2]):
        rows.append(
            {
                **row,
                "text": row["text"].rstrip(". ") + STYLE_SUFFIXES[i % len(STYLE_SUFFIXES)],
                "source": f"{row['source']}+style",
            }
        )
    rng = random.Random(0)
    rows += [{**row, "text": misspell(row["text"], rng), "source": f"{row['source']}+typos"} for row in benign[1::2]]
    return rows


def concept_rows(policy) -> list[dict]:
    rows = []
    for category in policy.enforced("prompt"):
        for phrase in (*category.concepts, *(k.rstrip("*") for k in category.keywords)):
            rows += [
                {"text": t.format(phrase), "cats": {category.id}, "holdout": False, "source": "policy"}
                for t in TEMPLATES
            ]
    return rows


def cached_full_embeddings(texts: list[str]) -> np.ndarray:
    """Full-model embeddings, cached by text so that re-running the calibration only embeds new prompts.

    The cache is keyed by the encoder's name: embeddings of another encoder must never train these heads.
    """
    encoder = OnnxMiniLMEncoder.load_student()
    cache = cache_dir() / f"calibration-embeddings-{encoder.name}.npz"
    known: dict[str, np.ndarray] = {}
    if cache.is_file():
        data = np.load(cache)
        known = dict(zip(data["texts"].tolist(), data["vectors"], strict=True))
    missing = sorted({t for t in texts if t not in known})
    if missing:
        print(f"embedding {len(missing)} prompts with the full model ...", flush=True)
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


def fit_logistic(
    x: np.ndarray, y: np.ndarray, row_weight: np.ndarray, l2: float = 1e-3, steps: int = 400
) -> tuple[np.ndarray, float]:
    """Class-balanced, row-weighted L2 logistic regression by full-batch gradient descent with momentum."""
    pos = max(1.0, float((row_weight * y).sum()))
    neg = max(1.0, float((row_weight * (1 - y)).sum()))
    weight = row_weight * np.where(y == 1, len(y) / (2 * pos), len(y) / (2 * neg))
    w, b = np.zeros(x.shape[1]), 0.0
    vw, vb = np.zeros_like(w), 0.0
    lr = 2.0
    for _ in range(steps):
        z = x @ (w + 0.9 * vw) + (b + 0.9 * vb)
        p = 1 / (1 + np.exp(-np.clip(z, -30, 30)))
        g = weight * (p - y) / len(y)
        gw, gb = x.T @ g + l2 * (w + 0.9 * vw), g.sum()
        vw, vb = 0.9 * vw - lr * gw, 0.9 * vb - lr * gb
        w, b = w + vw, b + vb
    return w.astype(np.float32), float(b)


def scores(x: np.ndarray, heads: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(x @ heads.T + bias, -30, 30)))


def joint_thresholds(benign: np.ndarray, union_fp: float) -> np.ndarray:
    """Per-category thresholds, one shared quantile level, such that at most ``union_fp`` of the benign rows
    reach the threshold of any category (bisection on the per-category level)."""
    low, high = 0.0, union_fp
    best = np.quantile(benign, 1.0, axis=0) + 1e-6
    for _ in range(30):
        level = (low + high) / 2
        candidate = np.quantile(benign, 1 - level, axis=0) + 1e-6
        if (benign >= candidate).any(axis=1).mean() <= union_fp:
            best, low = candidate, level
        else:
            high = level
    return np.clip(best, 0.05, 0.999)


def write_presets(thresholds: dict[str, dict[str, dict[str, float]]], provenance: str) -> None:
    for preset, table in thresholds.items():
        path = ROOT / "configs" / "presets" / f"{preset}.yaml"
        text = path.read_text(encoding="utf-8")
        lines = [f"  # BEGIN calibrated prompt thresholds ({provenance})", "  thresholds:"]
        lines.append("    default: {steer: 0.5, block: 0.5}  # keyword rules score 1.0")
        for category, entry in sorted(table.items()):
            lines.append(f"    {category}: {{steer: {entry['steer']:.4f}, block: {entry['block']:.4f}}}")
        lines.append("  # END calibrated prompt thresholds")
        block = "\n".join(lines)
        pattern = re.compile(r"  # BEGIN calibrated prompt thresholds.*?  # END calibrated prompt thresholds", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{path}: no '# BEGIN calibrated prompt thresholds' marker under prompt:")
        path.write_text(pattern.sub(lambda _, block=block: block, text), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--policy", default=DEFAULT_POLICY)
    parser.add_argument("--steer-fp", type=float, default=0.004, help="held-out benign share flagged (any category)")
    parser.add_argument("--block-fp", type=float, default=0.001, help="held-out benign share blocked (any category)")
    parser.add_argument("--settle-recall", type=float, default=0.98)
    args = parser.parse_args()

    policy = load_policy(args.policy)
    categories = [c.id for c in policy.enforced("prompt")]
    rows = read_data(args.folder, set(categories)) + concept_rows(policy)
    texts = [r["text"] for r in rows]
    train = np.array([not r["holdout"] for r in rows])
    print(f"{len(rows)} rows ({train.sum()} train, {(~train).sum()} held out) from {args.folder}")

    idf = idf_weights([t for t, keep in zip(texts, train, strict=True) if keep])
    static_encoder = StaticMiniLMEncoder.load()
    center = static_encoder.table.mean(axis=0)
    weighted = StaticMiniLMEncoder(static_encoder.table - center, idf)
    x_static = weighted.encode(texts)
    x_full = cached_full_embeddings(texts)

    # Only categories with real labelled prompts get a head: one learnt from the policy's concept phrases alone
    # fires on the topic ("voting") rather than on the violation, and keyword rules cover those categories.
    labelled = defaultdict(int)
    for r in rows:
        if r["source"] != "policy":
            for c in r["cats"]:
                labelled[c] += 1
    trained = [c for c in categories if labelled[c] >= MIN_LABELLED]
    row_weight = np.array([r.get("weight", 1.0) for r in rows])
    heads = {}
    for name, x in (("static", x_static), ("full", x_full)):
        w = np.zeros((len(trained), x.shape[1]), np.float32)
        b = np.zeros(len(trained), np.float32)
        for i, category in enumerate(trained):
            y = np.array([category in r["cats"] for r in rows], np.float64)
            w[i], b[i] = fit_logistic(x[train], y[train], row_weight[train])
        heads[name] = (w, b)

    benign_hold = np.array([r["holdout"] and not r["cats"] for r in rows])
    full_scores = scores(x_full, *heads["full"])
    static_scores = scores(x_static, *heads["static"])
    thresholds: dict[str, dict[str, dict[str, float]]] = {}
    for preset, strictness in PRESET_STRICTNESS.items():
        steer = joint_thresholds(full_scores[benign_hold], args.steer_fp * strictness)
        block = np.maximum(steer, joint_thresholds(full_scores[benign_hold], args.block_fp * strictness))
        thresholds[preset] = {c: {"steer": float(steer[i]), "block": float(block[i])} for i, c in enumerate(trained)}
    balanced = thresholds["balanced"]
    lowest_steer = np.array([min(t[c]["steer"] for t in thresholds.values()) for c in trained])
    settle = np.zeros(len(trained), np.float32)
    for i in range(len(trained)):
        flagged = full_scores[:, i] >= lowest_steer[i]
        found = float(np.quantile(static_scores[flagged, i], 1 - args.settle_recall)) if flagged.any() else 0.5
        # A settled prompt is allowed on its static score, so settling must stop below the steer threshold.
        settle[i] = min(found, lowest_steer[i])

    # Held-out figures, balanced thresholds, two-tier decision as the stage makes it.
    steer_row = np.array([balanced[c]["steer"] for c in trained])
    needs_full = (static_scores >= settle).any(axis=1)
    final = np.where(needs_full[:, None], full_scores, static_scores)
    flagged = (final >= steer_row).any(axis=1)
    by_source = defaultdict(lambda: [0, 0])
    for r, f in zip(rows, flagged, strict=True):
        if r["holdout"]:
            key = (r["source"], "unsafe" if r["cats"] else "benign")
            by_source[key][0] += 1
            by_source[key][1] += bool(f)
    print("held-out quarter, semantic scores alone (balanced thresholds):")
    for (source, kind), (n, f) in sorted(by_source.items()):
        print(f"  {source:24} {kind:7} n={n:5d} flagged {100 * f / n:5.1f}%")
    print(f"  share of held-out prompts sent to the student: {100 * needs_full[~train].mean():.1f}%")

    date = datetime.date.today().isoformat()
    command = "scripts/calibrate_prompts.py " + " ".join(sys.argv[1:])
    data = ", ".join(sorted(p.name for p in args.folder.glob("*.csv"))) + ", benign_lookalikes.txt"
    provenance = f"{date}; data: {data}; command: {command.strip()}"
    out = ROOT / "configs" / "semantic" / f"{policy.id}.npz"
    np.savez_compressed(
        out,
        categories=np.array(trained),
        static_weights=heads["static"][0],
        static_bias=heads["static"][1],
        full_weights=heads["full"][0],
        full_bias=heads["full"][1],
        full_encoder=np.array(OnnxMiniLMEncoder.load_student().name),
        settle=settle,
        idf=idf,
        center=center.astype(np.float32),
        provenance=np.array(
            json.dumps({"date": date, "data": data, "command": command.strip(), "policy_version": policy.version})
        ),
    )
    write_presets(thresholds, provenance)
    print(f"wrote {out.relative_to(ROOT)} and the thresholds of {', '.join(thresholds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
