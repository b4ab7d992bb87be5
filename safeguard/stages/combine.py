"""Combining the output stage's backends: image conjunctions and the redaction each blocked image gets.

Per category the strictest signal wins: the Guard combines the backends' verdicts with "block wins" and keeps
each category's highest score (:meth:`safeguard.verdict.Verdict.combine`). On top of that, the policy's
conjunctions that apply to images fire on the combined scores, whichever backends produced them: the
child-safety rule (a minor together with sexual content) blocks when the ``minor`` signal, which only a CLIP
backend can see, and a sexual score (from any backend: CLIP, NudeNet, open_nsfw, CompVis) both reach
``output.conjunction_threshold``. A locked conjunction's block is withheld under every preset.

Example:
    >>> from safeguard.policy import load_policy
    >>> from safeguard.config import resolve_settings
    >>> from safeguard.verdict import Verdict
    >>> p, s = load_policy(), resolve_settings().output
    >>> v = Verdict.from_findings([], {"minor": 0.9, "sexual": 0.7}, policy_id=p.id, policy_version=p.version)
    >>> [f.category for f in apply_image_conjunctions(p, s, [v])[0].findings]
    ['child_sexual_exploitation']
"""

from __future__ import annotations

from collections.abc import Sequence

from safeguard.config import REDACTION_SEVERITY, OutputSettings
from safeguard.policy import Conjunction, Policy
from safeguard.verdict import STAGE_FAILURE, Action, Finding, Verdict

__all__ = ["apply_image_conjunctions", "redaction_plan"]


def _element_score(policy: Policy, verdict: Verdict, element: str) -> float | None:
    scores = verdict.category_scores
    if element in policy:
        return scores.get(element)
    signal = policy.signal(element)
    found = [scores[k] for k in (signal.id, *signal.include_categories) if k in scores]
    return max(found) if found else None


def _image_conjunctions(policy: Policy) -> list[Conjunction]:
    return [c for c in policy.conjunctions if "image" in policy[c.category].applies_to]


def apply_image_conjunctions(policy: Policy, settings: OutputSettings, verdicts: Sequence[Verdict]) -> list[Verdict]:
    """Add a block finding to each verdict where every part of an image conjunction scored high enough.

    A part that no backend scored (no ``minor`` score without a CLIP backend) cannot fire.
    """
    rules = _image_conjunctions(policy)
    if not rules:
        return list(verdicts)
    threshold = settings.conjunction_threshold
    out = []
    for verdict in verdicts:
        findings = []
        for rule in rules:
            parts = {element: _element_score(policy, verdict, element) for element in rule.all_of}
            if all(score is not None and score >= threshold for score in parts.values()):
                detail = " + ".join(f"{name} {score:.3f}" for name, score in parts.items())
                findings.append(
                    Finding(
                        rule.category,
                        min(s for s in parts.values() if s is not None),
                        threshold,
                        "image",
                        Action.BLOCK,
                        f"conjunction:{rule.id}",
                        detail,
                        locked=rule.locked,
                    )
                )
        if findings:
            extra = Verdict.from_findings(
                findings, {}, policy_id=verdict.policy_id, policy_version=verdict.policy_version, stages=("output",)
            )
            verdict = Verdict.combine([verdict, extra])
        out.append(verdict)
    return out


def redaction_plan(verdict: Verdict, settings: OutputSettings) -> tuple[str, tuple[tuple[int, int, int, int], ...]]:
    """How to redact one blocked image: the method and, for ``pixelate``, the regions (empty: whole image).

    The method is the most severe of the per-category redactions (``output.category_redaction``) of the
    blocking categories, falling back to ``output.redaction``. A locked block or a failed stage is withheld.
    Regions are used only when every blocking finding came with boxes; otherwise the whole image is covered.

    Example:
        >>> from safeguard.config import resolve_settings
        >>> f = Finding("violence", 0.9, 0.5, "image", Action.BLOCK, "clip")
        >>> v = Verdict.from_findings([f], {"violence": 0.9}, policy_id="p", policy_version="1")
        >>> settings = resolve_settings(config={"output": {"category_redaction": {"violence": "pixelate"}}})
        >>> redaction_plan(v, settings.output)
        ('pixelate', ())
    """
    blocking = [f for f in verdict.findings if f.action is Action.BLOCK]
    if verdict.locked or any(f.category == STAGE_FAILURE for f in blocking):
        return "withhold", ()
    methods = [settings.category_redaction.get(f.category, settings.redaction) for f in blocking]
    method = max(methods or [settings.redaction], key=_severity)
    regions: tuple[tuple[int, int, int, int], ...] = ()
    if method == "pixelate" and blocking and all(f.regions for f in blocking):
        regions = tuple(r for f in blocking for r in f.regions)
    return method, regions


def _severity(method: str) -> int:
    return REDACTION_SEVERITY.index(method)
