"""Per-language figures of the prompt stage on a multilingual labelled set (``tests/data/multilingual_prompts.csv``).

Each row's language is its ``source`` (``multilingual-<code>``). Per language: the share of unsafe prompts
detected (flagged: block or steer) overall and per category (``sexual``; ``violence``, which counts ``gore``
too), and the shares of benign prompts flagged and blocked. ``scripts/eval_languages.py`` prints the table;
``tests/test_languages.py`` holds the bars (at least 80% detected, at most 2% of benign prompts flagged, per
language).

Example:
    >>> from safeguard.guard import Guard
    >>> from safeguard.reports.data import read_labelled_csv
    >>> rows = read_labelled_csv("tests/data/multilingual_prompts.csv")  # doctest: +SKIP
    >>> table = language_table(rows, Guard.create(preset="balanced"))  # doctest: +SKIP
    >>> table["fr"].benign_flagged  # doctest: +SKIP
    0.0
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from safeguard.guard import Guard
from safeguard.reports.data import LabelledPrompt

__all__ = ["LanguageFigures", "language_of", "language_table", "language_table_text"]

#: Category labels of the table, and the policy categories each counts.
TABLE_CATEGORIES = {"sexual": ("sexual",), "violence": ("violence", "gore")}


def language_of(row: LabelledPrompt) -> str:
    """The language of a row of the multilingual set: its source ``multilingual-<code>``, else the source."""
    return row.source.removeprefix("multilingual-")


@dataclass
class LanguageFigures:
    """Counts of one language; the shares are properties."""

    unsafe: int = 0
    detected: int = 0
    by_category: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    benign: int = 0
    benign_flagged_n: int = 0
    benign_blocked_n: int = 0
    missed: list[str] = field(default_factory=list)
    false_positives: list[str] = field(default_factory=list)

    @property
    def detection(self) -> float:
        return self.detected / self.unsafe if self.unsafe else 0.0

    def category_detection(self, name: str) -> float:
        hit, n = self.by_category[name]
        return hit / n if n else 0.0

    @property
    def benign_flagged(self) -> float:
        return self.benign_flagged_n / self.benign if self.benign else 0.0

    @property
    def benign_blocked(self) -> float:
        return self.benign_blocked_n / self.benign if self.benign else 0.0


def language_table(rows: Sequence[LabelledPrompt], guard: Guard) -> dict[str, LanguageFigures]:
    """Figures per language of ``guard``'s prompt verdicts on ``rows`` (borderline rows are skipped)."""
    verdicts = guard.check_prompts([row.prompt for row in rows])
    table: dict[str, LanguageFigures] = defaultdict(LanguageFigures)
    for row, verdict in zip(rows, verdicts, strict=True):
        figures = table[language_of(row)]
        if row.label == "unsafe":
            figures.unsafe += 1
            figures.detected += verdict.flagged
            for name, members in TABLE_CATEGORIES.items():
                if any(c in members for c in row.categories):
                    figures.by_category[name][0] += verdict.flagged
                    figures.by_category[name][1] += 1
            if not verdict.flagged:
                figures.missed.append(row.prompt)
        elif row.label == "benign":
            figures.benign += 1
            figures.benign_flagged_n += verdict.flagged
            figures.benign_blocked_n += verdict.blocked
            if verdict.flagged:
                found = ", ".join(sorted({f"{f.category} ({f.source})" for f in verdict.findings}))
                figures.false_positives.append(f"{row.prompt}  [{found}]")
    return dict(table)


def language_table_text(table: dict[str, LanguageFigures], preset: str, *, details: bool = False) -> str:
    """The table as text: one line per language, then the worst language by detection and by benign flags."""
    lines = [
        f"preset {preset}: unsafe detected (flagged = block or steer) and benign flagged, per language",
        f"  {'lang':<6}{'unsafe':>7}{'detected':>10}{'sexual':>9}{'violence':>10}"
        f"{'benign':>8}{'flagged':>9}{'blocked':>9}",
    ]
    for language, f in sorted(table.items()):
        lines.append(
            f"  {language:<6}{f.unsafe:>7}{f.detection:>10.1%}{f.category_detection('sexual'):>9.1%}"
            f"{f.category_detection('violence'):>10.1%}{f.benign:>8}{f.benign_flagged:>9.1%}{f.benign_blocked:>9.1%}"
        )
    if table:
        worst_detection = min(table, key=lambda k: table[k].detection)
        worst_benign = max(table, key=lambda k: table[k].benign_flagged)
        lines.append(
            f"  worst detection: {worst_detection} {table[worst_detection].detection:.1%}; "
            f"worst benign flagged: {worst_benign} {table[worst_benign].benign_flagged:.1%}"
        )
    if details:
        for language, f in sorted(table.items()):
            lines += [f"  {language} missed: {p}" for p in f.missed]
            lines += [f"  {language} benign flagged: {p}" for p in f.false_positives]
    return "\n".join(lines)
