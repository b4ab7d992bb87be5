"""``protect(pipe)``: a pipeline wrapper that checks prompts before denoising and images after decoding.

The wrapper is called exactly like the pipeline and passes every other attribute through. For the length of
one call it intercepts the pipeline's ``image_processor.postprocess`` to check the decoded images on their
own device, before they are converted to the requested ``output_type``; the interception is removed when the
call ends, also when it raises, so no component is left changed.

Example:
    >>> import safeguard
    >>> from safeguard.testing import tiny
    >>> guarded = safeguard.protect(tiny.sd_pipeline())
    >>> out = guarded("a lighthouse at dawn", num_inference_steps=2, output_type="np")
    >>> out.images.shape[0], out.verdicts[0].action.value
    (1, 'allow')
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import BaseOutput

from safeguard.errors import ConfigError, InputError, PromptBlocked
from safeguard.guard import Guard
from safeguard.pipelines import PipelineSpec, spec_for
from safeguard.policy import DEFAULT_POLICY, Policy
from safeguard.stages.combine import redaction_plan
from safeguard.verdict import Verdict

__all__ = ["ProtectedPipeline", "ProtectedPipelineOutput", "protect", "unprotect"]


@dataclass
class ProtectedPipelineOutput(BaseOutput):
    """What a protected pipeline returns.

    Attributes:
        images: as the pipeline would return them (PIL list, numpy array or tensor), blocked ones redacted per
            preset; a withheld image is ``None`` in a PIL list and all zeros in an array or tensor. Empty when
            a prompt was blocked and ``on_block`` is ``return``.
        verdicts: one per image, in image order: the image's own verdict combined with its prompt's.
        prompt_verdicts: one per prompt.
    """

    images: Any
    verdicts: list[Verdict]
    prompt_verdicts: list[Verdict]


class ProtectedPipeline:
    """A diffusers pipeline with safeguard's stages around each call. Create it with :func:`protect`."""

    def __init__(self, pipeline: Any, guard: Guard, spec: PipelineSpec) -> None:
        object.__setattr__(self, "_pipeline", pipeline)
        object.__setattr__(self, "_guard", guard)
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_signature", inspect.signature(pipeline.__call__))

    # -- attribute pass-through ------------------------------------------------------------------------
    @property
    def pipeline(self) -> Any:
        """The wrapped pipeline."""
        return self._pipeline

    @property
    def guard(self) -> Guard:
        """The policy, settings and stages in force."""
        return self._guard

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._pipeline, name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(dir(self._pipeline)))

    def __repr__(self) -> str:
        settings = self._guard.settings
        return (
            f"ProtectedPipeline({type(self._pipeline).__name__}, policy={self._guard.policy.id}@"
            f"{self._guard.policy.version}, preset={settings.preset}, stages={list(settings.stages)})"
        )

    def to(self, *args: Any, **kwargs: Any) -> ProtectedPipeline:
        """Move the pipeline (``pipe.to(...)``) and the image checker with it; returns the wrapper."""
        self._pipeline.to(*args, **kwargs)
        self._guard.to(self._pipeline.device)
        return self

    # -- the call --------------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        bound = self._signature.bind(*args, **kwargs)
        arguments = {**_defaults(self._signature), **bound.arguments}
        guard = self._guard

        prompt_verdicts = self._check_prompts(arguments)
        blocked = [v for v in prompt_verdicts if v.blocked]
        if blocked:
            combined = Verdict.combine(blocked)
            if combined.locked or guard.settings.on_block == "raise":
                raise PromptBlocked(f"prompt blocked: {combined}", combined, tuple(prompt_verdicts))
            return self._finish([], [], prompt_verdicts, arguments.get("return_dict", True))

        output_type = arguments.get("output_type", "pil")
        if guard.image_stages and output_type == "latent":
            raise ConfigError(
                "output_type='latent' skips decoding, so the output stage cannot check the images; "
                "ask for 'pil', 'np' or 'pt', or turn the output stage off where the preset allows it"
            )

        interception = _PostprocessInterception(guard)
        steering = guard.steering_stage
        # arguments names the positional ones too: steering reads the prompt text wherever it was passed.
        steered = steering.apply(self._pipeline, kwargs, prompt_verdicts, arguments) if steering else nullcontext()
        with steered, interception.installed(self._pipeline.image_processor):
            result = self._pipeline(*args, **kwargs)

        return_dict = arguments.get("return_dict", True)
        images = result.images if return_dict else result[0]
        count = len(images)
        per_prompt = max(1, count // max(1, len(prompt_verdicts)))
        image_verdicts = interception.verdicts or [
            Verdict.allow(guard.policy.id, guard.policy.version) for _ in range(count)
        ]
        verdicts = [
            Verdict.combine([image_verdicts[i], prompt_verdicts[min(i // per_prompt, len(prompt_verdicts) - 1)]])
            for i in range(count)
        ]
        if interception.withheld and isinstance(images, list):
            images = [None if i in interception.withheld else image for i, image in enumerate(images)]
        return self._finish(images, verdicts, prompt_verdicts, return_dict)

    def _check_prompts(self, arguments: dict[str, Any]) -> list[Verdict]:
        guard = self._guard
        prompt = arguments.get("prompt")
        if prompt is None:
            embeds = arguments.get("prompt_embeds")
            if embeds is None:
                raise InputError("give a prompt or prompt_embeds")
            if not guard.settings.accept_prompt_embeds:
                raise ConfigError(
                    f"preset {guard.settings.preset!r} requires prompt text (accept_prompt_embeds is false); "
                    "prompt_embeds alone cannot be checked by the prompt stage"
                )
            return guard.check_prompt_embeds(embeds, arguments.get("pooled_prompt_embeds"))
        prompts = _as_list(prompt, "prompt")
        verdict_sets = [guard.check_prompts(prompts)]
        for name in self._spec.prompt_args[1:]:
            extra = arguments.get(name)
            if extra is None:
                continue
            extra = _as_list(extra, name)
            if len(extra) == 1 and len(prompts) > 1:
                extra = extra * len(prompts)
            if len(extra) != len(prompts):
                raise InputError(f"{name} has {len(extra)} prompts but prompt has {len(prompts)}")
            verdict_sets.append(guard.check_prompts(extra))
        return [Verdict.combine(group) for group in zip(*verdict_sets, strict=True)]

    @staticmethod
    def _finish(images: Any, verdicts: list[Verdict], prompt_verdicts: list[Verdict], return_dict: bool) -> Any:
        output = ProtectedPipelineOutput(images=images, verdicts=verdicts, prompt_verdicts=prompt_verdicts)
        return output if return_dict else (images, verdicts, prompt_verdicts)


class _PostprocessInterception:
    """Checks and redacts decoded images inside ``image_processor.postprocess`` for one call."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.verdicts: list[Verdict] = []
        self.withheld: set[int] = set()
        self._seen: dict[tuple[int, tuple[int, ...]], tuple[list[Verdict], list[int], torch.Tensor]] = {}

    def installed(self, processor: Any) -> _Installed:
        return _Installed(self, processor)

    def process(self, original: Any, processor: Any, image: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        output_type = kwargs.get("output_type", args[0] if args else "pil")
        if output_type == "latent" or not self.guard.image_stages:
            return original(image, *args, **kwargs)
        denormalize = kwargs.get("do_denormalize", args[1] if len(args) > 1 else None)
        if denormalize is None:
            denormalize = [bool(processor.config.do_normalize)] * image.shape[0]
        # The same decoded batch may be post-processed twice (diffusers' own checker does); check it once.
        key = (image.data_ptr(), tuple(image.shape))
        if key not in self._seen:
            unit = torch.stack(
                [(x / 2 + 0.5).clamp(0, 1) if d else x.clamp(0, 1) for x, d in zip(image, denormalize, strict=True)]
            )
            verdicts = self.guard.check_images(unit)
            redacted, withheld = self.guard.apply_redaction(unit, verdicts)
            changed = image.clone()
            for i, verdict in enumerate(verdicts):
                flag_only = redaction_plan(verdict, self.guard.settings.output)[0] == "flag"
                if i in withheld or (verdict.blocked and not flag_only):
                    changed[i] = redacted[i] * 2 - 1 if denormalize[i] else redacted[i]
            self._seen[key] = (verdicts, withheld, changed)
        self.verdicts, withheld, changed = self._seen[key]
        self.withheld = set(withheld)
        return original(changed, *args, **kwargs)


class _Installed:
    def __init__(self, interception: _PostprocessInterception, processor: Any) -> None:
        self.interception = interception
        self.processor = processor
        self.previous: Any = None

    def __enter__(self) -> None:
        processor = self.processor
        self.previous = processor.__dict__.get("postprocess")
        original = processor.postprocess

        def postprocess(image: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            return self.interception.process(original, processor, image, *args, **kwargs)

        processor.postprocess = postprocess

    def __exit__(self, *exc: object) -> None:
        if self.previous is None:
            del self.processor.postprocess
        else:
            self.processor.postprocess = self.previous


def _defaults(signature: inspect.Signature) -> dict[str, Any]:
    return {name: p.default for name, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}


def _as_list(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence):
        return list(value)
    raise InputError(f"{name} must be a string or a list of strings, got {type(value).__name__}")


def protect(
    pipe: Any,
    policy: Policy | str | Path = DEFAULT_POLICY,
    preset: str | Path | None = None,
    *,
    config: str | Path | dict[str, Any] | None = None,
    **overrides: Any,
) -> ProtectedPipeline:
    """Wrap a diffusers pipeline so that every call is checked against ``policy``.

    Args:
        pipe: a StableDiffusion, StableDiffusionXL, StableDiffusion3 or Flux pipeline (text-to-image or
            img2img).
        policy: a :class:`Policy`, a bundled policy id or a path to a policy YAML file.
        preset: ``"balanced"`` (default), ``"strict"``, ``"research"`` or a path to a preset file.
        config: a user YAML file (or mapping) layered over the preset.
        **overrides: stage toggles ``prompt``, ``steering``, ``output`` and ``on_block``/``redaction``,
            where the preset allows them; ``image_model=`` gives the CLIP output checker its weights (a folder,
            a hub id already in the local cache, or a loaded ``CLIPModel``).

    Raises:
        UnsupportedPipelineError: the pipeline class is not supported.
        ConfigError: bad policy, preset, config or override.

    Example:
        >>> import safeguard
        >>> from safeguard.testing import tiny
        >>> guarded = safeguard.protect(tiny.flux_pipeline(), preset="research", output=False)
        >>> safeguard.unprotect(guarded).__class__.__name__
        'FluxPipeline'
    """
    if isinstance(pipe, ProtectedPipeline):
        raise ConfigError("this pipeline is already protected; call unprotect() first to change its settings")
    spec = spec_for(type(pipe))
    guard = Guard.create(policy, preset, config, **overrides)
    guard.to(pipe.device)
    guard.attach_pipeline(pipe)
    return ProtectedPipeline(pipe, guard, spec)


def unprotect(guarded: ProtectedPipeline) -> Any:
    """Return the original pipeline object, unchanged.

    Example:
        >>> import safeguard
        >>> from safeguard.testing import tiny
        >>> pipe = tiny.sd_pipeline()
        >>> safeguard.unprotect(safeguard.protect(pipe)) is pipe
        True
    """
    if not isinstance(guarded, ProtectedPipeline):
        raise TypeError(f"unprotect expects a ProtectedPipeline, got {type(guarded).__name__}")
    return guarded.pipeline
