"""Calibrating the semantic prompt stage: heads fit on labelled prompts, thresholds chosen per benign source.

What :func:`calibrate` does, in one run:

1. reads the labelled CSVs (``id,prompt,label,categories,source``) of the data folder and the project's own
   written data in ``configs/semantic/`` (unsafe paraphrases of every category, benign look-alikes by failure
   class: short prompts, bare names, dark but permitted art, benign rewrites of unsafe prompts, everyday
   prompts). Source category names map onto policy categories (:func:`safeguard.reports.data.policy_categories_of`);
   ``unsafe`` rows are positives of their categories, ``benign`` rows negatives, ``borderline`` rows unused. The
   policy's own lines (each category's ``severity``: ``block`` examples are positives, ``permitted`` ones
   negatives) and its concept phrases and keywords in a few templates (training only) are added;
2. gives every row one of four folds by a hash of its id (augmented copies keep their row's fold) and scores
   each fold with heads fit on the other three: the *out-of-fold* scores that thresholds and figures use, so
   neither is measured on the rows the heads were fit to;
3. fits the final heads on all rows, one L2-regularised logistic head per category for the static encoder and
   for the distilled student;
4. chooses thresholds so that the pooled benign rows stay within ``steer_fp`` / ``block_fp`` **and every**
   benign source (each written look-alike class is one) within ``source_steer_fp`` / ``source_block_fp``: a
   pooled budget alone is spent almost entirely on the largest source (COCO captions), and the smaller, harder
   sources then carry the false positives;
5. returns the heads, the thresholds of each named strictness (:data:`safeguard.config.PROMPT_STRICTNESS`),
   which travel with the heads, and the out-of-fold figures per source.

Benign caption sets have none of the style phrases that fill community prompts, so half of every benign CSV
source is repeated with such phrases appended, and the other half misspelt: without that, the heads learn
"prompt-site style" and "token soup" instead of the category.

Example:
    >>> from safeguard.prompt_calibration import fold_of
    >>> fold_of("coco:42") in range(4)
    True
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from safeguard._files import bundled_file
from safeguard.policy import Policy
from safeguard.reports.data import policy_categories_of, read_labelled_csv

__all__ = [
    "FOLDS",
    "STRICTNESS",
    "Calibration",
    "CalibrationRow",
    "calibrate",
    "fit_logistic",
    "fold_of",
    "format_figures",
    "joint_thresholds",
    "read_calibration_rows",
    "write_heads",
]

FOLDS = 4
#: How each strictness level (:data:`safeguard.config.PROMPT_STRICTNESS`) multiplies the false-positive budgets.
STRICTNESS = {"balanced": 1.0, "strict": 3.0}
TEMPLATES = ["{}", "a photo of {}", "{}, digital art", "a detailed painting of {}", "{}, highly detailed, 4k"]
#: Style phrases common in community prompts (see the module docstring).
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
#: Weight of a written look-alike negative relative to other rows: they are few and exactly where false
#: positives live.
LOOKALIKE_WEIGHT = 10.0
#: Weight of a written unsafe paraphrase: they are few beside the harvested unsafe sets.
PARAPHRASE_WEIGHT = 3.0
#: Labelled prompts (besides the policy's own phrases) a category needs before it gets a semantic head.
MIN_LABELLED = 75
#: Benign sources smaller than this set no threshold of their own (a quantile of a few rows is noise).
MIN_SOURCE_ROWS = 50
#: The project's written data, in ``configs/semantic/``.
WRITTEN_FILES = ("unsafe_paraphrases.csv", "benign_lookalikes_by_class.csv")
LOOKALIKES_TXT = "benign_lookalikes.txt"


@dataclass
class CalibrationRow:
    """One training or evaluation text: its categories (empty: benign), fold (-1: training only), source."""

    text: str
    cats: frozenset[str]
    fold: int
    source: str
    weight: float = 1.0


@dataclass
class Calibration:
    """Fitted heads, the thresholds of each strictness and the out-of-fold figures."""

    categories: tuple[str, ...]
    static_weights: np.ndarray
    static_bias: np.ndarray
    full_weights: np.ndarray
    full_bias: np.ndarray
    settle: np.ndarray
    #: ``thresholds[strictness][category] = {"steer": s, "block": b}``
    thresholds: dict[str, dict[str, dict[str, float]]]
    #: ``(source, "benign" | "unsafe") -> (rows, flagged, blocked)`` on out-of-fold scores, balanced thresholds.
    figures: dict[tuple[str, str], tuple[int, int, int]] = field(default_factory=dict)
    student_share: float = 0.0


def fold_of(row_id: str) -> int:
    """The fold of a row, by a hash of its id."""
    return int(hashlib.sha256(row_id.encode()).hexdigest()[:8], 16) % FOLDS


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


def _written_path(name: str) -> Path | None:
    return bundled_file("semantic", name)


def read_calibration_rows(folder: Path, policy: Policy) -> list[CalibrationRow]:
    """Every labelled row of ``folder``'s CSVs and of the written data, with augmentations and concept rows.

    Example:
        >>> from safeguard.policy import load_policy
        >>> rows = read_calibration_rows(Path("/nonexistent"), load_policy())
        >>> any(r.source == "policy" for r in rows) and any(r.source.startswith("lookalike-") for r in rows)
        True
    """
    ids = {c.id for c in policy.enforced("prompt")}
    paths = sorted(folder.glob("*.csv")) if folder.is_dir() else []
    written = [p for p in (_written_path(name) for name in WRITTEN_FILES) if p is not None]
    rows: list[CalibrationRow] = []
    for path in [*paths, *written]:
        own = path in written
        for row in read_labelled_csv(path):
            if row.label == "borderline":
                continue
            cats = policy_categories_of(row.categories, ids) | {c for c in row.categories if c in ids}
            if row.label == "unsafe" and not cats:
                continue
            weight = 1.0
            if own:
                weight = PARAPHRASE_WEIGHT if row.label == "unsafe" else LOOKALIKE_WEIGHT
            rows.append(CalibrationRow(row.prompt, frozenset(cats), fold_of(row.id), row.source, weight))
    txt = _written_path(LOOKALIKES_TXT)
    if txt is not None:
        lines = [x.strip() for x in txt.read_text(encoding="utf-8").splitlines()]
        for i, line in enumerate(x for x in lines if x and not x.startswith("#")):
            for suffix in ["", *STYLE_SUFFIXES[:2]]:
                rows.append(CalibrationRow(line + suffix, frozenset(), i % FOLDS, "lookalikes", LOOKALIKE_WEIGHT))
    csv_sources = {r.source for r in rows if not r.source.startswith(("lookalike", "written"))}
    benign = [r for r in rows if not r.cats and r.source in csv_sources]
    for i, row in enumerate(benign[::2]):
        suffix = STYLE_SUFFIXES[i % len(STYLE_SUFFIXES)]
        rows.append(CalibrationRow(row.text.rstrip(". ") + suffix, row.cats, row.fold, f"{row.source}+style"))
    rng = random.Random(0)
    rows += [CalibrationRow(misspell(row.text, rng), row.cats, row.fold, f"{row.source}+typos") for row in benign[1::2]]
    for category in policy.enforced("prompt"):
        # The policy's own lines: prohibited examples are positives, permitted ones look-alike negatives;
        # borderline (steer) examples are left between, for the tests to check.
        for level, severity in category.severity:
            for i, text in enumerate(severity.examples):
                fold = fold_of(f"severity:{category.id}:{level}:{i}")
                if level == "block":
                    rows.append(CalibrationRow(text, frozenset({category.id}), fold, "severity", PARAPHRASE_WEIGHT))
                elif level == "permitted":
                    rows.append(CalibrationRow(text, frozenset(), fold, "lookalike-severity", LOOKALIKE_WEIGHT))
        for phrase in (*category.concepts, *(k.rstrip("*") for k in category.keywords)):
            rows += [CalibrationRow(t.format(phrase), frozenset({category.id}), -1, "policy") for t in TEMPLATES]
    return rows


def fit_logistic(
    x: np.ndarray, y: np.ndarray, row_weight: np.ndarray, l2: float = 1e-3, steps: int = 400
) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced, row-weighted L2 logistic heads, one per column of ``y`` ``(n, C)``, fit together by
    full-batch gradient descent with momentum. Returns weights ``(C, D)`` and biases ``(C,)``."""
    x = np.asarray(x, np.float64)  # once, not per step
    n = len(y)
    pos = np.maximum(1.0, (row_weight[:, None] * y).sum(axis=0))
    neg = np.maximum(1.0, (row_weight[:, None] * (1 - y)).sum(axis=0))
    weight = row_weight[:, None] * np.where(y == 1, n / (2 * pos), n / (2 * neg))
    w = np.zeros((x.shape[1], y.shape[1]))
    b = np.zeros(y.shape[1])
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    lr = 2.0
    for _ in range(steps):
        z = x @ (w + 0.9 * vw) + (b + 0.9 * vb)
        p = 1 / (1 + np.exp(-np.clip(z, -30, 30)))
        g = weight * (p - y) / n
        gw, gb = x.T @ g + l2 * (w + 0.9 * vw), g.sum(axis=0)
        vw, vb = 0.9 * vw - lr * gw, 0.9 * vb - lr * gb
        w, b = w + vw, b + vb
    return w.T.astype(np.float32), b.astype(np.float32)


