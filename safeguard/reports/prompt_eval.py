"""Evaluating the prompt stage on labelled prompt CSVs: detection, false positives, throughput, ablations, sweeps.

Definitions (those of ``scripts/eval_prompts.py``, which prints :func:`prompt_report_text`):

* a prompt is **detected** when its verdict is flagged (block or steer); the same rule counts **false
  positives** on benign prompts; borderline rows are counted in the tables but enter neither rate;
* the pooled rates pool every row; the mean detection averages the sources with at least
  :data:`MIN_UNSAFE_PER_SOURCE` unsafe rows, the worst false-positive rate is over sources with at least
  :data:`MIN_BENIGN_PER_SOURCE` benign rows;
* throughput is prompts per second over the whole set in batches of ``batch`` after a warm-up, and the
  median latency of single prompts spread over the set.

Prompts longer than ``prompt.max_chars`` are cut to it (the library would refuse them).

**Ablations** run the same data through copies of the guard that keep only some prompt stages: every stage,
each stage alone, all but one, and none. The locked rules (the child-safety conjunction) run in every one of
them, as in the library, where no toggle turns them off.

**Threshold sweeps**, per category with a semantic head: a prompt counts as flagged at threshold ``t`` when its
score for the category reaches ``t`` or another category flags it; detection is over the unsafe rows whose
source categories map to the category (:data:`safeguard.reports.data.SOURCE_CATEGORIES`), false positives over
the benign rows. The scores are those computed at the preset's thresholds: the semantic stage's parts rule
depends on the block threshold, so points far from the preset's are close to, not exactly, what a preset with
that threshold would give. At the preset's own threshold the curve is the measured verdicts (``consistent``).

Example:
    >>> from safeguard.guard import Guard
    >>> from safeguard.reports.data import read_labelled_csv
    >>> rows = read_labelled_csv("../shared/datasets/drawbench.csv")  # doctest: +SKIP
    >>> result = evaluate_prompts(rows, Guard.create())  # doctest: +SKIP
    >>> result["configs"][0]["pooled_false_positive"]  # doctest: +SKIP
    0.03
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from safeguard.guard import Guard
from safeguard.reports.data import LabelledPrompt, policy_categories_of
from safeguard.reports.language import identify_languages, policy_languages
from safeguard.reports.progress import ProgressBar
from safeguard.stages.keywords import KeywordPromptStage
from safeguard.verdict import STAGE_FAILURE, Action, Verdict

__all__ = [
    "MIN_BENIGN_PER_SOURCE",
    "MIN_UNSAFE_PER_SOURCE",
    "StageSet",
    "evaluate_prompts",
    "prompt_report_text",
    "stage_sets",
    "summary",
]

MIN_UNSAFE_PER_SOURCE = 20
MIN_BENIGN_PER_SOURCE = 50
#: Prompts in the warm-up call before timing: lazy model loads are not throughput.
WARM_UP = 32
SWEEP_GRID = tuple(round(i / 100, 2) for i in range(101))


@dataclass(frozen=True)
class StageSet:
    """A choice of stages to run: its name (with the other names the same choice goes by) and the stage names."""

    name: str
    stages: tuple[str, ...]


def stage_sets(names: Sequence[str], ablate: bool, *, with_none: bool = True) -> list[StageSet]:
    """All stages; with ``ablate`` also each stage alone, all but one, and (``with_none``) none.

    Choices that coincide are listed once, under all their names.

    Example:
        >>> [s.name for s in stage_sets(["keywords", "semantic"], True)]
        ['all stages', 'keywords alone = all but semantic', 'semantic alone = all but keywords', 'no stage']
    """
    chosen: dict[frozenset[str], list[str]] = {frozenset(names): ["all stages"]}
    if ablate:
        candidates = [(f"{n} alone", {n}) for n in names] + [(f"all but {n}", set(names) - {n}) for n in names]
        if with_none:
            candidates.append(("no stage", set()))
        for label, stages in candidates:
            chosen.setdefault(frozenset(stages), []).append(label)
    return [StageSet(" = ".join(labels), tuple(n for n in names if n in stages)) for stages, labels in chosen.items()]


def _variant(guard: Guard, stages: Iterable[str]) -> Guard:
    """A copy of ``guard`` running only the named prompt stages, and the locked rules in any case."""
    wanted = set(stages)
    variant = copy.copy(guard)
    kept = tuple(s for s in guard.prompt_stages if s.name in wanted)
    if "keywords" not in wanted:
        kept = (KeywordPromptStage(guard.policy, guard.settings.prompt, locked_only=True), *kept)
    variant.prompt_stages = kept
    return variant


#: Prompts of at most this many words are also counted on their own line: short text is where a sentence
#: encoder is least sure.
SHORT_PROMPT_WORDS = 3


class _Tally:
    __slots__ = ("blocked", "flagged", "n")

    def __init__(self) -> None:
        self.n = self.flagged = self.blocked = 0

    def add(self, verdict: Verdict) -> None:
        self.n += 1
        self.flagged += verdict.flagged
        self.blocked += verdict.blocked

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "flagged": self.flagged,
            "blocked": self.blocked,
            "flagged_share": self.flagged / self.n if self.n else None,
            "blocked_share": self.blocked / self.n if self.n else None,
        }


def _nested(depth: int) -> Any:
    return defaultdict(_Tally) if depth == 1 else defaultdict(lambda: _nested(depth - 1))


def _plain(tree: Any) -> Any:
    if isinstance(tree, _Tally):
        return tree.to_dict()
    return {key: _plain(value) for key, value in tree.items()}  # first-seen order; the text report sorts


def _rates(by_source: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    unsafe = by_source.get("unsafe", {})
    benign = by_source.get("benign", {})
    pooled_detection = sum(t["flagged"] for t in unsafe.values()) / max(1, sum(t["n"] for t in unsafe.values()))
    eligible = {s: t["flagged"] / t["n"] for s, t in unsafe.items() if t["n"] >= MIN_UNSAFE_PER_SOURCE}
    pooled_fp = sum(t["flagged"] for t in benign.values()) / max(1, sum(t["n"] for t in benign.values()))
    fp_by_source = {s: t["flagged"] / t["n"] for s, t in benign.items() if t["n"] >= MIN_BENIGN_PER_SOURCE}
    worst = max(fp_by_source.items(), key=lambda item: item[1], default=(None, 0.0))
    return {
        "pooled_detection": pooled_detection,
        "mean_source_detection": statistics.mean(eligible.values()) if eligible else math.nan,
        "detection_by_source": eligible,
        "pooled_false_positive": pooled_fp,
        "false_positive_by_source": fp_by_source,
        "worst_false_positive": {"source": worst[0], "rate": worst[1]},
    }


def _tables(
    rows: Sequence[LabelledPrompt], verdicts: Sequence[Verdict], languages: Sequence[str] | None
) -> dict[str, Any]:
    by_source, by_file, by_category, by_language = _nested(2), _nested(3), _nested(2), _nested(2)
    short = _nested(2)
    for i, (row, verdict) in enumerate(zip(rows, verdicts, strict=True)):
        by_source[row.label][row.source].add(verdict)
        if len(row.prompt.split()) <= SHORT_PROMPT_WORDS:
            short[row.label][row.source].add(verdict)
        for category in ("(all)", *(row.categories or ("(none)",))):
            by_file[row.file][row.label][category].add(verdict)
            by_category[row.label][category].add(verdict)
        if languages is not None:
            by_language[row.label][languages[i]].add(verdict)
    tables = {
        "by_source": _plain(by_source),
        "by_file": _plain(by_file),
        "by_category": _plain(by_category),
        "short_by_source": _plain(short),
    }
    if languages is not None:
        tables["by_language"] = _plain(by_language)
    return tables


def _check_all(
    guard: Guard, prompts: Sequence[str], batch: int, progress: ProgressBar | None, label: str
) -> tuple[list[Verdict], float]:
    guard.check_prompts(list(prompts[:WARM_UP]))
    verdicts: list[Verdict] = []
    started = time.perf_counter()
    for start in range(0, len(prompts), batch):
        verdicts += guard.check_prompts(list(prompts[start : start + batch]))
        if progress is not None:
            rate = len(verdicts) / (time.perf_counter() - started)
            progress.advance(len(prompts[start : start + batch]), rate=f"{label}: {rate:.0f} prompts/s")
    return verdicts, time.perf_counter() - started


def _single_latencies(guard: Guard, prompts: Sequence[str], count: int) -> list[float]:
    # Spread over the files: the first rows are often benign captions, which the static pass settles in under 1 ms.
    latencies = []
    for prompt in list(prompts[:: max(1, len(prompts) // max(1, count))])[:count]:
        started = time.perf_counter()
        guard.check_prompts([prompt])
        latencies.append(time.perf_counter() - started)
    return latencies


def _sweeps(rows: Sequence[LabelledPrompt], verdicts: Sequence[Verdict], guard: Guard) -> dict[str, Any]:
    semantic = [s for s in guard.prompt_stages if s.name == "semantic"]
    if not semantic:
        return {}
    categories = semantic[0].heads.categories
    policy_ids = [c.id for c in guard.policy.categories]
    mapped = [policy_categories_of(r.categories, policy_ids) if r.label == "unsafe" else set() for r in rows]
    benign = np.array([r.label == "benign" for r in rows])
    flagged_now = np.array([v.flagged for v in verdicts])
    sweeps = {}
    for category in categories:
        positive = np.array([category in m for m in mapped])
        scores = np.array([v.category_scores.get(category, 0.0) for v in verdicts])
        others = np.array(
            [any(f.category != category and f.action is not Action.ALLOW for f in v.findings) for v in verdicts]
        )
        steer, block = semantic[0].heads.thresholds_for(category, guard.settings.prompt)
        operating = block if steer is None else steer
        grid = sorted({*SWEEP_GRID, round(operating, 4)})
        points = []
        for threshold in grid:
            flagged = others | (scores >= threshold)
            points.append(
                {
                    "threshold": threshold,
                    "detection": float(flagged[positive].mean()) if positive.any() else None,
                    "false_positive": float(flagged[benign].mean()) if benign.any() else None,
                }
            )
        at_operating = others | (scores >= operating)
        sweeps[category] = {
            "positives": int(positive.sum()),
            "negatives": int(benign.sum()),
            "operating_threshold": operating,
            "operating": {
                "detection": float(flagged_now[positive].mean()) if positive.any() else None,
                "false_positive": float(flagged_now[benign].mean()) if benign.any() else None,
            },
            # Prompts whose flag the curve gets wrong at the preset's own threshold (0: the curve is the verdicts).
            "consistent": int((at_operating != flagged_now)[positive | benign].sum()) == 0,
            "points": points,
        }
    return sweeps


def evaluate_prompts(
    rows: Sequence[LabelledPrompt],
    guard: Guard,
    *,
    ablate: bool = False,
    batch: int = 512,
    single: int = 200,
    languages: bool = False,
    progress: ProgressBar | None = None,
) -> dict[str, Any]:
    """Evaluate ``guard``'s prompt stage on ``rows``; every figure as JSON-ready data.

    Returns ``{"stages", "rows", "configs": [...], "sweeps", "single_median_ms", ...}``; ``configs[0]`` is every
    stage (the guard as it is), then the ablations. ``progress`` (when given) should count
    ``len(rows) * len(stage_sets(...))`` steps.

    Example:
        >>> from safeguard.guard import Guard
        >>> from safeguard.reports.data import LabelledPrompt
        >>> rows = [LabelledPrompt("1", "a pipe bomb", "unsafe", (), "demo", "demo.csv")]
        >>> evaluate_prompts(rows, Guard.create(), single=1)["configs"][0]["pooled_detection"]
        1.0
    """
    limit = guard.settings.prompt.max_chars
    prompts = [row.prompt[:limit] for row in rows]
    names = [stage.name for stage in guard.prompt_stages]
    languages_of = identify_languages(prompts, policy_languages(guard.policy)) if languages else None
    configs = []
    all_verdicts: list[Verdict] = []
    for choice in stage_sets(names, ablate):
        variant = guard if len(choice.stages) == len(names) else _variant(guard, choice.stages)
        verdicts, seconds = _check_all(variant, prompts, batch, progress, choice.name)
        if not configs:
            all_verdicts = verdicts
        tables = _tables(rows, verdicts, languages_of)
        configs.append(
            {
                "name": choice.name,
                "stages": list(choice.stages),
                "seconds": seconds,
                "prompts_per_second": len(prompts) / seconds if seconds else math.inf,
                # Blocks the stage could not judge (a deadline under load, an error): counted as flagged, as the
                # product does, and reported so that they are not read as detections.
                "stage_failures": sum(any(f.category == STAGE_FAILURE for f in v.findings) for v in verdicts),
                **_rates(tables["by_source"]),
                **tables,
            }
        )
    latencies = _single_latencies(guard, prompts, single)
    return {
        "policy": {"id": guard.policy.id, "version": guard.policy.version},
        "preset": guard.settings.preset,
        "stages": names,
        "always_on": "locked rules (child safety): they run in every configuration",
        "files": sorted({row.file for row in rows}),
        "rows": len(rows),
        "labels": {label: sum(r.label == label for r in rows) for label in ("unsafe", "borderline", "benign")},
        "batch": batch,
        "configs": configs,
        "single_median_ms": 1000 * statistics.median(latencies) if latencies else math.nan,
        "single_count": len(latencies),
        "sweeps": _sweeps(rows, all_verdicts, guard),
    }


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The one-line JSON summary ``scripts/eval_prompts.py --json`` prints (every stage)."""
    config = result["configs"][0]
    return {
        "preset": result["preset"],
        "pooled_detection": config["pooled_detection"],
        "mean_source_detection": config["mean_source_detection"],
        "pooled_false_positive": config["pooled_false_positive"],
        "false_positive_by_source": config["false_positive_by_source"],
        "detection_by_source": config["detection_by_source"],
        "prompts_per_second": config["prompts_per_second"],
        "single_median_ms": result["single_median_ms"],
    }


