"""``protect(pipe)``: a pipeline wrapper that checks prompts before denoising and images after decoding.

The wrapper is called exactly like the pipeline and passes every other attribute through. For the length of
one call it intercepts the pipeline's ``image_processor.postprocess`` to check the decoded images on their
own device, before they are converted to the requested ``output_type``; the interception is removed when the
call ends, also when it raises, so no component is left changed. Whatever the call returns must be what an
intercepted ``postprocess`` produced: any other image (a pipeline that decodes itself, a swapped image
processor, an image edited afterwards) is checked on the way out, or withheld with a ``stage_failure``
finding when it cannot be read. Calls that share a denoiser run one at a time (:mod:`safeguard.call_scope`).

A call may toggle stages for itself with one ``safeguard=`` mapping (keys :data:`safeguard.config.CALL_TOGGLES`),
layered over the wrapper's settings exactly like ``protect()``'s keywords, so a preset's locks refuse it with
``ConfigError`` just the same: ``pipe("a lighthouse", safeguard={"output": False})`` under ``research``.

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
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.utils import BaseOutput

from safeguard.call_scope import Call, call_scope, current_call
from safeguard.config import CALL_TOGGLES
from safeguard.disclosure.marking import mark_images
from safeguard.errors import ConfigError, ImageBlocked, InputError, PromptBlocked, UnsupportedPipelineError
from safeguard.guard import Guard
from safeguard.images import to_unit_tensors
from safeguard.pipelines import PipelineFamily, registered_family, registered_pipelines
from safeguard.policy import DEFAULT_POLICY, Policy
from safeguard.stages.combine import redaction_plan
from safeguard.verdict import Action, Finding, Verdict

__all__ = ["ProtectedPipeline", "ProtectedPipelineOutput", "protect", "unprotect"]


@dataclass
class ProtectedPipelineOutput(BaseOutput):
    """What a protected pipeline returns.

    Attributes:
        images: as the pipeline would return them (PIL list, numpy array or tensor), blocked ones redacted per
            preset; a withheld image is ``None`` in a PIL list and all zeros in an array or tensor. With
            ``on_block="return"``, a blocked prompt's images are withheld slots (the pipeline never ran it), and
            the output is empty when every prompt was blocked.
        verdicts: one per image, in image order: the image's own verdict combined with its prompt's and with
            what steering did to it (``steer`` findings from stage ``steering``).
        prompt_verdicts: one per prompt.
        nsfw_content_detected: what diffusers' own ``safety_checker`` said, when the pipeline has one (its
            decision is also a finding in ``verdicts``, and its blacked-out images stay black); ``True`` for a
            blocked prompt's withheld slot.
    """

    images: Any
    verdicts: list[Verdict]
    prompt_verdicts: list[Verdict]
    nsfw_content_detected: list[bool] | None = None


class ProtectedPipeline:
    """A diffusers pipeline with safeguard's stages around each call. Create it with :func:`protect`.

    It is not an instance of the pipeline's class (``isinstance(guarded, StableDiffusionPipeline)`` is False);
    :attr:`pipeline` and :func:`unprotect` give the original object.
    """

    def __init__(self, pipeline: Any, guard: Guard, facts: _Facts, layers: _Layers) -> None:
        object.__setattr__(self, "_pipeline", pipeline)
        object.__setattr__(self, "_guard", guard)
        object.__setattr__(self, "_facts", facts)
        object.__setattr__(self, "_signature", _call_signature(pipeline))
        object.__setattr__(self, "_layers", layers)
        # Guards for the per-call toggle sets seen so far; few distinct sets exist (booleans and names).
        object.__setattr__(self, "_call_guards", {})
        object.__setattr__(self, "_call_guards_lock", threading.Lock())

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
        with self._call_guards_lock:
            self._call_guards.clear()  # rebuilt on the new device when next asked for
        return self

    def _guard_for(self, toggles: Any) -> Guard:
        """The guard for one call: the wrapper's own, or one with the call's ``safeguard=`` toggles layered on."""
        if toggles is None:
            return self._guard
        if not isinstance(toggles, Mapping):
            raise ConfigError(f"safeguard= takes a mapping of stage toggles, got {type(toggles).__name__}")
        # Read once into plain values: the cache key and the guard must come from the same reading, so a mapping
        # or a str subclass that answers differently on a second read cannot file weaker settings under a key.
        toggles = {_plain_key(name): _plain_value(name, value) for name, value in dict(toggles).items()}
        unknown = sorted(set(toggles) - set(CALL_TOGGLES))
        if unknown:
            raise ConfigError(
                f"unknown safeguard= toggle(s) {', '.join(map(repr, unknown))}; known: {', '.join(CALL_TOGGLES)}"
            )
        if not toggles:
            return self._guard
        key = tuple(sorted(toggles.items()))  # plain bools and strs now: equal keys mean equal settings
        with self._call_guards_lock:
            guard = self._call_guards.get(key)
            if guard is None:
                layers = self._layers
                guard = Guard.create(
                    self._guard.policy, layers.preset, layers.config, **{**layers.overrides, **toggles}
                )
                if guard.steering_stage is not None:
                    self._facts.require_steering(self._pipeline)
                guard.to(self._pipeline.device)
                guard.attach_pipeline(self._pipeline)
                self._call_guards[key] = guard
        return guard

    # -- the call --------------------------------------------------------------------------------------
    def __call__(self, *args: Any, safeguard: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        guard = self._guard_for(safeguard)
        bound = self._signature.bind(*args, **kwargs)
        arguments = {**_defaults(self._signature), **bound.arguments}
        return_dict = arguments.get("return_dict", True)

        # Calls that share this denoiser run one at a time (see safeguard.call_scope), prompt check included:
        # the prompt stage may use the pipeline's own text encoder.
        with call_scope(self._facts.denoiser_of(self._pipeline)) as call:
            prompt_verdicts = self._check_prompts(guard, arguments)
            blocked = [v for v in prompt_verdicts if v.blocked]
            if blocked:
                combined = Verdict.combine(blocked)
                if combined.locked or guard.settings.on_block == "raise":
                    raise PromptBlocked(f"prompt blocked: {combined}", combined, tuple(prompt_verdicts))
                if len(blocked) == len(prompt_verdicts):
                    return self._finish([], [], prompt_verdicts, None, return_dict)
            keep = [i for i, v in enumerate(prompt_verdicts) if not v.blocked]
            per_prompt = int(arguments.get("num_images_per_prompt") or 1)
            if len(keep) < len(prompt_verdicts):
                # Blocked prompts never reach the pipeline: generating them and withholding the result would
                # still hand their latents to step callbacks and their pixels to any path that skips the check.
                _keep_only(bound, keep, len(prompt_verdicts), per_prompt)
                args, kwargs = bound.args, bound.kwargs
                arguments = {**_defaults(self._signature), **bound.arguments}
            run_verdicts = [prompt_verdicts[i] for i in keep]

            output_type = arguments.get("output_type", "pil")
            if output_type == "latent" and (guard.image_stages or guard.settings.disclosure.enabled):
                raise ConfigError(
                    "output_type='latent' skips decoding, so the output stage cannot check the images and the "
                    "watermark cannot be added; ask for 'pil', 'np' or 'pt', or turn the output stage and "
                    "disclosure off where the preset allows it"
                )

            check = _OutputCheck(guard, call)
            steering = guard.steering_stage
            # arguments names the positional ones too: steering reads the prompt text wherever it was passed.
            steered = steering.apply(self._pipeline, kwargs, run_verdicts, arguments) if steering else nullcontext()
            with steered as record, check.intercepting(self._pipeline.image_processor):
                result = self._pipeline(*args, **kwargs)

        images = result.images if return_dict else result[0]
        nsfw = getattr(result, "nsfw_content_detected", None) if return_dict else _tuple_item(result, 1)
        owners = _owners(_count(images), len(run_verdicts))
        # What steering did joins each image's verdict; a prompt it was meant to steer but did not is withheld.
        steer_verdicts = record.verdicts() if record is not None else None
        steered_images = None if steer_verdicts is None else [steer_verdicts[o] for o in owners]
        images, image_verdicts = check.returned(images, _as_flags(nsfw, _count(images)), steered_images)
        if guard.settings.disclosure.enabled:
            # After the output check and redaction: the mark goes on exactly what the call returns.
            images, records = mark_images(images, guard.settings.disclosure)
            image_verdicts = [replace(v, disclosure=r) for v, r in zip(image_verdicts, records, strict=True)]
        verdicts = [Verdict.combine([v, run_verdicts[o]]) for v, o in zip(image_verdicts, owners, strict=True)]
        if len(keep) < len(prompt_verdicts):
            images, verdicts, nsfw = _with_blocked_slots(
                images, verdicts, nsfw, owners, keep, prompt_verdicts, per_prompt
            )
        return self._finish(images, verdicts, prompt_verdicts, nsfw, return_dict)

    def _check_prompts(self, guard: Guard, arguments: dict[str, Any]) -> list[Verdict]:
        prompt = arguments.get("prompt")
        if not guard.settings.accept_prompt_embeds:
            _refuse_embeds(arguments, guard.settings.preset)
        if prompt is None:
            embeds = arguments.get("prompt_embeds")
            if embeds is None:
                raise InputError("give a prompt or prompt_embeds")
            if not guard.image_stages:
                # Without text, the locked child-safety rule can only run on the images.
                raise ConfigError(
                    "prompt_embeds without prompt text need an image check: the locked child-safety check on the "
                    "images is the only one such a call gets, and the output stage is off (or none of its "
                    "backends scores a category of this policy)"
                )
            return guard.check_prompt_embeds(embeds, arguments.get("pooled_prompt_embeds"))
        prompts = _as_list(prompt, "prompt")
        verdict_sets = [guard.check_prompts(prompts)]
        for name in self._facts.prompt_args[1:]:
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
    def _finish(
        images: Any, verdicts: list[Verdict], prompt_verdicts: list[Verdict], nsfw: Any, return_dict: bool
    ) -> Any:
        if not return_dict:
            return images, verdicts, prompt_verdicts
        return ProtectedPipelineOutput(
            images=images, verdicts=verdicts, prompt_verdicts=prompt_verdicts, nsfw_content_detected=nsfw
        )


@dataclass
class _Checked:
    """One intercepted ``postprocess`` call: what it returned, a copy of it, and the verdicts of its images."""

    output: Any
    snapshot: list[np.ndarray] | np.ndarray | torch.Tensor
    verdicts: list[Verdict]
    withheld: set[int]


class _OutputCheck:
    """The output stage for one call: inside ``image_processor.postprocess``, and on everything returned.

    Decoded images are checked (and redacted) inside the pipeline's ``postprocess``, on their own device and
    before any conversion. When the call ends, every returned image must be one that an intercepted
    ``postprocess`` produced, unchanged since; any other image (a pipeline that decodes without
    ``postprocess``, a swapped ``image_processor``, an image edited afterwards) is converted back to a tensor
    and checked there, and withheld when it cannot be. Nothing is kept between calls.
    """

    def __init__(self, guard: Guard, call: Call) -> None:
        self.guard = guard
        self.call = call
        self.checked: list[_Checked] = []
        # Decoded batches already checked in this call, with their verdicts: diffusers' own safety checker
        # post-processes the same batch twice, and a batch whose pixels did not change needs no second check.
        self._seen: list[tuple[torch.Tensor, list[bool], list[Verdict]]] = []

    @contextmanager
    def intercepting(self, processor: Any) -> Iterator[None]:
        """Patch ``processor.postprocess`` on the instance for the length of the call."""
        previous = processor.__dict__.get("postprocess")
        original = processor.postprocess

        def postprocess(image: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if current_call() is not self.call:  # another thread's call through the same processor
                return original(image, *args, **kwargs)
            return self._process(original, processor, image, *args, **kwargs)

        processor.postprocess = postprocess
        try:
            yield
        finally:
            if previous is None:
                processor.__dict__.pop("postprocess", None)  # a callback may have removed it already
            else:
                processor.postprocess = previous

    def _process(self, original: Any, processor: Any, image: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        output_type = kwargs.get("output_type", args[0] if args else "pil")
        if output_type == "latent":
            return original(image, *args, **kwargs)
        finite = torch.isfinite(image.flatten(1)).all(dim=1).tolist()
        if not self.guard.image_stages and all(finite):
            return original(image, *args, **kwargs)
        denormalize = kwargs.get("do_denormalize", args[1] if len(args) > 1 else None)
        if denormalize is None:
            denormalize = [bool(processor.config.do_normalize)] * image.shape[0]
        unit = torch.stack(
            [(x / 2 + 0.5).clamp(0, 1) if d else x.clamp(0, 1) for x, d in zip(image, denormalize, strict=True)]
        )
        if self.guard.image_stages:
            verdicts = self._verdicts(unit, finite)
        else:
            # No checker is on, but NaN or inf pixels are no image (diffusers casts them to black or garbage):
            # withheld with a failure, never returned as allowed.
            policy = self.guard.policy
            allow = Verdict.allow(policy.id, policy.version)
            verdicts = [allow if ok else self._failure("decoded image has non-finite values") for ok in finite]
        redacted, withheld = self.guard.apply_redaction(torch.nan_to_num(unit, nan=0.0), verdicts)
        changed = image.clone()
        for i, verdict in enumerate(verdicts):
            flag_only = redaction_plan(verdict, self.guard.settings.output)[0] == "flag"
            if i in withheld or (verdict.blocked and not flag_only):
                changed[i] = redacted[i] * 2 - 1 if denormalize[i] else redacted[i]
        output = original(changed, *args, **kwargs)
        # Only diffusers' own conversion is trusted to return what was checked: a processor subclass or a
        # patched method could change the pixels after the check, so its output is checked again on the way out.
        if _from_diffusers(original):
            self.checked.append(_Checked(output, _snapshot(output), verdicts, set(withheld)))
        return output

    def _verdicts(self, unit: torch.Tensor, finite: list[bool]) -> list[Verdict]:
        """Verdicts of a ``[0, 1]`` batch; ``finite`` says per image whether the decoded values were all finite."""
        for seen, seen_finite, verdicts in self._seen:
            if seen.shape == unit.shape and seen_finite == finite and torch.equal(seen, unit):
                return verdicts
        verdicts = self.guard.check_images(torch.nan_to_num(unit, nan=0.0, posinf=1.0, neginf=0.0))
        verdicts = [
            v if ok else Verdict.combine([v, self._failure("decoded image has non-finite values")])
            for v, ok in zip(verdicts, finite, strict=True)
        ]
        self._seen.append((unit.clone(), finite, verdicts))
        return verdicts

    def _failure(self, detail: str) -> Verdict:
        return Verdict.stage_failure(self.guard.policy, "output", "output-check", detail)

    # -- what the call returns -------------------------------------------------------------------------
    def returned(
        self, images: Any, nsfw: list[bool] | None, steering: list[Verdict] | None = None
    ) -> tuple[Any, list[Verdict]]:
        """The images to return and one verdict each; ``nsfw`` are diffusers' own checker's flags, if any, and
        ``steering`` per image what steering did to it (a blocked one is withheld)."""
        count = _count(images)
        withheld: set[int] = set()
        late: set[int] = set()  # blocked here, after the pipeline returned
        verdicts = self._match(images, count, withheld, late)
        for i, verdict in enumerate(steering or ()):
            verdicts[i] = Verdict.combine([verdicts[i], verdict])
            if verdict.blocked:  # only a steering failure blocks, and a failure is always withheld
                late.add(i)
                withheld.add(i)
        if nsfw is not None:
            for i, flagged in enumerate(nsfw):
                if flagged:
                    verdicts[i] = Verdict.combine([verdicts[i], self._diffusers_block()])
                    late.add(i)
                    # Its blackout stays; a preset that withholds blocked images withholds this one too.
                    if redaction_plan(verdicts[i], self.guard.settings.output)[0] == "withhold":
                        withheld.add(i)
        if late and self.guard.settings.output.redaction == "raise":
            combined = Verdict.combine(verdicts[i] for i in sorted(late))
            raise ImageBlocked(f"{len(late)} image(s) blocked: {combined}", combined, tuple(verdicts))
        return _withhold(images, withheld), verdicts

    def _diffusers_block(self) -> Verdict:
        policy = self.guard.policy
        finding = Finding(
            "sexual", 1.0, 0.5, "image", Action.BLOCK, "diffusers-safety-checker",
            "the pipeline's own safety_checker flagged this image and blacked it out",
        )  # fmt: skip
        return Verdict.for_stage([finding], {}, policy, "output")

    def _match(self, images: Any, count: int, withheld: set[int], late: set[int]) -> list[Verdict]:
        """Each returned image's verdict; adds to ``withheld``, and to ``late`` what was blocked only now."""
        verdicts: list[Verdict | None] = [None] * count
        for record in reversed(self.checked):  # the latest postprocess call that produced an image decides
            for i, j in _positions(images, record):
                if verdicts[i] is None:
                    verdicts[i] = record.verdicts[j]
                    if j in record.withheld:
                        withheld.add(i)
        missing = [i for i, v in enumerate(verdicts) if v is None]
        if missing and not self.guard.image_stages:
            # With the output stage off only a non-finite decode is recorded; nothing else is checked.
            policy = self.guard.policy
            for i in missing:
                verdicts[i] = Verdict.allow(policy.id, policy.version)
        elif missing:
            for i, verdict in zip(missing, self._check_returned(images, missing), strict=True):
                verdicts[i] = verdict
                if verdict.blocked:
                    late.add(i)
                    if redaction_plan(verdict, self.guard.settings.output)[0] != "flag":
                        # Redaction needs the decoded tensor, which this path never saw: withhold instead.
                        withheld.add(i)
        return [v for v in verdicts if v is not None]

    def _check_returned(self, images: Any, indices: list[int]) -> list[Verdict]:
        """Check images that bypassed the interception, converted back to ``[0, 1]`` tensors."""
        try:
            items = [images[i] for i in indices]
            tensors = to_unit_tensors(items)
        except (InputError, TypeError, IndexError, KeyError) as err:
            failure = self._failure(f"returned images bypassed the output check and cannot be read: {err}")
            return [failure for _ in indices]
        out = []
        for tensor in tensors:
            verdict = self.guard.check_images(tensor.unsqueeze(0))[0]
            out.append(Verdict.combine([verdict, self._bypassed()]))
        return out

    def _bypassed(self) -> Verdict:
        # An allow verdict that records the path: these images were checked after conversion, not on the device.
        policy = self.guard.policy
        return Verdict.allow(policy.id, policy.version, ("output-returned",))


