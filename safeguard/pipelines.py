"""Which diffusers pipelines safeguard supports, and where each keeps its prompts and denoiser.

A class-keyed registry: a subclass of a supported pipeline is supported through its base; any other class
raises :class:`~safeguard.errors.UnsupportedPipelineError` naming it and the supported ones.

Example:
    >>> from diffusers import FluxPipeline
    >>> spec_for(FluxPipeline).prompt_args
    ('prompt', 'prompt_2')
"""

from __future__ import annotations

from dataclasses import dataclass

import diffusers

from safeguard.errors import UnsupportedPipelineError

__all__ = ["PipelineSpec", "spec_for"]


@dataclass(frozen=True)
class PipelineSpec:
    """What safeguard needs to know about one pipeline family.

    Attributes:
        family: ``"sd"``, ``"sdxl"``, ``"sd3"`` or ``"flux"``.
        prompt_args: the call arguments that carry prompt text, checked before any denoiser step.
        denoiser: the component that runs once per step (``"unet"`` or ``"transformer"``).
    """

    family: str
    prompt_args: tuple[str, ...]
    denoiser: str


_SD = PipelineSpec("sd", ("prompt",), "unet")
_SDXL = PipelineSpec("sdxl", ("prompt", "prompt_2"), "unet")
_SD3 = PipelineSpec("sd3", ("prompt", "prompt_2", "prompt_3"), "transformer")
_FLUX = PipelineSpec("flux", ("prompt", "prompt_2"), "transformer")

_REGISTRY: dict[str, PipelineSpec] = {
    "StableDiffusionPipeline": _SD,
    "StableDiffusionImg2ImgPipeline": _SD,
    "StableDiffusionXLPipeline": _SDXL,
    "StableDiffusionXLImg2ImgPipeline": _SDXL,
    "StableDiffusion3Pipeline": _SD3,
    "StableDiffusion3Img2ImgPipeline": _SD3,
    "FluxPipeline": _FLUX,
    "FluxImg2ImgPipeline": _FLUX,
}


def spec_for(pipeline_class: type) -> PipelineSpec:
    """The spec of ``pipeline_class`` or of the nearest supported diffusers class it derives from.

    Raises:
        UnsupportedPipelineError: no supported class in its bases.
    """
    for klass in pipeline_class.__mro__:
        spec = _REGISTRY.get(klass.__name__)
        if spec is not None and getattr(diffusers, klass.__name__, None) is klass:
            return spec
    raise UnsupportedPipelineError(
        f"safeguard does not support {pipeline_class.__module__}.{pipeline_class.__qualname__}; "
        f"supported pipelines: {', '.join(_REGISTRY)}"
    )
