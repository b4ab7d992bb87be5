"""The semantic stage's calibration: folds, per-source thresholds, the data it reads, the policy's own lines."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from safeguard.policy import load_policy
from safeguard.prompt_calibration import (
    FOLDS,
    CalibrationRow,
    calibrate,
    fold_of,
    joint_thresholds,
    per_source_thresholds,
    read_calibration_rows,
)


def test_folds_are_fixed_by_the_row_id():
    assert fold_of("coco:1") == fold_of("coco:1")
    assert {fold_of(f"x:{i}") for i in range(200)} == set(range(FOLDS))


def test_joint_thresholds_keep_the_union_within_budget():
    rng = np.random.default_rng(0)
    benign = rng.random((2000, 3))
    t = joint_thresholds(benign, 0.01)
    assert (benign >= t).any(axis=1).mean() <= 0.01
    assert (benign >= t - 0.02).any(axis=1).mean() > 0.01  # not needlessly high


def test_per_source_thresholds_hold_every_source_not_the_pool():
    rng = np.random.default_rng(1)
    easy = rng.random((5000, 1)) * 0.5  # a large source far from the category
    hard = 0.4 + rng.random((100, 1)) * 0.6  # a small source close to it
    benign = np.concatenate([easy, hard])
    sources = ["easy"] * 5000 + ["hard"] * 100
    pooled = joint_thresholds(benign, 0.01)
    per_source = per_source_thresholds(benign, sources, 0.01, 0.01)
    assert (hard >= pooled).mean() > 0.05  # the pooled budget is spent on the small source
    assert (hard >= per_source).mean() <= 0.01
    assert (easy >= per_source).mean() <= 0.01


def test_a_source_too_small_sets_no_threshold_of_its_own():
    benign = np.concatenate([np.linspace(0, 0.5, 1000)[:, None], np.ones((10, 1))])
    t = per_source_thresholds(benign, ["big"] * 1000 + ["tiny"] * 10, 0.01, 0.01)
    assert t[0] < 1.0


def test_one_outlier_of_a_small_source_does_not_set_the_threshold():
    rng = np.random.default_rng(3)
    benign = np.concatenate([rng.random((2000, 2)) * 0.5, [[0.99, 0.0]], rng.random((99, 2)) * 0.5])
    sources = ["big"] * 2000 + ["small"] * 100
    t = per_source_thresholds(benign, sources, 0.01, 0.02)
    assert t[0] < 0.6  # the outlier (1 of 100 rows, within the 2% cap) is allowed to be a false positive


def _write(path: Path, rows: list[tuple[str, str, str, str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "prompt", "label", "categories", "source"])
        writer.writerows(rows)


def test_rows_map_categories_skip_borderline_and_keep_folds_for_copies(tmp_path):
    _write(
        tmp_path / "a.csv",
        [
            ("a:1", "a red bicycle", "benign", "", "bikes"),
            ("a:2", "a man stabbed in an alley", "unsafe", "violent", "src"),
            ("a:3", "a ghost weapon workshop", "unsafe", "weapons", "src"),
            ("a:4", "a dark alley", "borderline", "violent", "src"),
            ("a:5", "an unsafe row naming nothing the policy has", "unsafe", "bias", "src"),
        ],
    )
    rows = read_calibration_rows(tmp_path, load_policy())
    texts = {r.text: r for r in rows}
    assert texts["a man stabbed in an alley"].cats == {"violence"}  # a source name mapped
    assert texts["a ghost weapon workshop"].cats == {"weapons"}  # a policy id taken as it is
    assert "a dark alley" not in texts and "an unsafe row naming nothing the policy has" not in texts
    copies = [r for r in rows if r.source.startswith("bikes+")]
    assert copies and all(r.fold == texts["a red bicycle"].fold for r in copies)
    severity = [r for r in rows if r.source in ("severity", "lookalike-severity")]
    assert {c for r in severity for c in r.cats} >= {"sexual", "violence", "gore", "hate", "weapons"}
    assert any(not r.cats for r in severity)  # permitted examples are negatives


def test_calibrate_fits_heads_and_reports_out_of_fold_figures():
    rng = np.random.default_rng(2)
    direction = rng.normal(size=16)
    rows, vectors = [], []
    for i in range(600):
        unsafe = i % 3 == 0
        rows.append(CalibrationRow(f"t{i}", frozenset({"violence"}) if unsafe else frozenset(), fold_of(str(i)), "s"))
        vectors.append(rng.normal(size=16) + (2.5 * direction if unsafe else 0))
    x = np.asarray(vectors, np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    result = calibrate(rows, ["violence", "hate"], x, x, steer_fp=0.02, block_fp=0.01)
    assert result.categories == ("violence",)  # hate has no labelled rows
    n, flagged, _ = result.figures["s", "benign"]
    assert n == 400 and flagged / n <= 0.02
    n, flagged, blocked = result.figures["s", "unsafe"]
    assert flagged / n > 0.8 and blocked <= flagged
    t = result.thresholds
    assert t["strict"]["violence"]["steer"] <= t["balanced"]["violence"]["steer"]
    assert t["balanced"]["violence"]["steer"] <= t["balanced"]["violence"]["block"]


#: The bundled heads predate the policy's severity lines (a recalibration on them lost too much detection to ship:
#: see the README), and do not yet decide every example as the policy states. Strict, so it fails once fixed.
SEVERITY_KNOWN_GAPS = {"violence", "gore", "self_harm"}


@pytest.mark.parametrize(
    "category",
    [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason="heads predate the severity lines"))
        if c in SEVERITY_KNOWN_GAPS
        else c
        for c in ("sexual", "violence", "gore", "self_harm")
    ],
)
def test_the_bundled_stage_follows_the_policys_lines(category):
    from safeguard.guard import Guard

    policy = load_policy()
    levels = dict(next(c for c in policy.categories if c.id == category).severity)
    guard = Guard.create(preset="balanced")
    prohibited = guard.check_prompts(list(levels["block"].examples))
    permitted = guard.check_prompts(list(levels["permitted"].examples))
    assert [v.flagged for v in prohibited] == [True] * len(prohibited), levels["block"].examples
    assert [v.flagged for v in permitted] == [False] * len(permitted), levels["permitted"].examples