def _from_diffusers(method: Any) -> bool:
    function = getattr(method, "__func__", method)
    return getattr(function, "__module__", "").startswith("diffusers.")


def _snapshot(output: Any) -> list[np.ndarray] | np.ndarray | torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output.detach().clone()
    if isinstance(output, np.ndarray):
        return output.copy()
    return [np.asarray(item) for item in output]


def _positions(images: Any, record: _Checked) -> list[tuple[int, int]]:
    """(returned index, index in ``record``) for each returned image that ``record`` produced, unchanged."""
    output, snapshot = record.output, record.snapshot
    if isinstance(images, torch.Tensor):
        same = images is output and torch.equal(images, snapshot)  # type: ignore[arg-type]
        return [(i, i) for i in range(images.shape[0])] if same else []
    if isinstance(images, np.ndarray):
        same = images is output and np.array_equal(images, snapshot)  # type: ignore[arg-type]
        return [(i, i) for i in range(images.shape[0])] if same else []
    if not isinstance(images, list | tuple) or not isinstance(output, list):
        return []
    where = {id(item): j for j, item in enumerate(output)}  # ids of objects the record keeps alive
    pairs = []
    for i, item in enumerate(images):
        j = where.get(id(item))
        if j is not None and output[j] is item and np.array_equal(np.asarray(item), snapshot[j]):
            pairs.append((i, j))
    return pairs