def scores(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(x @ weights.T + bias, -30, 30)))


def joint_thresholds(benign: np.ndarray, union_fp: float) -> np.ndarray:
    """Per-category thresholds at one shared quantile level such that at most ``union_fp`` of the ``benign``
    rows reach the threshold of any category: :func:`per_source_thresholds` with no source of its own.

    Example:
        >>> t = joint_thresholds(np.linspace(0, 1, 1001)[:, None], 0.01)
        >>> bool(0.98 < t[0] < 1.0)
        True
    """
    return per_source_thresholds(benign, [""] * len(benign), union_fp, 1.0)


def per_source_thresholds(benign: np.ndarray, sources: Sequence[str], pooled_fp: float, source_fp: float) -> np.ndarray:
    """Per-category thresholds at one shared quantile level of all ``benign`` rows, the highest level at which at
    most ``pooled_fp`` of them and at most ``source_fp`` of every source of at least :data:`MIN_SOURCE_ROWS`
    rows reach the threshold of any category (bisection on the level).

    One level for every category and source keeps a single outlier of a small source from setting a category's
    threshold on its own, which per-source quantiles would do.
    """
    names = np.asarray(sources)
    masks = [names == s for s in sorted(set(sources)) if (names == s).sum() >= MIN_SOURCE_ROWS]

    def holds(candidate: np.ndarray) -> bool:
        hit = (benign >= candidate).any(axis=1)
        return hit.mean() <= pooled_fp and all(hit[m].mean() <= source_fp for m in masks)

    low, high = 0.0, pooled_fp
    best = np.quantile(benign, 1.0, axis=0) + 1e-6
    for _ in range(30):
        level = (low + high) / 2
        candidate = np.quantile(benign, 1 - level, axis=0) + 1e-6
        if holds(candidate):
            best, low = candidate, level
        else:
            high = level
    return np.clip(best, 0.05, 0.999)


