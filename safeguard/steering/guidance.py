"""Safety guidance in the denoising loop, and the denoiser hooks that carry steering for one call.

**CFG models (SD 1.x/2.x, SDXL, SD3)** -- safe latent diffusion (SLD; Schramowski et al., CVPR 2023, eqs. 3-8).
With ``e_u``, ``e_p`` and ``e_S`` the denoiser's predictions on the unconditional (negative) prompt, the prompt
and the safety concept, at every step::

    mask  = min(1, s_S * |e_p - e_S|)   where e_p - e_S < lambda, else 0        (element-wise)
    g     = w * mask * (e_S - e_u) + s_m * nu
    nu   <- beta_m * nu + (1 - beta_m) * g
    e_p  <- e_p - g                      from step ceil(warmup * steps) on

The pipeline then forms ``e_u + s_g (e_p - g - e_u)``, which is SLD's guided prediction (``w = 1``). The
concept prediction runs as extra rows of the same batched denoiser call: one row per flagged image.

**Flux (guidance-distilled, no unconditional branch).** The same term on velocities, with the empty prompt's
velocity as the reference: ``v_p <- v_p - g`` with ``g = w * mask(v_p, v_S) * (v_S - v_0) + s_m * nu``. A
flow-matching velocity is ``v = (e - x_t) / (1 - t)``, an increasing affine map of the noise prediction at
each step, so differences keep their sign and the SLD mask keeps its meaning (its scale changes by
``1 / (1 - t)``). Concept and empty-prompt rows run batched with the prompt rows: two extra rows per flagged
image. The same reference rows are used for a CFG model called with ``guidance_scale <= 1``.

Example:
    >>> import torch
    >>> e_u, e_p, e_s = torch.zeros(4), torch.ones(4), torch.ones(4)
    >>> sld_term(e_p, e_s, e_u, scale=1000.0, threshold=0.01, weight=1.0)
    tensor([0., 0., 0., 0.])
    >>> sld_term(e_p, e_s + 0.1, e_u, scale=1000.0, threshold=0.01, weight=1.0)
    tensor([1.1000, 1.1000, 1.1000, 1.1000])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from safeguard.call_scope import current_call
from safeguard.steering.adapters import Encoded, FamilyAdapter
from safeguard.steering.presets import SteeringPreset

__all__ = ["CallPlan", "DenoiserHooks", "sld_term"]


def sld_term(
    e_p: torch.Tensor, e_s: torch.Tensor, e_ref: torch.Tensor, scale: float, threshold: float, weight: float
) -> torch.Tensor:
    """The SLD safety term ``w * mask * (e_S - e_ref)`` (before momentum); see the module docstring."""
    diff = e_p - e_s
    mask = torch.where(diff < threshold, (scale * diff.abs()).clamp(max=1.0), torch.zeros_like(diff))
    return weight * mask * (e_s - e_ref)


@dataclass
class CallPlan:
    """What to do for one pipeline call.

    Attributes:
        flagged: per prompt, whether it is steered.
        project_fn: ``(own, length) -> list[Encoded | None]``: per prompt, the projected encoding of its own
            conditioning ``own`` (one row per prompt), or None to keep it.
        concept_fn: ``length -> list[Encoded | None]``: per prompt, the safety concept's encoding.
        empty_fn: ``length -> Encoded``: the empty prompt's encoding (the guidance reference without CFG).
        preset: the steering parameters.
        stats: counters for benchmarks: guided denoiser calls and extra batch rows run.
    """

    flagged: list[bool]
    project_fn: Callable[[Encoded, int], list[Encoded | None]]
    concept_fn: Callable[[int], list[Encoded | None]]
    empty_fn: Callable[[int], Encoded]
    preset: SteeringPreset
    stats: dict[str, int] = field(default_factory=lambda: {"calls": 0, "extra_rows": 0})


class DenoiserHooks:
    """Forward pre- and post-hooks on the denoiser for one call; :meth:`remove` takes both away.

    The hooks belong to the protected call that installed them (:func:`safeguard.call_scope.current_call`)
    and act only inside it: a denoiser shared with another pipeline may be called from another thread
    meanwhile, and that call must not be steered. ``name`` says which call they belong to.
    """

    def __init__(self, pipe: Any, adapter: FamilyAdapter, plan: CallPlan) -> None:
        self.pipe = pipe
        self.adapter = adapter
        self.plan = plan
        self.owner = current_call()
        self.name = f"safeguard-steering:{self.owner.name if self.owner else 'direct'}"
        self._handles: list[Any] = []
        # The prompt's own conditioning tensor and its projection, held (not keyed by address) for the call.
        self._cond: torch.Tensor | None = None
        self._projection: tuple[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor | None]] | None = None
        self._pending: dict[str, Any] | None = None
        self._momentum: torch.Tensor | None = None
        self._step = 0
        # What actually changed each prompt's generation, for the verdict: a hook that never acted (the
        # denoiser ran in another thread) or a projection that kept every token must not be reported as steering.
        self._projected_prompts = [False] * len(plan.flagged)
        self._guided_counts: torch.Tensor | None = None

    def install(self) -> DenoiserHooks:
        denoiser = getattr(self.pipe, self.adapter.denoiser)
        self._handles.append(denoiser.register_forward_pre_hook(self._pre, with_kwargs=True))
        self._handles.append(denoiser.register_forward_hook(self._post, with_kwargs=True))
        return self

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def methods(self) -> list[tuple[str, ...]]:
        """Per prompt, the methods that changed its generation so far: ``"projection"`` and/or ``"guidance"``."""
        guided = [False] * len(self.plan.flagged)
        if self._guided_counts is not None:
            guided = self._guided_counts.gt(0).tolist()  # one device sync per call, not one per step
        return [
            tuple(name for name, done in (("projection", projected), ("guidance", g)) if done)
            for projected, g in zip(self._projected_prompts, guided, strict=True)
        ]

    # -- before the denoiser runs ----------------------------------------------------------------------
    def _pre(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if current_call() is not self.owner:
            return None
        self._pending = None
        adapter = self.adapter
        if kwargs.get("skip_layers") is not None:  # SD3 skip-layer guidance: an extra call, left as it is
            return None
        hidden = kwargs.get("encoder_hidden_states")
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        if hidden is None or sample is None:
            return None
        if not adapter.cfg_batched:
            # Flux with true CFG calls the transformer a second time on the negative prompt; steer only
            # the calls on the prompt's own embeddings (the first tensor seen in this call).
            if self._cond is None:
                self._cond = hidden
            elif hidden is not self._cond and not (
                hidden.shape == self._cond.shape and torch.equal(hidden, self._cond)
            ):
                return None
        rows = sample.shape[0]
        cfg = adapter.uses_cfg(self.pipe) and rows % 2 == 0
        batch = rows // 2 if cfg else rows
        prompts = len(self.plan.flagged)
        if batch % prompts:
            raise RuntimeError(f"steering: {batch} conditional rows do not split over {prompts} prompts")
        per_prompt = batch // prompts
        offset = batch if cfg else 0
        images = [i for i in range(batch) if self.plan.flagged[i // per_prompt]]
        length = hidden.shape[1]
        kwargs = dict(kwargs)
        pooled = adapter.get_pooled(kwargs)

        preset = self.plan.preset
        if preset.projection.enabled:
            hidden, pooled = self._projected(hidden, pooled, offset, per_prompt, length)
            kwargs["encoder_hidden_states"] = hidden
            if pooled is not None:
                adapter.set_pooled(kwargs, pooled)

        if not preset.guidance.enabled or not images:
            return args, kwargs
        source = torch.tensor([offset + i for i in images], device=sample.device)
        concepts = self.plan.concept_fn(length)
        extra_hidden = [concepts[i // per_prompt].tokens for i in images]
        extra_pooled = [concepts[i // per_prompt].pooled for i in images]
        if not cfg:
            empty = self.plan.empty_fn(length)
            source = torch.cat([source, source])
            extra_hidden += [empty.tokens] * len(images)
            extra_pooled += [empty.pooled] * len(images)

        def grow(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == rows:
                return torch.cat([value, value[source]])
            if isinstance(value, dict):
                return {k: grow(v) for k, v in value.items()}
            if isinstance(value, list | tuple):  # ControlNet residuals: one batched tensor per block
                grown = [grow(v) for v in value]
                return grown if isinstance(value, list) else tuple(grown)
            return value

        args = tuple(grow(a) if i < 2 else a for i, a in enumerate(args))
        for key in (*adapter.batched_keys, "sample", "timestep", "added_cond_kwargs"):
            if key in kwargs:
                kwargs[key] = grow(kwargs[key])
        new_hidden = kwargs["encoder_hidden_states"].clone()
        new_hidden[rows:] = torch.cat(extra_hidden).to(new_hidden)
        kwargs["encoder_hidden_states"] = new_hidden
        grown_pooled = adapter.get_pooled(kwargs)
        if grown_pooled is not None:
            grown_pooled = grown_pooled.clone()
            grown_pooled[rows:] = torch.cat(extra_pooled).to(grown_pooled)  # type: ignore[arg-type]
            adapter.set_pooled(kwargs, grown_pooled)
        self._pending = {
            "rows": rows, "cfg": cfg, "batch": batch, "offset": offset, "images": images, "per_prompt": per_prompt
        }  # fmt: skip
        self.plan.stats["extra_rows"] += len(source)
        return args, kwargs

    def _projected(
        self, hidden: torch.Tensor, pooled: torch.Tensor | None, offset: int, per_prompt: int, length: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # The pipeline passes the same conditioning tensors at every step: project them once per call. The
        # cache holds the tensors themselves, so an identity match cannot be a reused address.
        cached = self._projection
        if cached is None or cached[0][0] is not hidden or cached[0][1] is not pooled or cached[0][2] != offset:
            prompts = len(self.plan.flagged)
            firsts = [offset + j * per_prompt for j in range(prompts)]
            own = Encoded(hidden[firsts], None if pooled is None else pooled[firsts])
            replaced = self.plan.project_fn(own, length)
            new_hidden = hidden.clone()
            new_pooled = None if pooled is None else pooled.clone()
            for j, encoded in enumerate(replaced):
                if encoded is None:
                    continue
                rows = slice(offset + j * per_prompt, offset + (j + 1) * per_prompt)
                new_hidden[rows] = encoded.tokens.to(new_hidden)
                changed = not torch.equal(new_hidden[rows], hidden[rows])
                if new_pooled is not None and encoded.pooled is not None:
                    new_pooled[rows] = encoded.pooled.to(new_pooled)
                    changed = changed or not torch.equal(new_pooled[rows], pooled[rows])  # type: ignore[index]
                self._projected_prompts[j] = self._projected_prompts[j] or changed
            self._projection = ((hidden, pooled, offset), (new_hidden, new_pooled))
        return self._projection[1]

    # -- after the denoiser ran ------------------------------------------------------------------------
    def _post(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        if current_call() is not self.owner:
            return None
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        tensor = output[0] if isinstance(output, tuple) else output.sample
        rows, images, offset = pending["rows"], pending["images"], pending["offset"]
        base, extra = tensor[:rows], tensor[rows:]
        index = torch.tensor(images, device=tensor.device)
        e_p = base[offset + index].float()
        e_s = extra[: len(images)].float()
        e_ref = base[index].float() if pending["cfg"] else extra[len(images) :].float()
        params = self.plan.preset.guidance
        term = sld_term(e_p, e_s, e_ref, params.scale, params.threshold, params.weight)
        if self._momentum is None:
            self._momentum = torch.zeros_like(term)
        term = term + params.momentum * self._momentum
        self._momentum = params.momentum_beta * self._momentum + (1 - params.momentum_beta) * term
        steps = getattr(self.pipe, "_num_timesteps", None) or 1
        warm = self._step >= math.ceil(params.warmup * steps)
        self._step += 1
        self.plan.stats["calls"] += 1
        result = base.clone()
        if warm:
            result[offset + index] = (e_p - term).to(result.dtype)
            # Per prompt, how many of its images' predictions the term changed (read once, in methods()).
            moved = term.flatten(1).ne(0).any(dim=1).float()
            owners = index.div(pending["per_prompt"], rounding_mode="floor")
            counts = torch.zeros(len(self.plan.flagged), device=term.device).index_add_(0, owners, moved)
            self._guided_counts = counts if self._guided_counts is None else self._guided_counts + counts
        if isinstance(output, tuple):
            return (result, *output[1:])
        output.sample = result
        return output
