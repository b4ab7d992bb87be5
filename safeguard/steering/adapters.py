"""Per-family differences the steering stage needs, in a class-keyed registry.

An adapter knows how a family encodes text into the denoiser's conditioning (token embeddings and, for SDXL,
SD3 and Flux, a pooled embedding), which denoiser inputs are batched, where the pooled embedding travels and
whether the family uses classifier-free guidance (CFG) in one batched denoiser call.

Example:
    >>> from diffusers import StableDiffusionXLPipeline
    >>> adapter_for(StableDiffusionXLPipeline).family
    'sdxl'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from safeguard.errors import UnsupportedPipelineError
from safeguard.pipelines import spec_for

__all__ = ["Encoded", "FamilyAdapter", "adapter_for"]


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


@dataclass(frozen=True)
class FamilyAdapter:
    """What differs between SD 1.x/2.x, SDXL, SD3 and Flux for steering.

    Attributes:
        family: ``"sd"``, ``"sdxl"``, ``"sd3"`` or ``"flux"``.
        denoiser: the pipeline attribute of the denoiser.
        batched_keys: denoiser keyword inputs whose first dimension is the batch.
        pooled_key: where the pooled embedding goes (``"added_cond_kwargs.text_embeds"`` for SDXL), or None.
        cfg_batched: CFG runs as one call on ``[uncond; cond]`` rows (False for Flux: guidance-distilled).
        clip_tokens: conditioning tokens that come from CLIP before any T5 tokens (SD3: 77).
    """

    family: str
    denoiser: str
    batched_keys: tuple[str, ...]
    pooled_key: str | None
    cfg_batched: bool
    clip_tokens: int = 0

    def encode(self, pipe: Any, texts: list[str], length: int | None = None) -> Encoded:
        """Encode ``texts`` with the pipeline's own text encoder(s), as its ``encode_prompt`` does.

        ``length`` is the conditioning sequence length the denoiser sees (sets T5's ``max_sequence_length``
        for SD3 and Flux; CLIP-only families always give 77).
        """
        device = pipe._execution_device
        with torch.no_grad():
            if self.family == "sd":
                tokens, _ = pipe.encode_prompt(texts, device, 1, False)
                return Encoded(tokens, None)
            if self.family == "sdxl":
                tokens, _, pooled, _ = pipe.encode_prompt(
                    texts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
                )
                return Encoded(tokens, pooled)
            if self.family == "sd3":
                seq = max(1, (length or self.clip_tokens + 32) - self.clip_tokens)
                tokens, _, pooled, _ = pipe.encode_prompt(
                    texts,
                    texts,
                    texts,
                    device=device,
                    num_images_per_prompt=1,
                    do_classifier_free_guidance=False,
                    max_sequence_length=seq,
                )
                return Encoded(tokens, pooled)
            tokens, pooled, _ = pipe.encode_prompt(
                texts, texts, device=device, num_images_per_prompt=1, max_sequence_length=length or 32
            )
            return Encoded(tokens, pooled)

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


_UNET_KEYS = ("encoder_hidden_states", "timestep_cond", "class_labels", "attention_mask", "encoder_attention_mask")
_ADAPTERS: dict[str, FamilyAdapter] = {
    "sd": FamilyAdapter("sd", "unet", _UNET_KEYS, None, True),
    "sdxl": FamilyAdapter("sdxl", "unet", _UNET_KEYS, "added_cond_kwargs.text_embeds", True),
    "sd3": FamilyAdapter(
        "sd3",
        "transformer",
        ("hidden_states", "timestep", "encoder_hidden_states", "pooled_projections"),
        "pooled_projections",
        True,
        clip_tokens=77,
    ),
    "flux": FamilyAdapter(
        "flux",
        "transformer",
        ("hidden_states", "timestep", "guidance", "encoder_hidden_states", "pooled_projections"),
        "pooled_projections",
        False,
    ),
}


def adapter_for(pipeline_class: type) -> FamilyAdapter:
    """The steering adapter of a pipeline class (a subclass of a supported class uses its base's).

    Raises:
        UnsupportedPipelineError: the class is not a supported pipeline.
    """
    spec = spec_for(pipeline_class)
    adapter = _ADAPTERS.get(spec.family)
    if adapter is None:  # a family added to safeguard.pipelines without steering support
        raise UnsupportedPipelineError(f"steering has no adapter for the {spec.family!r} family")
    return adapter
