"""Typed results: what a stage decided about one prompt or one image.

A :class:`Verdict` holds an :class:`Action`, the :class:`Finding` records that led to it and the per-category
scores. Verdicts combine with "block wins": the combined action is the most severe one, scores keep their
maximum and every finding is kept, so a block always says which category, score, threshold, stage and policy
version caused it.

Example:
    >>> from safeguard.verdict import Action, Finding, Verdict
    >>> hit = Finding("sexual", score=1.0, threshold=0.5, stage="prompt", action=Action.BLOCK, source="keyword")
    >>> v = Verdict.from_findings([hit], {"sexual": 1.0}, policy_id="p", policy_version="1")
    >>> v.blocked, v.flagged, v.to_dict()["categories"]
    (True, True, {'sexual': True})
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType
from typing import Any

__all__ = ["STAGE_FAILURE", "Action", "Finding", "Verdict"]

#: Category id of the finding recorded when a stage raised or returned an invalid score.
STAGE_FAILURE = "stage_failure"


class Action(str, Enum):
    """What to do with a prompt or image, from least to most severe."""

    ALLOW = "allow"
    STEER = "steer"
    BLOCK = "block"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Action.ALLOW: 0, Action.STEER: 1, Action.BLOCK: 2}


@dataclass(frozen=True)
class Finding:
    """One signal that reached a threshold.

    Attributes:
        category: policy category id (or ``"stage_failure"``).
        score: the score that was compared, in the scale of its source.
        threshold: the threshold it reached.
        stage: ``"prompt"``, ``"image"``, ``"locked"`` (the always-on child-safety rule) or ``"steering"`` (a
            record of how an image's generation was steered, with action ``steer``).
        action: what this finding asks for.
        source: the rule or backend that produced it, e.g. ``"keyword"``, ``"opennsfw"``.
        detail: a short human-readable explanation (matched phrase, exception text).
        locked: the finding comes from a rule no preset, toggle or override can disable.
        regions: for image findings from a detector, the boxes ``(x0, y0, x1, y1)`` in pixels of the checked
            image where it saw the content; empty when the finding concerns the whole image.
    """

    category: str
    score: float
    threshold: float
    stage: str
    action: Action
    source: str
    detail: str = ""
    locked: bool = False
    regions: tuple[tuple[int, int, int, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "score": self.score,
            "threshold": self.threshold,
            "stage": self.stage,
            "action": self.action.value,
            "source": self.source,
            "detail": self.detail,
            "locked": self.locked,
            # Only detector findings carry boxes; other records keep their established shape.
            **({"regions": [list(r) for r in self.regions]} if self.regions else {}),
        }


@dataclass(frozen=True)
class Verdict:
    """The decision about one prompt or one image.

    ``blocked`` is true when the action is block; ``flagged`` when it is anything but allow. ``disclosure`` is,
    for a returned image with disclosure on, what was done about its watermark (see
    :mod:`safeguard.disclosure.marking`): ``{"watermark": <hex word>, "generator_id": ...}`` or
    ``{"watermark": None, "reason": ...}``; None otherwise.
    """

    action: Action
    findings: tuple[Finding, ...]
    category_scores: Mapping[str, float]
    policy_id: str
    policy_version: str
    stages: tuple[str, ...] = field(default=())
    disclosure: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "category_scores", MappingProxyType(dict(self.category_scores)))
        if self.disclosure is not None:
            object.__setattr__(self, "disclosure", MappingProxyType(dict(self.disclosure)))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # The read-only mappings cannot be pickled themselves: rebuild from plain dicts (process pools, deepcopy).
        disclosure = None if self.disclosure is None else dict(self.disclosure)
        fields = (self.action, self.findings, dict(self.category_scores), self.policy_id, self.policy_version)
        return (type(self), (*fields, self.stages, disclosure))

    @property
    def blocked(self) -> bool:
        return self.action is Action.BLOCK

    @property
    def flagged(self) -> bool:
        return self.action is not Action.ALLOW

    @property
    def locked(self) -> bool:
        """True when a rule that nothing may disable blocked this content."""
        return any(f.locked and f.action is Action.BLOCK for f in self.findings)

    @property
    def categories(self) -> dict[str, bool]:
        """Per scored category: whether any finding flagged it."""
        flagged = {f.category for f in self.findings if f.action is not Action.ALLOW}
        names = dict.fromkeys([*self.category_scores, *sorted(flagged)])
        return {name: name in flagged for name in names}

    @classmethod
    def allow(cls, policy_id: str, policy_version: str, stages: tuple[str, ...] = ()) -> Verdict:
        """A verdict with nothing found."""
        return cls(Action.ALLOW, (), {}, policy_id, policy_version, stages)

    @classmethod
    def from_findings(
        cls,
        findings: Iterable[Finding],
        category_scores: Mapping[str, float],
        *,
        policy_id: str,
        policy_version: str,
        stages: tuple[str, ...] = (),
    ) -> Verdict:
        """Build a verdict whose action is the most severe action among ``findings``."""
        findings = tuple(findings)
        action = max((f.action for f in findings), key=lambda a: a.severity, default=Action.ALLOW)
        return cls(action, findings, category_scores, policy_id, policy_version, stages)

    @classmethod
    def for_stage(
        cls, findings: Iterable[Finding], category_scores: Mapping[str, float], policy: Any, stage: str
    ) -> Verdict:
        """A stage's verdict under ``policy`` (anything with ``id`` and ``version``), for one kind of stage.

        Example:
            >>> from safeguard.policy import load_policy
            >>> Verdict.for_stage([], {"sexual": 0.1}, load_policy(), "output").action.value
            'allow'
        """
        return cls.from_findings(
            findings, category_scores, policy_id=policy.id, policy_version=policy.version, stages=(stage,)
        )

    @classmethod
    def stage_failure(cls, policy: Any, stage: str, source: str, detail: str) -> Verdict:
        """The block verdict for content a stage could not judge (it raised, hung or returned nonsense).

        Example:
            >>> from safeguard.policy import load_policy
            >>> v = Verdict.stage_failure(load_policy(), "output", "opennsfw", "RuntimeError: boom")
            >>> v.blocked, v.findings[0].category
            (True, 'stage_failure')
        """
        finding = Finding(STAGE_FAILURE, 1.0, 1.0, stage, Action.BLOCK, source, detail)
        return cls.for_stage([finding], {}, policy, stage)

    @classmethod
    def combine(cls, verdicts: Iterable[Verdict]) -> Verdict:
        """Merge verdicts about the same content: block wins, scores keep their maximum.

        Raises:
            ValueError: if ``verdicts`` is empty or mixes policies.
        """
        verdicts = list(verdicts)
        if not verdicts:
            raise ValueError("Verdict.combine needs at least one verdict")
        policies = {(v.policy_id, v.policy_version) for v in verdicts}
        if len(policies) > 1:
            raise ValueError(f"cannot combine verdicts from different policies: {sorted(policies)}")
        scores: dict[str, float] = {}
        for verdict in verdicts:
            for name, score in verdict.category_scores.items():
                scores[name] = max(score, scores.get(name, -math.inf))
        stages = tuple(dict.fromkeys(s for v in verdicts for s in v.stages))
        findings = tuple(f for v in verdicts for f in v.findings)
        first = verdicts[0]
        combined = cls.from_findings(
            findings, scores, policy_id=first.policy_id, policy_version=first.policy_version, stages=stages
        )
        disclosure = next((v.disclosure for v in verdicts if v.disclosure is not None), None)
        return combined if disclosure is None else replace(combined, disclosure=disclosure)

    def to_dict(self) -> dict[str, Any]:
        """A moderation-style record: ``flagged``, ``categories``, ``category_scores`` and the details."""
        return {
            "flagged": self.flagged,
            "blocked": self.blocked,
            "action": self.action.value,
            "categories": self.categories,
            "category_scores": dict(self.category_scores),
            "findings": [f.to_dict() for f in self.findings],
            "policy": {"id": self.policy_id, "version": self.policy_version},
            "stages": list(self.stages),
            "disclosure": None if self.disclosure is None else dict(self.disclosure),
        }

    def __str__(self) -> str:
        if not self.findings:
            return f"{self.action.value} (policy {self.policy_id}@{self.policy_version})"
        parts = ", ".join(
            f"{f.category} {f.score:.3g}>={f.threshold:.3g} [{f.stage}/{f.source}]" for f in self.findings
        )
        return f"{self.action.value}: {parts} (policy {self.policy_id}@{self.policy_version})"