def _base_source(source: str) -> str:
    return source.split("+", 1)[0]


def calibrate(
    rows: list[CalibrationRow],
    categories: Sequence[str],
    x_static: np.ndarray,
    x_full: np.ndarray,
    *,
    steer_fp: float = 0.004,
    block_fp: float = 0.001,
    source_steer_fp: float = 0.03,
    source_block_fp: float = 0.01,
    settle_recall: float = 0.98,
) -> Calibration:
    """Fit the heads on ``rows`` (embedded as ``x_static`` and ``x_full``) and choose the thresholds.

    Only categories with :data:`MIN_LABELLED` labelled rows besides the policy's phrases get a head: one learnt
    from concept phrases alone fires on the topic ("voting") rather than on the violation, and keyword rules
    cover those categories.
    """
    labelled: dict[str, int] = defaultdict(int)
    for r in rows:
        if r.source != "policy":
            for c in r.cats:
                labelled[c] += 1
    trained = tuple(c for c in categories if labelled[c] >= MIN_LABELLED)
    y = np.array([[c in r.cats for c in trained] for r in rows], np.float64)
    weight = np.array([r.weight for r in rows])
    fold = np.array([r.fold for r in rows])

    out_of_fold = np.zeros((len(rows), len(trained)))
    for k in range(FOLDS):
        fit = fold != k
        w, b = fit_logistic(x_full[fit], y[fit], weight[fit])
        out_of_fold[fold == k] = scores(x_full[fold == k], w, b)
    static_w, static_b = fit_logistic(x_static, y, weight)
    full_w, full_b = fit_logistic(x_full, y, weight)

    # Thresholds on the out-of-fold scores of benign rows, per source: the augmented copies of a source count
    # as that source, the written look-alike classes each as their own.
    benign = (y.sum(axis=1) == 0) & (fold >= 0)
    sources = [_base_source(r.source) for r, keep in zip(rows, benign, strict=True) if keep]
    pool = out_of_fold[benign]
    thresholds: dict[str, dict[str, dict[str, float]]] = {}
    for name, strictness in STRICTNESS.items():

        def limit(pooled_fp: float, source_fp: float, strictness: float = strictness) -> np.ndarray:
            return per_source_thresholds(pool, sources, pooled_fp * strictness, source_fp * strictness)

        steer = limit(steer_fp, source_steer_fp)
        block = np.maximum(steer, limit(block_fp, source_block_fp))
        thresholds[name] = {c: {"steer": float(steer[i]), "block": float(block[i])} for i, c in enumerate(trained)}

    # The static tier settles (allows without the student) only below the lowest steer threshold, keeping
    # ``settle_recall`` of the prompts the student flags.
    full_scores = scores(x_full, full_w, full_b)
    static_scores = scores(x_static, static_w, static_b)
    lowest_steer = np.array([min(t[c]["steer"] for t in thresholds.values()) for c in trained])
    settle = np.zeros(len(trained), np.float32)
    for i in range(len(trained)):
        flagged = full_scores[:, i] >= lowest_steer[i]
        found = float(np.quantile(static_scores[flagged, i], 1 - settle_recall)) if flagged.any() else 0.5
        settle[i] = min(found, lowest_steer[i])

    balanced = thresholds["balanced"]
    steer_row = np.array([balanced[c]["steer"] for c in trained])
    block_row = np.array([balanced[c]["block"] for c in trained])
    figures: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for r, s, f in zip(rows, out_of_fold, fold, strict=True):
        if f < 0:
            continue
        entry = figures[r.source, "unsafe" if r.cats else "benign"]
        entry[0] += 1
        entry[1] += bool((s >= steer_row).any())
        entry[2] += bool((s >= block_row).any())
    return Calibration(
        categories=trained,
        static_weights=static_w,
        static_bias=static_b,
        full_weights=full_w,
        full_bias=full_b,
        settle=settle,
        thresholds=thresholds,
        figures={k: (v[0], v[1], v[2]) for k, v in figures.items()},
        student_share=float((static_scores >= settle).any(axis=1).mean()),
    )


