"""What steering reads about a pipeline's family, looked up in the one family registry.

The per-family facts (how text is encoded into the denoiser's conditioning, which denoiser inputs are
batched, where the pooled embedding travels, whether CFG runs as one batched call) live in the family records
of :mod:`safeguard.pipelines`; a steering "adapter" is such a record. This module only adds the lookup that
steering makes, which also refuses a family that cannot steer.

Example:
    >>> from diffusers import StableDiffusionXLPipeline
    >>> adapter_for(StableDiffusionXLPipeline).family
    'sdxl'
"""

from __future__ import annotations

from safeguard.errors import UnsupportedPipelineError
from safeguard.pipelines import Encoded, PipelineFamily, family_for

__all__ = ["Encoded", "FamilyAdapter", "adapter_for"]

#: A steering adapter is a pipeline family record (the name is kept for the steering modules).
FamilyAdapter = PipelineFamily


def adapter_for(pipeline_class: type) -> PipelineFamily:
    """The family record of a pipeline class, for steering (a subclass of a registered class uses its base's).

    Raises:
        UnsupportedPipelineError: the class is not registered, or its family has no ``encode_fn``; the message
            says what to register.
    """
    family = family_for(pipeline_class)
    if not family.steerable:
        raise UnsupportedPipelineError(
            f"steering needs the text encoding of the {family.family!r} pipeline family, which was registered "
            f"without one: register {pipeline_class.__name__} with safeguard.register_pipeline("
            f"{pipeline_class.__name__}, family=PipelineFamily(..., encode_fn=...))"
        )
    return family
