"""The pipeline family registry: everything safeguard knows about each family of diffusers pipelines.

One record per family (:class:`PipelineFamily`) holds the family's facts: the call arguments that carry prompt
text, the denoiser, and what steering needs (how the family encodes text into the denoiser's conditioning,
which denoiser inputs are batched, where the pooled embedding travels, whether CFG runs as one batched call).
The registry maps pipeline *classes* to their family; a subclass of a registered class resolves through its
base. Both :func:`safeguard.protect` and the steering stage read it, and nothing else holds per-family facts.

Registered out of the box (where the installed diffusers has them): Stable Diffusion 1.x/2.x (``"sd"``),
SDXL (``"sdxl"``), SD3 (``"sd3"``) and Flux (``"flux"``), each as text-to-image, img2img, inpainting and
ControlNet pipelines. :func:`safeguard.protect` accepts any other pipeline whose call takes a ``prompt`` and
that decodes through an ``image_processor``; only steering needs the class registered here, with
:func:`register_pipeline`.

Example:
    >>> from diffusers import FluxPipeline, StableDiffusionControlNetPipeline
    >>> family_for(FluxPipeline).prompt_args
    ('prompt', 'prompt_2')
    >>> family_for(StableDiffusionControlNetPipeline).family
    'sd'
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import diffusers
import torch

from safeguard.errors import ConfigError, UnsupportedPipelineError

__all__ = [
    "Encoded",
    "PipelineFamily",
    "family_for",
    "register_pipeline",
    "registered_family",
    "registered_pipelines",
    "unregister_pipeline",
]


@dataclass(frozen=True)
class Encoded:
    """Text encoded as the denoiser sees it: ``tokens`` ``(n, L, D)`` and ``pooled`` ``(n, P)`` or None."""

    tokens: torch.Tensor
    pooled: torch.Tensor | None

    def summary(self) -> torch.Tensor:
        """One vector per text for concept scores: the pooled embedding, else the mean of tokens after BOS."""
        if self.pooled is not None:
            return self.pooled.float()
        return self.tokens[:, 1:].float().mean(dim=1)


#: ``(pipe, texts, length) -> Encoded``: a family's text encoding, as the denoiser sees it.
EncodeFn = Callable[[Any, list[str], "int | None"], Encoded]


@dataclass(frozen=True)
class PipelineFamily:
    """Everything safeguard needs to know about one pipeline family.

    Attributes:
        family: the family's name (``"sd"``, ``"sdxl"``, ``"sd3"``, ``"flux"`` or one you register); encoder
            calibrations (:mod:`safeguard.stages.encoder`) are matched by it.
        prompt_args: the call arguments that carry prompt text, checked before any denoiser step; the first is
            ``"prompt"``. Negative prompts are not among them.
        denoiser: the pipeline attribute of the component that runs once per step (``"unet"`` or
            ``"transformer"``): protected calls sharing it run one at a time, and steering hooks it.
        encode_fn: ``(pipe, texts, length) -> Encoded``, the family's text encoding as its ``encode_prompt``
            does it (``length`` is the conditioning sequence length the denoiser sees, None for the family's
            default); None for a family without steering.
        batched_keys: denoiser keyword inputs whose first dimension is the batch (a list or tuple of such
            tensors, as ControlNet residuals are, counts too); safety guidance adds rows to them.
        pooled_key: where the pooled embedding goes (``"added_cond_kwargs.text_embeds"`` for SDXL), or None.
        cfg_batched: CFG runs as one call on ``[uncond; cond]`` rows (False for Flux: guidance-distilled).
        clip_tokens: conditioning tokens that come from CLIP before any T5 tokens (SD3: 77).
    """

    family: str
    prompt_args: tuple[str, ...] = ("prompt",)
    denoiser: str = "unet"
    encode_fn: EncodeFn | None = None
    batched_keys: tuple[str, ...] = ()
    pooled_key: str | None = None
    cfg_batched: bool = True
    clip_tokens: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.family, str) or not self.family:
            raise ConfigError(f"a pipeline family needs a name, got {self.family!r}")
        if not self.prompt_args or self.prompt_args[0] != "prompt":
            raise ConfigError(f"family {self.family!r}: prompt_args must start with 'prompt', got {self.prompt_args}")
        if self.encode_fn is not None and not callable(self.encode_fn):
            raise ConfigError(f"family {self.family!r}: encode_fn must be callable")
        object.__setattr__(self, "prompt_args", tuple(self.prompt_args))
        object.__setattr__(self, "batched_keys", tuple(self.batched_keys))

    @property
    def steerable(self) -> bool:
        """Whether steering can run on this family (it has an ``encode_fn``)."""
        return self.encode_fn is not None

    def encode(self, pipe: Any, texts: list[str], length: int | None = None) -> Encoded:
        """Encode ``texts`` with the pipeline's own text encoder(s), without gradients.

        Raises:
            UnsupportedPipelineError: the family has no ``encode_fn``.
        """
        if self.encode_fn is None:
            raise UnsupportedPipelineError(f"the {self.family!r} pipeline family has no encode_fn: it cannot steer")
        with torch.no_grad():
            return self.encode_fn(pipe, texts, length)

    def encoders(self, pipe: Any) -> tuple[Any, ...]:
        """The pipeline's text encoders (None where it has none), so cached encodings follow a swapped encoder."""
        return tuple(getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3"))

    def uses_cfg(self, pipe: Any) -> bool:
        """Whether this call runs batched CFG (read during the call: the pipeline sets its guidance scale)."""
        return self.cfg_batched and bool(getattr(pipe, "do_classifier_free_guidance", False))

    def get_pooled(self, kwargs: dict[str, Any]) -> torch.Tensor | None:
        if self.pooled_key is None:
            return None
        if self.pooled_key.startswith("added_cond_kwargs."):
            added = kwargs.get("added_cond_kwargs") or {}
            return added.get(self.pooled_key.split(".", 1)[1])
        return kwargs.get(self.pooled_key)

    def set_pooled(self, kwargs: dict[str, Any], value: torch.Tensor) -> None:
        if self.pooled_key is None:
            return
        if self.pooled_key.startswith("added_cond_kwargs."):
            # A new dict: the pipeline reuses its own added_cond_kwargs across steps.
            kwargs["added_cond_kwargs"] = {**kwargs["added_cond_kwargs"], self.pooled_key.split(".", 1)[1]: value}
        else:
            kwargs[self.pooled_key] = value


# -- the built-in families ---------------------------------------------------------------------------------
_SD3_CLIP_TOKENS = 77


def _encode_sd(pipe: Any, texts: list[str], length: int | None) -> Encoded:
    tokens, _ = pipe.encode_prompt(texts, pipe._execution_device, 1, False)
    return Encoded(tokens, None)


def _encode_sdxl(pipe: Any, texts: list[str], length: int | None) -> Encoded:
    tokens, _, pooled, _ = pipe.encode_prompt(
        texts, device=pipe._execution_device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return Encoded(tokens, pooled)


def _encode_sd3(pipe: Any, texts: list[str], length: int | None) -> Encoded:
    seq = max(1, (length or _SD3_CLIP_TOKENS + 32) - _SD3_CLIP_TOKENS)
    tokens, _, pooled, _ = pipe.encode_prompt(
        texts,
        texts,
        texts,
        device=pipe._execution_device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=False,
        max_sequence_length=seq,
    )
    return Encoded(tokens, pooled)


def _encode_flux(pipe: Any, texts: list[str], length: int | None) -> Encoded:
    tokens, pooled, _ = pipe.encode_prompt(
        texts, texts, device=pipe._execution_device, num_images_per_prompt=1, max_sequence_length=length or 32
    )
    return Encoded(tokens, pooled)


# ControlNet residuals reach the denoiser batched like its sample; keys a pipeline does not pass are skipped.
_UNET_KEYS = (
    "encoder_hidden_states", "timestep_cond", "class_labels", "attention_mask", "encoder_attention_mask",
    "down_block_additional_residuals", "mid_block_additional_residual",
)  # fmt: skip
_FLUX_KEYS = (
    "hidden_states", "timestep", "guidance", "encoder_hidden_states", "pooled_projections",
    "controlnet_block_samples", "controlnet_single_block_samples",
)  # fmt: skip
SD = PipelineFamily("sd", ("prompt",), "unet", _encode_sd, _UNET_KEYS, None, True)
SDXL = PipelineFamily(
    "sdxl", ("prompt", "prompt_2"), "unet", _encode_sdxl, _UNET_KEYS, "added_cond_kwargs.text_embeds", True
)
SD3 = PipelineFamily(
    "sd3",
    ("prompt", "prompt_2", "prompt_3"),
    "transformer",
    _encode_sd3,
    ("hidden_states", "timestep", "encoder_hidden_states", "pooled_projections", "block_controlnet_hidden_states"),
    "pooled_projections",
    True,
    clip_tokens=_SD3_CLIP_TOKENS,
)
FLUX = PipelineFamily(
    "flux",
    ("prompt", "prompt_2"),
    "transformer",
    _encode_flux,
    _FLUX_KEYS,
    "pooled_projections",
    False,
)

#: The diffusers classes registered out of the box, by family (those the installed diffusers lacks are skipped).
_BUILTIN = (
    (SD, (
        "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
        "StableDiffusionControlNetPipeline", "StableDiffusionControlNetImg2ImgPipeline",
        "StableDiffusionControlNetInpaintPipeline",
    )),
    (SDXL, (
        "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline",
        "StableDiffusionXLControlNetPipeline", "StableDiffusionXLControlNetImg2ImgPipeline",
        "StableDiffusionXLControlNetInpaintPipeline",
    )),
    (SD3, (
        "StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline",
        "StableDiffusion3ControlNetPipeline", "StableDiffusion3ControlNetInpaintingPipeline",
    )),
    (FLUX, (
        "FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline", "FluxControlNetPipeline",
        "FluxControlNetImg2ImgPipeline", "FluxControlNetInpaintPipeline",
    )),
)  # fmt: skip

# -- the registry --------------------------------------------------------------------------------------------
_REGISTRY: dict[type, PipelineFamily] = {}
_lock = threading.RLock()
_loaded = False


def _registry() -> dict[type, PipelineFamily]:
    """The registry, with the built-in diffusers classes added on first use (resolving them imports diffusers'
    pipeline modules, which ``import safeguard`` should not pay for)."""
    global _loaded
    with _lock:
        if not _loaded:
            for family, names in _BUILTIN:
                for name in names:
                    try:
                        klass = getattr(diffusers, name)
                    except (AttributeError, ImportError, RuntimeError):  # not in this diffusers version
                        continue
                    _REGISTRY.setdefault(klass, family)
            _loaded = True
        return _REGISTRY


def registered_family(pipeline_class: type) -> PipelineFamily | None:
    """The family of ``pipeline_class`` or of the nearest registered class it derives from; None if none.

    Example:
        >>> from diffusers import StableDiffusionXLInpaintPipeline
        >>> registered_family(StableDiffusionXLInpaintPipeline).family
        'sdxl'
        >>> registered_family(dict) is None
        True
    """
    registry = _registry()
    for klass in getattr(pipeline_class, "__mro__", ()):
        family = registry.get(klass)
        if family is not None:
            return family
    return None


def family_for(pipeline_class: type) -> PipelineFamily:
    """Like :func:`registered_family`, but an unregistered class raises.

    Raises:
        UnsupportedPipelineError: no registered class in its bases; the message says what to register.
    """
    family = registered_family(pipeline_class)
    if family is None:
        raise UnsupportedPipelineError(
            f"{_name(pipeline_class)} is not a registered pipeline family; register it with "
            f"safeguard.register_pipeline({pipeline_class.__name__}, family=...) (a registered family's name, "
            f"such as 'sd', or a safeguard.PipelineFamily); registered pipelines: {', '.join(registered_pipelines())}"
        )
    return family


def registered_pipelines() -> tuple[str, ...]:
    """The names of the registered pipeline classes, in registration order."""
    with _lock:
        return tuple(klass.__qualname__ for klass in _registry())


def register_pipeline(
    pipeline_class: type | None = None,
    /,
    *,
    family: str | PipelineFamily,
    prompt_args: Sequence[str] | None = None,
    denoiser: str | None = None,
) -> Any:
    """Register a pipeline class (and so its subclasses) as a member of a pipeline family.

    :func:`safeguard.protect` checks prompts and images of any pipeline that takes a ``prompt`` and decodes
    through an ``image_processor``; steering needs the class registered, because how text becomes the
    denoiser's conditioning differs per family. Without ``pipeline_class`` it returns a class decorator.
    Undo it with :func:`unregister_pipeline`.

    Args:
        pipeline_class: the pipeline class.
        family: the name of a registered family (``"sd"``, ``"sdxl"``, ``"sd3"``, ``"flux"`` or one registered
            before) whose facts the class shares, or a new :class:`PipelineFamily` record.
        prompt_args: the call arguments carrying prompt text, where they differ from the family's.
        denoiser: the denoiser's attribute name, where it differs from the family's.

    Returns:
        ``pipeline_class`` (or, without it, a decorator that registers and returns its class).

    Raises:
        ConfigError: an unknown family name, a bad record, or a class already registered with another family.
        TypeError: ``pipeline_class`` is not a class.

    Example:
        >>> import safeguard
        >>> from diffusers import StableDiffusionPipeline
        >>> class MyPipeline(StableDiffusionPipeline):  # subclasses resolve through their base anyway
        ...     pass
        >>> safeguard.register_pipeline(MyPipeline, family="sd", prompt_args=("prompt",)) is MyPipeline
        True
        >>> safeguard.unregister_pipeline(MyPipeline).family
        'sd'
    """
    if pipeline_class is None:
        return lambda klass: register_pipeline(klass, family=family, prompt_args=prompt_args, denoiser=denoiser)
    if not isinstance(pipeline_class, type):
        raise TypeError(f"register_pipeline expects a pipeline class, got {type(pipeline_class).__name__}")
    with _lock:
        registry = _registry()
        if isinstance(family, PipelineFamily):
            record = family
        elif isinstance(family, str):
            known = {f.family: f for f in registry.values()}
            if family not in known:
                raise ConfigError(
                    f"unknown pipeline family {family!r}; registered families: {', '.join(sorted(known))} "
                    "(or pass a safeguard.PipelineFamily)"
                )
            record = known[family]
        else:
            raise ConfigError(f"family must be a family name or a PipelineFamily, got {type(family).__name__}")
        changes: dict[str, Any] = {}
        if prompt_args is not None:
            changes["prompt_args"] = tuple(prompt_args)
        if denoiser is not None:
            changes["denoiser"] = denoiser
        if changes:
            record = replace(record, **changes)
        existing = registry.get(pipeline_class)
        if existing is not None and existing != record:
            raise ConfigError(
                f"{_name(pipeline_class)} is already registered as family {existing.family!r}; "
                "call safeguard.unregister_pipeline() on it first"
            )
        registry[pipeline_class] = record
    return pipeline_class


def unregister_pipeline(pipeline_class: type) -> PipelineFamily | None:
    """Remove ``pipeline_class``'s own registration (not its bases'); returns the record it had, or None.

    Example:
        >>> import safeguard
        >>> safeguard.unregister_pipeline(dict) is None
        True
    """
    with _lock:
        return _registry().pop(pipeline_class, None)


def _name(pipeline_class: type) -> str:
    return f"{pipeline_class.__module__}.{pipeline_class.__qualname__}"
