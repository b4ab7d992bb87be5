"""Calibrate the CLIP output stage's per-category thresholds at a target false-positive rate.

Bring your own labelled images: a folder with one subfolder per policy category id (``violence/``,
``sexual/``, ...) holding images of that category, and a ``benign/`` subfolder of images that must pass.
For each category the threshold is the lowest score that keeps the false-positive rate on the negatives
(every image not in that category's folder, ``benign/`` included) at or below ``--target-fpr``; the recall on
the category's own images is reported next to it. The thresholds are written into a copy of a preset, with the
data they came from recorded in the preset's header comment and in a JSON file beside it.

Usage:
    python scripts/calibrate_image_thresholds.py --weights /models/clip-vit-large-patch14 \\
        --data /data/aup-images --target-fpr 0.01 --preset balanced --out my-preset.yaml

Then ``safeguard.protect(pipe, preset="my-preset.yaml", image_model="/models/clip-vit-large-patch14")``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import yaml
from PIL import Image

from safeguard._files import bundled
from safeguard.config import resolve_settings
from safeguard.images import to_unit_tensors
from safeguard.policy import load_policy
from safeguard.stages.clip import ClipImageStage

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
BENIGN = "benign"
#: Images are brought to this square size before batching; the checker resizes to the model's size anyway.
WORK_SIZE = 256


def load_folder(folder: Path) -> list[tuple[str, torch.Tensor]]:
    """Every image under ``folder`` as a ``(3, WORK_SIZE, WORK_SIZE)`` tensor in ``[0, 1]``, with its name."""
    items = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((WORK_SIZE, WORK_SIZE), Image.Resampling.BICUBIC)
        items.append((str(path.relative_to(folder)), to_unit_tensors(rgb)[0]))
    return items


def threshold_at_fpr(negatives: list[float], target_fpr: float) -> float:
    """The lowest threshold (rule: score >= threshold blocks) whose false-positive rate is at most ``target_fpr``.

    Example:
        >>> threshold_at_fpr([0.1, 0.2, 0.3, 0.9], 0.25)
        0.3000001
    """
    if not negatives:
        raise ValueError("no negative images: cannot measure a false-positive rate")
    ranked = sorted(negatives, reverse=True)
    allowed = math.floor(target_fpr * len(ranked))  # this many negatives may reach the threshold
    if allowed >= len(ranked):
        return 0.0
    # Just above the highest negative that must not pass; never above 1 (scores lie in [0, 1]).
    return min(1.0, round(ranked[allowed] + 1e-7, 7))


def calibrate(
    weights: str, data: Path, target_fpr: float, preset: str, policy: str, batch_size: int = 16
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score every image and compute thresholds; returns (preset mapping with thresholds, calibration record)."""
    policy_obj = load_policy(policy)
    settings = resolve_settings(preset, image_model=weights, policy_categories=tuple(c.id for c in policy_obj))
    stage = ClipImageStage(policy_obj, settings.output)
    folders = {p.name: p for p in sorted(data.iterdir()) if p.is_dir()}
    unknown = sorted(set(folders) - set(stage.categories) - {BENIGN})
    if unknown:
        raise SystemExit(f"folders {unknown} are neither image categories of {policy_obj.id} nor {BENIGN!r}")

    scores: dict[str, list[dict[str, float]]] = {}
    for label, folder in folders.items():
        images = load_folder(folder)
        rows: list[dict[str, float]] = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([t for _, t in images[start : start + batch_size]])
            for row in stage.scores(batch).tolist():
                rows.append(dict(zip(stage.concepts.names, row, strict=True)))
        scores[label] = rows
        print(f"{label}: {len(rows)} images", flush=True)

    thresholds: dict[str, dict[str, float]] = {}
    record: dict[str, Any] = {
        "weights": str(weights),
        "policy": f"{policy_obj.id}@{policy_obj.version}",
        "base_preset": preset,
        "target_fpr": target_fpr,
        "templates": list(settings.output.clip.templates),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "counts": {label: len(rows) for label, rows in scores.items()},
        "categories": {},
    }
    for category in stage.categories:
        if category not in scores:
            continue  # no positives: keep the preset's threshold for this category
        negatives = [row[category] for label, rows in scores.items() if label != category for row in rows]
        positives = [row[category] for row in scores[category]]
        threshold = threshold_at_fpr(negatives, target_fpr)
        fpr = sum(s >= threshold for s in negatives) / len(negatives)
        tpr = sum(s >= threshold for s in positives) / max(1, len(positives))
        thresholds[category] = {"block": threshold}
        record["categories"][category] = {
            "threshold": threshold,
            "fpr": fpr,
            "tpr": tpr,
            "positives": len(positives),
            "negatives": len(negatives),
        }
        print(f"{category:<32} threshold {threshold:.4f}  fpr {fpr:.4f}  tpr {tpr:.4f}", flush=True)

    base_path = Path(preset) if preset.endswith((".yaml", ".yml")) else bundled("presets", preset)
    assert base_path is not None
    out = yaml.safe_load(base_path.read_text()) or {}
    output = out.setdefault("output", {})
    merged = dict(output.get("thresholds") or {})
    merged.update(thresholds)
    output["thresholds"] = merged
    backends = list(output.get("backends") or [])
    if "clip" not in backends:
        output["backends"] = [*backends, "clip"]
    return out, record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="CLIP folder, or a hub id in the local cache")
    parser.add_argument("--data", required=True, type=Path, help="folder of <category>/ and benign/ subfolders")
    parser.add_argument("--target-fpr", type=float, default=0.01, help="false-positive rate per category")
    parser.add_argument("--preset", default="balanced", help="preset to start from (name or file)")
    parser.add_argument("--policy", default="stability-aup-2025-07-31")
    parser.add_argument("--out", required=True, type=Path, help="the preset file to write")
    args = parser.parse_args(argv)
    if not 0.0 <= args.target_fpr < 1.0:
        parser.error("--target-fpr must lie in [0, 1)")

    preset, record = calibrate(args.weights, args.data, args.target_fpr, args.preset, args.policy)
    header = "\n".join(
        ["# Calibrated by scripts/calibrate_image_thresholds.py; the data it saw:"]
        + [f"#   {line}" for line in json.dumps(record, indent=1).splitlines()]
    )
    args.out.write_text(header + "\n" + yaml.safe_dump(preset, sort_keys=False))
    args.out.with_suffix(".calibration.json").write_text(json.dumps(record, indent=2))
    resolve_settings(args.out, image_model=args.weights)  # the written preset must load
    print(f"wrote {args.out} and {args.out.with_suffix('.calibration.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