#: Call arguments with one entry per prompt, and those with one per generated image.
_PER_PROMPT_ARGS = (
    "prompt", "prompt_2", "prompt_3", "negative_prompt", "negative_prompt_2", "negative_prompt_3",
    "prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds",
)  # fmt: skip
_PER_IMAGE_ARGS = ("generator", "latents")
#: img2img conditioning images, per prompt or per generated image.
_IMAGE_ARGS = ("image", "mask_image")


def _keep_only(bound: inspect.BoundArguments, keep: list[int], prompts: int, per_prompt: int) -> None:
    """Cut the call's per-prompt and per-image arguments down to the prompts in ``keep``, in place.

    An argument given once for the whole batch (a single string, generator or image) is left as it is.
    """
    images = [p * per_prompt + j for p in keep for j in range(per_prompt)]
    for name, value in list(bound.arguments.items()):
        if name in _IMAGE_ARGS and not (isinstance(value, list | tuple) or getattr(value, "ndim", 0) == 4):
            continue  # one image (CHW): its first axis is not a batch
        length = _batch_length(value)
        if name in (*_PER_PROMPT_ARGS, *_IMAGE_ARGS) and length == prompts:
            bound.arguments[name] = _take(value, keep)
        elif name in (*_PER_IMAGE_ARGS, *_IMAGE_ARGS) and length == prompts * per_prompt:
            bound.arguments[name] = _take(value, images)