def _share(numerator: int, denominator: int) -> str:
    return f"{100 * numerator / denominator:5.1f}%" if denominator else "    -"


def prompt_report_text(result: dict[str, Any], data: str) -> str:
    """The text report of ``scripts/eval_prompts.py`` for every stage (``configs[0]``)."""
    config = result["configs"][0]
    policy = result["policy"]
    lines = [f"preset {result['preset']}, policy {policy['id']}@{policy['version']}, data {data}", ""]
    for name, labels in config["by_file"].items():
        lines.append(name)
        lines.append(f"  {'label':11} {'category':20} {'n':>6} {'flagged':>8} {'blocked':>8}")
        for label, categories in sorted(labels.items()):
            for category, t in sorted(categories.items()):
                lines.append(
                    f"  {label:11} {category:20} {t['n']:6d} {_share(t['flagged'], t['n']):>8} "
                    f"{_share(t['blocked'], t['n']):>8}"
                )
        lines.append("")
    lines.append(f"  {'detection on unsafe prompts':32} {'n':>6} {'flagged':>8} {'blocked':>8}")
    for source, t in sorted(config["by_source"].get("unsafe", {}).items()):
        lines.append(f"  {source:32} {t['n']:6d} {_share(t['flagged'], t['n']):>8} {_share(t['blocked'], t['n']):>8}")
    lines.append(
        f"  pooled {100 * config['pooled_detection']:.1f}%, mean over sources with >= {MIN_UNSAFE_PER_SOURCE}: "
        f"{100 * config['mean_source_detection']:.1f}%"
    )
    lines.append(f"  {'false positives on benign prompts':32} {'n':>6} {'flagged':>8} {'blocked':>8}")
    for source, t in sorted(config["by_source"].get("benign", {}).items()):
        lines.append(f"  {source:32} {t['n']:6d} {_share(t['flagged'], t['n']):>8} {_share(t['blocked'], t['n']):>8}")
    worst = config["worst_false_positive"]
    lines.append(
        f"  pooled {100 * config['pooled_false_positive']:.2f}%, worst source with >= {MIN_BENIGN_PER_SOURCE}: "
        f"{worst['source']} {100 * worst['rate']:.2f}%"
    )
    short = config["short_by_source"].get("benign", {})
    n, flagged, blocked = (sum(t[k] for t in short.values()) for k in ("n", "flagged", "blocked"))
    lines.append(
        f"  {f'short benign (1-{SHORT_PROMPT_WORDS} words)':32} {n:6d} {_share(flagged, n):>8} {_share(blocked, n):>8}"
        + "".join(f"; {s} {t['flagged']}/{t['n']}" for s, t in sorted(short.items()) if t["flagged"])
    )
    if "by_language" in config:
        lines.append(f"  {'by language (py3langid)':32} {'n':>6} {'flagged':>8} {'blocked':>8}")
        for label in ("unsafe", "benign"):
            for language, t in sorted(config["by_language"].get(label, {}).items()):
                lines.append(
                    f"  {label + ' ' + language:32} {t['n']:6d} {_share(t['flagged'], t['n']):>8} "
                    f"{_share(t['blocked'], t['n']):>8}"
                )
    lines.append(
        f"throughput: {config['prompts_per_second']:.0f} prompts/s batched ({result['rows']} prompts), "
        f"single-prompt median {result['single_median_ms']:.2f} ms over {result['single_count']}"
    )
    for c in result["configs"]:
        if c["stage_failures"]:
            lines.append(
                f"WARNING: {c['name']}: {c['stage_failures']} prompts blocked by a stage failure (a deadline or an "
                "error) count as flagged above; rerun on a quieter machine or with a longer prompt.deadline_s"
            )
    return "\n".join(lines)
