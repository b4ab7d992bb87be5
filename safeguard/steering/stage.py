"""The steering stage: embedding projection and safety guidance for prompts in the steering band.

Steering is adaptive. A prompt is steered, for a category, when

- the prompt stage gave it a finding for that category with action ``steer`` (or ``block``, which only
  reaches this stage from rules that do not stop the call), or
- the prompt stage is off, or the call passed ``prompt_embeds`` instead of text: the stage's own concept
  score for the category (:mod:`safeguard.steering.concepts`, a [0, 1] scale computed with the pipeline's
  own text encoder) reaches the lower bound of the category's steering band, the preset's prompt ``steer``
  threshold (its ``block`` threshold where it has no steer band). Block-level scores are steered too.

A call with no steered prompt installs nothing and does no extra work, so its output is bit-identical to the
unprotected pipeline's. A steered call gets two forward hooks on the denoiser, removed when the call ends,
also when it raises: they swap in projected embeddings for the steered prompts' rows and, when the preset
asks for it, add safety guidance (:mod:`safeguard.steering.guidance`). No component is modified. What the
hooks changed is recorded (:class:`SteeringRecord`): each steered image's verdict names the categories, the
methods that ran and the strength, and a prompt meant to be steered that nothing steered is blocked.

Example:
    >>> import safeguard
    >>> from safeguard.testing import tiny
    >>> guarded = safeguard.protect(tiny.sd_pipeline(), preset="research", output=False, steering="weak")
    >>> guarded.guard.steering_stage.preset.name
    'weak'
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from safeguard.config import Settings
from safeguard.errors import InputError
from safeguard.policy import Category, Policy
from safeguard.stages.base import SteeringStage
from safeguard.steering.adapters import Encoded, FamilyAdapter, adapter_for
from safeguard.steering.concepts import concept_encoding, concept_scores, empty_encoding, pooled_basis, token_basis
from safeguard.steering.guidance import CallPlan, DenoiserHooks
from safeguard.steering.presets import SteeringPreset, load_steering_preset
from safeguard.steering.projection import merge_bases, project, steering_phrases
from safeguard.verdict import Action, Finding, Verdict

__all__ = ["ConceptSteeringStage", "SteerReason", "SteeringRecord", "build_steering_stage"]


@dataclass(frozen=True)
class SteerReason:
    """Why a prompt is steered for a category: the score that reached the steer band, its threshold, and where
    the score came from (``"prompt/keyword"``, ``"prompt/semantic"``, ... or ``"steering/concept-score"``)."""

    score: float
    threshold: float
    basis: str


class SteeringRecord:
    """What steering did in one call, per prompt; read it once the call has returned.

    Only what changed a generation counts: a projection that left every token as it was, or hooks that never
    acted (a pipeline that runs its denoiser in a thread of its own), steered nothing.
    """

    def __init__(
        self, policy: Policy, strength: str, reasons: list[dict[str, SteerReason]], hooks: DenoiserHooks
    ) -> None:
        self.policy = policy
        self.strength = strength
        self.reasons = reasons
        self.hooks = hooks

    def verdicts(self) -> list[Verdict]:
        """Per prompt, the verdict to join to each of its images.

        A steered prompt gets one ``steer`` finding per category (stage ``steering``, source the methods that
        ran: ``projection``, ``guidance`` or ``projection+guidance``). A prompt meant to be steered that nothing
        steered gets a ``stage_failure`` block, so its images are withheld: a prompt in the steer band is never
        returned as if it had been steered. A prompt left alone gets an empty allow.
        """
        policy = self.policy
        out = []
        for reasons, methods in zip(self.reasons, self.hooks.methods(), strict=True):
            if not reasons:
                out.append(Verdict.allow(policy.id, policy.version))
                continue
            why = "; ".join(
                f"{c}: {r.basis} score {r.score:.3g} >= threshold {r.threshold:.3g}" for c, r in sorted(reasons.items())
            )
            if not methods:
                detail = f"in the steer band ({why}), but {self.strength} steering changed nothing in its generation"
                out.append(Verdict.stage_failure(policy, "steering", "steering", detail))
                continue
            findings = [self._finding(category, r, methods) for category, r in sorted(reasons.items())]
            out.append(Verdict.for_stage(findings, {}, policy, "steering"))
        return out

    def _finding(self, category: str, reason: SteerReason, methods: tuple[str, ...]) -> Finding:
        detail = (
            f"{self.strength} steering ({' and '.join(methods)}) of {category}: {reason.basis} score "
            f"{reason.score:.3g} >= threshold {reason.threshold:.3g}"
        )
        source = "+".join(methods)
        return Finding(category, reason.score, reason.threshold, "steering", Action.STEER, source, detail)


class ConceptSteeringStage:
    """Projection and safety guidance for the policy's categories, under one steering preset.

    Concept encodings are made with each pipeline's own text encoders on first use and cached per text
    encoder (:mod:`safeguard.steering.concepts`), shared with every other stage that uses the same encoder.
    """

    name = "steering"

    def __init__(self, policy: Policy, settings: Settings, preset: SteeringPreset | None = None) -> None:
        self.policy = policy
        self.settings = settings
        self.preset = preset or load_steering_preset(settings.steering.strength)
        self.categories: dict[str, Category] = {
            c.id: c for c in policy.categories if c.enforced and not c.locked and steering_phrases(c)
        }

    # -- the stage interface ---------------------------------------------------------------------------
    def apply(
        self,
        pipeline: Any,
        call_kwargs: dict[str, Any],
        prompt_verdicts: Sequence[Verdict],
        arguments: Mapping[str, Any] | None = None,
    ) -> AbstractContextManager[SteeringRecord | None]:
        """Steer this call's flagged prompts; a call with none gets a no-op context (it yields None) and no hook.

        The context yields a :class:`SteeringRecord`, whose :meth:`~SteeringRecord.verdicts` say after the call
        what steering did to each prompt's images. ``arguments`` are all of the call's arguments by name
        (positional ones included); without them the stage reads ``call_kwargs``.
        """
        adapter = adapter_for(type(pipeline))
        reasons = self._reasons(pipeline, prompt_verdicts, arguments if arguments is not None else call_kwargs)
        if not any(reasons):
            return nullcontext()
        return self._steered(pipeline, adapter, reasons)

    def categories_to_steer(
        self, pipeline: Any, prompt_verdicts: Sequence[Verdict], arguments: Mapping[str, Any]
    ) -> list[tuple[str, ...]]:
        """Per prompt, the categories to steer (empty for a prompt left alone)."""
        return [tuple(sorted(r)) for r in self._reasons(pipeline, prompt_verdicts, arguments)]

    def _reasons(
        self, pipeline: Any, prompt_verdicts: Sequence[Verdict], arguments: Mapping[str, Any]
    ) -> list[dict[str, SteerReason]]:
        """Per prompt, each category to steer with the score and threshold that put it in the steer band."""
        chosen: list[dict[str, SteerReason]] = [{} for _ in prompt_verdicts]
        for i, verdict in enumerate(prompt_verdicts):
            for finding in verdict.findings:
                if finding.action in (Action.STEER, Action.BLOCK) and finding.category in self.categories:
                    known = chosen[i].get(finding.category)
                    if known is None or finding.score > known.score:
                        basis = f"{finding.stage}/{finding.source}"
                        chosen[i][finding.category] = SteerReason(finding.score, finding.threshold, basis)
        prompt = arguments.get("prompt")
        if self.categories and (prompt is None or not self.settings.prompt.enabled):
            scores = self.concept_scores(pipeline, prompt, arguments)
            for category, values in scores.items():
                steer, block = self.settings.prompt.thresholds.for_category(category)
                lower = steer if steer is not None else block
                for i, value in enumerate(values.tolist()[: len(chosen)]):
                    if value >= lower and category not in chosen[i]:
                        chosen[i][category] = SteerReason(value, lower, "steering/concept-score")
        return chosen

    def concept_scores(
        self, pipeline: Any, prompt: str | list[str] | None, arguments: Mapping[str, Any] | None = None
    ) -> dict[str, torch.Tensor]:
        """The stage's own [0, 1] concept score per category for each prompt (or ``prompt_embeds`` row).

        Example:
            >>> import safeguard
            >>> from safeguard.testing import tiny
            >>> pipe = tiny.sd_pipeline()
            >>> stage = safeguard.protect(pipe, preset="research", steering=True).guard.steering_stage
            >>> scores = stage.concept_scores(pipe, ["a lighthouse", "a gory battlefield"])
            >>> scores["gore"].shape, all(0.0 <= float(s) <= 1.0 for s in scores["gore"])
            (torch.Size([2]), True)
        """
        adapter = adapter_for(type(pipeline))
        if prompt is not None:
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            summaries = adapter.encode(pipeline, texts).summary()
        else:
            arguments = arguments or {}
            embeds = arguments.get("prompt_embeds")
            if embeds is None:
                raise InputError("give a prompt or prompt_embeds")
            summaries = Encoded(embeds, arguments.get("pooled_prompt_embeds")).summary()
        return concept_scores(pipeline, self.categories.values(), summaries)

    # -- one steered call ------------------------------------------------------------------------------
    @contextmanager
    def _steered(
        self, pipe: Any, adapter: FamilyAdapter, reasons: list[dict[str, SteerReason]]
    ) -> Iterator[SteeringRecord]:
        preset = self.preset
        steer = [tuple(sorted(r)) for r in reasons]
        params = preset.projection

        def project_fn(own: Encoded, length: int) -> list[Encoded | None]:
            empty = empty_encoding(pipe, length)
            out: list[Encoded | None] = []
            for j, categories in enumerate(steer):
                if not categories:
                    out.append(None)
                    continue
                basis = merge_bases(
                    [token_basis(pipe, self.categories[c], length, params.energy, params.max_rank) for c in categories]
                )
                tokens = project(
                    own.tokens[j], basis.to(own.tokens.device), empty.tokens[0], params.alpha, params.token_threshold
                )
                pooled = None
                if own.pooled is not None and empty.pooled is not None:
                    pooled_bases = [
                        pooled_basis(pipe, self.categories[c], params.energy, params.max_rank) for c in categories
                    ]
                    pooled = project(
                        own.pooled[j : j + 1],
                        merge_bases(pooled_bases).to(own.pooled.device),
                        empty.pooled,
                        params.alpha,
                        0.0,
                    )
                out.append(Encoded(tokens.unsqueeze(0), pooled))
            return out

        def concept_fn(length: int) -> list[Encoded | None]:
            # SLD's safety concept is one text listing the concepts; one per set of categories a prompt hits.
            return [concept_encoding(pipe, [self.categories[n] for n in c], length) if c else None for c in steer]

        plan = CallPlan(
            flagged=[bool(c) for c in steer],
            project_fn=project_fn,
            concept_fn=concept_fn,
            empty_fn=lambda length: empty_encoding(pipe, length),
            preset=preset,
        )
        hooks = DenoiserHooks(pipe, adapter, plan)
        try:
            hooks.install()
            yield SteeringRecord(self.policy, preset.name, reasons, hooks)
        finally:
            hooks.remove()


def build_steering_stage(policy: Policy, settings: Settings) -> SteeringStage | None:
    """The steering stage for these settings, or None when steering is off.

    Example:
        >>> from safeguard.config import resolve_settings
        >>> from safeguard.policy import load_policy
        >>> build_steering_stage(load_policy(), resolve_settings(preset="strict")) is None
        True
        >>> build_steering_stage(load_policy(), resolve_settings(preset="research", steering="max")).preset.name
        'max'
    """
    if not settings.steering.enabled:
        return None
    return ConceptSteeringStage(policy, settings)