def write_heads(
    calibration: Calibration, path: Path, *, encoder_name: str, idf: np.ndarray, center: np.ndarray, provenance: dict
) -> None:
    """Write the heads with their thresholds, what they were fit for (the student's name) and their provenance."""
    import json

    np.savez_compressed(
        path,
        categories=np.array(calibration.categories),
        static_weights=calibration.static_weights,
        static_bias=calibration.static_bias,
        full_weights=calibration.full_weights,
        full_bias=calibration.full_bias,
        full_encoder=np.array(encoder_name),
        settle=calibration.settle,
        idf=idf,
        center=center.astype(np.float32),
        thresholds=np.array(json.dumps(calibration.thresholds)),
        provenance=np.array(json.dumps(provenance)),
    )


def format_figures(calibration: Calibration) -> str:
    """The out-of-fold figures per source, benign and unsafe, with the worst benign source named."""
    lines = ["out-of-fold figures, semantic scores alone (balanced thresholds):"]
    worst = ("", -1.0)
    for (source, kind), (n, flagged, blocked) in sorted(calibration.figures.items()):
        lines.append(
            f"  {source:28} {kind:7} n={n:5d} flagged {100 * flagged / n:5.1f}% blocked {100 * blocked / n:5.1f}%"
        )
        if kind == "benign" and n >= MIN_SOURCE_ROWS and flagged / n > worst[1]:
            worst = (source, flagged / n)
    lines.append(f"  worst benign source: {worst[0]} {100 * worst[1]:.1f}% flagged")
    lines.append(f"  share of prompts sent to the student: {100 * calibration.student_share:.1f}%")
    return "\n".join(lines)