def _batch_length(value: Any) -> int | None:
    if isinstance(value, list | tuple):
        return len(value)
    if isinstance(value, np.ndarray | torch.Tensor) and value.ndim >= 1:
        return value.shape[0]
    return None


def _take(value: Any, rows: list[int]) -> Any:
    if isinstance(value, list | tuple):
        return [value[i] for i in rows]
    return value[torch.tensor(rows, dtype=torch.long)] if isinstance(value, torch.Tensor) else value[rows]


def _owners(count: int, prompts: int) -> list[int]:
    """For each of ``count`` returned images, the index of the prompt it was made from (they come in prompt order)."""
    per_prompt = max(1, count // max(1, prompts))
    return [min(i // per_prompt, prompts - 1) for i in range(count)]


def _with_blocked_slots(
    images: Any,
    verdicts: list[Verdict],
    nsfw: Any,
    owners: list[int],
    keep: list[int],
    prompt_verdicts: list[Verdict],
    per_prompt: int,
) -> tuple[Any, list[Verdict], list[bool] | None]:
    """The whole batch in prompt order: the run's images and verdicts where their prompt was kept, and for each
    image of a blocked prompt a withheld slot (None in a list, zeros in an array or tensor) with its verdict."""
    order: list[int | None] = []  # per slot, the index of the run's image, or None where it is withheld
    slot_verdicts: list[Verdict] = []
    for p, prompt_verdict in enumerate(prompt_verdicts):
        if prompt_verdict.blocked:
            order += [None] * per_prompt
            slot_verdicts += [prompt_verdict] * per_prompt
        else:
            mine = [i for i, o in enumerate(owners) if keep[o] == p]
            order += mine
            slot_verdicts += [verdicts[i] for i in mine]
    flags = _as_flags(nsfw, len(owners))
    # A withheld slot reads as flagged, so code that trusts these flags never takes it for a clean image.
    slot_flags = None if flags is None else [True if i is None else flags[i] for i in order]
    return _arranged(images, order), slot_verdicts, slot_flags


def _arranged(images: Any, order: list[int | None]) -> Any:
    """``images`` put in ``order``, a withheld slot where it says None."""
    if isinstance(images, list | tuple):
        return [None if i is None else images[i] for i in order]
    if isinstance(images, np.ndarray | torch.Tensor):
        shape = (len(order), *images.shape[1:])
        if isinstance(images, np.ndarray):
            out = np.zeros(shape, dtype=images.dtype)
        else:
            out = torch.zeros(shape, dtype=images.dtype, device=images.device)
        for slot, i in enumerate(order):
            if i is not None:
                out[slot] = images[i]
        return out
    # Any other container cannot be rebuilt safely: none of it is returned.
    return [None] * len(order)


def _count(images: Any) -> int:
    return images.shape[0] if isinstance(images, np.ndarray | torch.Tensor) else len(images)


def _withhold(images: Any, withheld: set[int]) -> Any:
    """``images`` with the withheld ones removed: None in a list, all zeros in an array or tensor; any other
    container is replaced by a list of None."""
    if not withheld:
        return images
    if isinstance(images, list | tuple):
        return [None if i in withheld else image for i, image in enumerate(images)]
    if isinstance(images, np.ndarray | torch.Tensor):
        for i in withheld:
            images[i] = 0
        return images
    # Any other container cannot be edited safely: none of it is returned.
    return [None] * _count(images)


def _tuple_item(result: Any, index: int) -> Any:
    return result[index] if isinstance(result, tuple) and len(result) > index else None


def _as_flags(nsfw: Any, count: int) -> list[bool] | None:
    """diffusers' ``nsfw_content_detected`` as one bool per image, or None when the pipeline has no checker."""
    if not isinstance(nsfw, list) or len(nsfw) != count:
        return None
    return [bool(flag) for flag in nsfw]


def _refuse_embeds(arguments: dict[str, Any], preset: str) -> None:
    """Conditioning given as tensors (``pooled_prompt_embeds`` next to text, ``ip_adapter_image_embeds``, or
    embeddings a step callback may replace) reaches the denoiser unread by the text rules."""
    given = sorted(name for name, value in arguments.items() if name.endswith("_embeds") and value is not None)
    swapped = sorted(n for n in arguments.get("callback_on_step_end_tensor_inputs") or () if "embeds" in str(n))
    if given or swapped:
        what = ", ".join([*given, *(f"callback_on_step_end_tensor_inputs={n!r}" for n in swapped)])
        raise ConfigError(
            f"preset {preset!r} requires prompt text (accept_prompt_embeds is false); {what} would condition the "
            "denoiser on tensors the prompt stage cannot read. A user config file or dict may set "
            "accept_prompt_embeds: true where the preset does not lock it"
        )


def _plain_key(name: Any) -> str:
    if type(name) is not str:
        raise ConfigError(f"safeguard= toggle names are strings, got {type(name).__name__}")
    return name


def _plain_value(name: str, value: Any) -> bool | str:
    """``value`` as a plain bool or str; anything else (a subclass included) is refused."""
    if type(value) is bool:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    raise ConfigError(f"safeguard={{{name!r}: ...}} must be True, False or a name, got {type(value).__name__}")


#: The prompt arguments of a pipeline class that is not registered, where its call takes them.
_PROMPT_ARGS = ("prompt", "prompt_2", "prompt_3")
#: Where an unregistered pipeline keeps its denoiser, in the order looked for.
_DENOISERS = ("unet", "transformer")


@dataclass(frozen=True)
class _Facts:
    """What the wrapper needs about one pipeline: its registered family (None if its class is not registered),
    the call arguments that carry prompt text and the denoiser's attribute (None: the pipeline has none)."""

    pipeline_class: type
    family: PipelineFamily | None
    prompt_args: tuple[str, ...]
    denoiser: str | None

    @classmethod
    def of(cls, pipe: Any) -> _Facts:
        """The facts of ``pipe``: from the family registry, or read off its call signature.

        Raises:
            UnsupportedPipelineError: its call takes no ``prompt``, or it has no ``image_processor`` with
                ``postprocess`` (the output check runs inside it).
        """
        klass = type(pipe)
        family = registered_family(klass)
        missing = []
        parameters: Mapping[str, Any] = {}
        if callable(pipe):
            try:
                own = inspect.signature(pipe.__call__).parameters
                variadic = any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in own.values())
                # A call that takes *args/**kwargs hands them on to a base class's call, which names the prompt.
                parameters = own if "prompt" in own or not variadic else _call_signature(pipe).parameters
            except (TypeError, ValueError):  # no signature to read
                parameters = {}
        if family is None and "prompt" not in parameters:
            missing.append("no `prompt` argument in its __call__")
        processor = getattr(pipe, "image_processor", None)
        if not callable(getattr(processor, "postprocess", None)):
            missing.append("no `image_processor` with `postprocess` (the output check runs inside it)")
        if missing:
            raise UnsupportedPipelineError(
                f"safeguard cannot protect {klass.__module__}.{klass.__qualname__}: it has "
                f"{' and '.join(missing)}; protect() needs a diffusers pipeline that takes a text prompt and "
                f"decodes through its image_processor (registered pipelines: {', '.join(registered_pipelines())})"
            )
        if family is not None:
            return cls(klass, family, family.prompt_args, family.denoiser)
        prompt_args = tuple(name for name in _PROMPT_ARGS if name in parameters)
        denoiser = next((name for name in _DENOISERS if getattr(pipe, name, None) is not None), None)
        return cls(klass, None, prompt_args, denoiser)

    def denoiser_of(self, pipe: Any) -> Any:
        """The object whose lock a call holds: the denoiser, or the pipeline itself when it has none."""
        denoiser = getattr(pipe, self.denoiser, None) if self.denoiser else None
        return pipe if denoiser is None else denoiser

    def require_steering(self, pipe: Any) -> None:
        """Refuse steering on a pipeline whose class has no registered family that can steer."""
        name = self.pipeline_class.__name__
        if self.family is None:
            raise UnsupportedPipelineError(
                f"steering is on, and it needs the pipeline's family: {self.pipeline_class.__module__}."
                f"{self.pipeline_class.__qualname__} is "
                f"not registered. Register it with safeguard.register_pipeline({name}, family=...) (a registered "
                "family's name, such as 'sd', or a safeguard.PipelineFamily), or turn steering off "
                "(steering=False, where the preset allows it)"
            )
        if not self.family.steerable:
            raise UnsupportedPipelineError(
                f"steering is on, and the {self.family.family!r} family {name} is registered with has no "
                f"encode_fn; register {name} with safeguard.register_pipeline({name}, "
                "family=safeguard.PipelineFamily(..., encode_fn=...)), or turn steering off"
            )


@dataclass(frozen=True)
class _Layers:
    """The settings layers a wrapper was made with, for the guards of calls that add their own toggles."""

    preset: str | Path | None
    config: str | Path | dict[str, Any] | None
    overrides: dict[str, Any]


def _call_signature(pipeline: Any) -> inspect.Signature:
    """The signature that names the call's arguments: a subclass whose ``__call__`` takes ``*args, **kwargs``
    hands them to a base class's call, whose signature says where the prompt is."""
    for klass in type(pipeline).__mro__:
        call = klass.__dict__.get("__call__")
        if call is not None and "prompt" in inspect.signature(call).parameters:
            return inspect.signature(call.__get__(pipeline))
    return inspect.signature(pipeline.__call__)


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
        pipe: a diffusers pipeline whose call takes a text ``prompt`` and that decodes through its
            ``image_processor``. Steering needs its class (or a base) in the family registry
            (:func:`safeguard.register_pipeline`): SD 1.x/2.x, SDXL, SD3 and Flux pipelines (text-to-image,
            img2img, inpainting, ControlNet) are registered out of the box.
        policy: a :class:`Policy`, a bundled policy id or a path to a policy YAML file.
        preset: ``"balanced"`` (default), ``"strict"``, ``"research"`` or a path to a preset file.
        config: a user YAML file (or mapping) layered over the preset.
        **overrides: stage toggles ``prompt``, ``steering``, ``output`` and ``on_block``/``redaction``,
            where the preset allows them; ``image_model=`` gives the CLIP output checker its weights (a folder,
            a hub id already in the local cache, or a loaded ``CLIPModel``).

    Raises:
        UnsupportedPipelineError: the pipeline takes no ``prompt`` or has no ``image_processor``; or steering
            is on and its class is not registered (the message names the ``register_pipeline`` call to make).
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
    facts = _Facts.of(pipe)
    guard = Guard.create(policy, preset, config, **overrides)
    if guard.steering_stage is not None:
        facts.require_steering(pipe)  # fail loudly: steering is never skipped silently
    guard.to(pipe.device)
    guard.attach_pipeline(pipe)
    return ProtectedPipeline(pipe, guard, facts, _Layers(preset, config, dict(overrides)))


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
