"""The Guard: a policy and its settings turned into stages, with fail-closed execution.

Every entry point (``protect``, ``check_prompt(s)``, ``check_images``, the CLI) goes through a Guard, so a
prompt or image gets the same verdict whichever way it arrives.

Example:
    >>> from safeguard.guard import Guard
    >>> guard = Guard.create(preset="balanced")
    >>> guard.check_prompts(["a watercolor painting of a lighthouse at dawn"])[0].action.value
    'allow'
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from safeguard.config import Settings, resolve_settings
from safeguard.errors import ConfigError, ImageBlocked, InputError
from safeguard.policy import DEFAULT_POLICY, Policy, load_policy
from safeguard.redact import redact
from safeguard.stages.base import ImageStage, PromptStage, SteeringStage
from safeguard.stages.combine import apply_image_conjunctions, redaction_plan
from safeguard.stages.encoder import EncoderPromptStage
from safeguard.stages.image import build_image_stages
from safeguard.stages.prompt import build_prompt_stages
from safeguard.steering.stage import build_steering_stage
from safeguard.verdict import STAGE_FAILURE, Action, Finding, Verdict

__all__ = ["DEADLINE_CHUNK", "Guard", "StageTimeout"]

#: Prompts checked per stage call: the prompt deadline applies to each chunk of this many prompts.
DEADLINE_CHUNK = 256


class Guard:
    """Runs the enabled stages of a policy under resolved settings.

    Stages that raise, return the wrong number of verdicts or non-finite scores produce a block verdict
    naming the failed stage: a Guard never lets content through because a checker broke.
    """

    def __init__(self, policy: Policy, settings: Settings) -> None:
        self.policy = policy
        self.settings = settings
        _refuse_replacing_a_locked_image_model(policy, settings)
        self.prompt_stages: tuple[PromptStage, ...] = build_prompt_stages(policy, settings)
        self.steering_stage: SteeringStage | None = build_steering_stage(policy, settings)
        self.image_stages: tuple[ImageStage, ...]
        self.skipped_backends: tuple[str, ...]
        self.image_stages, self.skipped_backends = build_image_stages(policy, settings.output)
        #: Scores with the protected pipeline's own text encoder, when the policy has a calibration for it.
        self.encoder_stage: EncoderPromptStage | None = None

    @classmethod
    def create(
        cls,
        policy: Policy | str | Path = DEFAULT_POLICY,
        preset: str | Path | None = None,
        config: str | Path | dict[str, Any] | None = None,
        **overrides: Any,
    ) -> Guard:
        """Load ``policy``, resolve the settings layers and build the stages."""
        policy = load_policy(policy)
        settings = resolve_settings(
            preset, config, policy_categories=tuple(c.id for c in policy.categories), **overrides
        )
        return cls(policy, settings)

    # -- prompts ---------------------------------------------------------------------------------------
    def check_prompts(self, prompts: Sequence[str]) -> list[Verdict]:
        """One verdict per prompt. The locked rules run even when the prompt stage is off.

        Raises:
            InputError: a prompt is not a string, is empty or longer than ``prompt.max_chars``.
        """
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise InputError(f"prompts must be a list of strings, got {type(prompts).__name__}")
        limit = self.settings.prompt.max_chars
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise InputError(f"prompt {i} must be a string, got {type(prompt).__name__}")
            if not prompt.strip():
                raise InputError(f"prompt {i} is empty")
            if len(prompt) > limit:
                raise InputError(f"prompt {i} has {len(prompt)} characters; the limit is {limit} (prompt.max_chars)")
        if not prompts:
            return []
        verdicts: list[Verdict] = []
        for start in range(0, len(prompts), DEADLINE_CHUNK):
            chunk = list(prompts[start : start + DEADLINE_CHUNK])
            per_stage = [
                self._run(
                    stage, lambda stage=stage, chunk=chunk: stage.check(chunk), len(chunk), "prompt", self._deadline
                )
                for stage in self.prompt_stages
            ]
            verdicts += [self._steer_or_block(Verdict.combine(group)) for group in zip(*per_stage, strict=True)]
        return verdicts

    @property
    def _deadline(self) -> float | None:
        return self.settings.prompt.deadline_s

    def _steer_or_block(self, verdict: Verdict) -> Verdict:
        """A steer finding that no steering stage acts on becomes a block: a flagged prompt is never left as is."""
        steerable = self.steering_stage.categories if self.steering_stage is not None else {}
        unsteered = [f for f in verdict.findings if f.action is Action.STEER and f.category not in steerable]
        if not unsteered:
            return verdict
        why = "steering is off under this preset" if self.steering_stage is None else "steering has no concepts"
        blocks = [
            Finding(
                f.category,
                f.score,
                f.threshold,
                f.stage,
                Action.BLOCK,
                "steer-band",
                f"in the steer band ({f.source}); {why} for {f.category}, so the band is blocked",
            )
            for f in unsteered
        ]
        return Verdict.combine([verdict, Verdict.for_stage(blocks, {}, self.policy, "prompt")])

    def attach_pipeline(self, pipeline: Any) -> None:
        """Add the pipeline's own text encoder to the prompt stages, if the policy has a calibration for it.

        Example:
            >>> from safeguard.testing import tiny
            >>> guard = Guard.create(preset="balanced")
            >>> guard.attach_pipeline(tiny.sd_pipeline())  # a random encoder: no calibration matches
            >>> guard.encoder_stage is None
            True
        """
        if not self.settings.prompt.enabled or self.encoder_stage is not None:
            return
        self.encoder_stage = EncoderPromptStage.for_pipeline(pipeline, self.policy)
        if self.encoder_stage is not None:
            self.prompt_stages = (*self.prompt_stages, self.encoder_stage)

    def check_prompt_embeds(
        self, prompt_embeds: torch.Tensor, pooled_prompt_embeds: torch.Tensor | None = None
    ) -> list[Verdict]:
        """One verdict per row of ``prompt_embeds``: the encoder stage's, or allow when there is none."""
        count = prompt_embeds.shape[0]
        stage = self.encoder_stage
        if stage is None:
            return [Verdict.allow(self.policy.id, self.policy.version) for _ in range(count)]
        verdicts = self._run(
            stage, lambda: stage.check_embeds(prompt_embeds, pooled_prompt_embeds), count, "prompt", self._deadline
        )
        return [self._steer_or_block(v) for v in verdicts]

    # -- images ----------------------------------------------------------------------------------------
    def check_images(self, images: torch.Tensor) -> list[Verdict]:
        """One verdict per image of a ``(B, 3, H, W)`` tensor in ``[0, 1]``.

        Raises:
            InputError: wrong shape or dtype.
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InputError(f"images must be a (B, 3, H, W) tensor, got {shape}")
        if not images.is_floating_point():
            raise InputError(f"images must be a float tensor in [0, 1], got dtype {images.dtype}")
        count = images.shape[0]
        verdicts = [Verdict.allow(self.policy.id, self.policy.version, ("output",)) for _ in range(count)]
        for stage in self.image_stages:
            found = self._run(stage, lambda stage=stage: stage.check(images), count, "output")
            verdicts = [Verdict.combine(pair) for pair in zip(verdicts, found, strict=True)]
        # Conjunctions (a minor with sexual content) fire on the scores of all backends together.
        return apply_image_conjunctions(self.policy, self.settings.output, verdicts) if self.image_stages else verdicts

    def apply_redaction(self, images: torch.Tensor, verdicts: Sequence[Verdict]) -> tuple[torch.Tensor, list[int]]:
        """Redact the blocked images of a ``[0, 1]`` batch; return the new batch and the withheld indices.

        A block from a locked rule or a failed stage is always withheld, whatever the preset says.

        Raises:
            ImageBlocked: when the preset's redaction is ``raise`` and an image is blocked.
        """
        method = self.settings.output.redaction
        blocked = [i for i, v in enumerate(verdicts) if v.blocked]
        if not blocked:
            return images, []
        if method == "raise":
            combined = Verdict.combine(verdicts[i] for i in blocked)
            raise ImageBlocked(f"{len(blocked)} image(s) blocked: {combined}", combined, tuple(verdicts))
        # Per image: the preset's method or a per-category one (output.category_redaction), detector boxes
        # for pixelate when every blocking finding has them.
        plans = {i: redaction_plan(verdicts[i], self.settings.output) for i in blocked}
        withheld = [i for i in blocked if plans[i][0] == "withhold" or _must_withhold(verdicts[i])]
        redacted = images.clone()
        for i in blocked:
            if i in withheld:
                redacted[i : i + 1] = redact(images[i : i + 1], "withhold")
            elif plans[i][0] != "flag":
                redacted[i : i + 1] = redact(images[i : i + 1], plans[i][0], plans[i][1])
        return redacted, withheld

    def to(self, device: torch.device | str) -> Guard:
        """Move the image stages to ``device`` (the pipeline's)."""
        self.image_stages = tuple(stage.to(device) for stage in self.image_stages)
        return self

    # -- fail closed -----------------------------------------------------------------------------------
    def _run(
        self,
        stage: Any,
        call: Callable[[], list[Verdict]],
        count: int,
        stage_kind: str,
        deadline: float | None = None,
    ) -> list[Verdict]:
        try:
            verdicts = call() if deadline is None else _within(deadline, call, stage.name)
            if len(verdicts) != count:
                raise RuntimeError(f"returned {len(verdicts)} verdicts for {count} inputs")
            for verdict in verdicts:
                bad = [k for k, v in verdict.category_scores.items() if not math.isfinite(v)]
                bad += [f.category for f in verdict.findings if not math.isfinite(f.score)]
                if bad:
                    raise RuntimeError(f"returned non-finite scores for {sorted(set(bad))}")
                # Combining recomputes the action from the findings, so a block without findings would
                # silently become an allow: a verdict must say why it decided what it decided.
                expected = max((f.action for f in verdict.findings), key=lambda a: a.severity, default=Action.ALLOW)
                if verdict.action is not expected:
                    raise RuntimeError(f"returned a {verdict.action.value} verdict whose findings say {expected.value}")
            return verdicts
        except InputError:
            raise
        except Exception as err:
            failed = Verdict.stage_failure(self.policy, stage_kind, stage.name, f"{type(err).__name__}: {err}")
            return [failed] * count


def _refuse_replacing_a_locked_image_model(policy: Policy, settings: Settings) -> None:
    """Where a preset locks its backends, weights given for the policy's own image model may not replace it.

    Weights for a backend the policy names no model for add a checker, which is stricter; weights that take
    the place of the policy's own model change what every image score means, which no lock can bound.
    """
    model = policy.image_model
    if "output.backends" not in settings.locks or model is None:
        return
    given = {"clip": settings.output.clip.weights, "openclip": settings.output.openclip.weights}.get(model.backend)
    if given is not None:
        raise ConfigError(
            f"preset {settings.preset!r} locks output.backends, and policy {policy.id!r} names its own "
            f"{model.backend} image model ({model.path}); image_model= or output.{model.backend}.weights would "
            "replace it. Give other weights in a policy or preset of your own"
        )


class StageTimeout(RuntimeError):
    """A stage ran past its deadline; the Guard turns this into a ``stage_failure`` block."""


def _within(deadline: float, call: Callable[[], list[Verdict]], name: str) -> list[Verdict]:
    """Run ``call`` in a worker thread and wait at most ``deadline`` seconds for it.

    Python cannot stop a thread, so a stage that hangs keeps its (daemon) worker thread until it returns;
    the caller gets its block at the deadline all the same.
    """
    result: list[Any] = []

    def work() -> None:
        try:
            result.append((True, call()))
        except BaseException as err:  # handed to the caller's thread, which decides
            result.append((False, err))

    worker = threading.Thread(target=work, name=f"safeguard-{name}", daemon=True)
    worker.start()
    worker.join(deadline)
    if not result:
        raise StageTimeout(f"did not finish within its deadline of {deadline:g} s (prompt.deadline_s)")
    ok, value = result[0]
    if not ok:
        raise value
    return value


def _must_withhold(verdict: Verdict) -> bool:
    return verdict.locked or any(f.category == STAGE_FAILURE for f in verdict.findings)
