"""Building the output stage's image backends from a policy and the preset's ``output`` settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from safeguard.config import OutputSettings
from safeguard.errors import ConfigError
from safeguard.policy import Policy
from safeguard.stages.base import ImageStage
from safeguard.stages.opennsfw import OpenNSFWStage

__all__ = ["IMAGE_BACKENDS", "build_image_stages"]

#: Image backends by the name presets use in ``output.backends``.
IMAGE_BACKENDS: dict[str, Callable[[Policy, Any], ImageStage]] = {"opennsfw": OpenNSFWStage}


def build_image_stages(policy: Policy, settings: OutputSettings) -> tuple[tuple[ImageStage, ...], tuple[str, ...]]:
    """The image stages to run, and the names of listed backends skipped because they score no policy category.

    Raises:
        ConfigError: a backend name that does not exist.
    """
    if not settings.enabled:
        return (), ()
    stages, skipped = [], []
    for name in settings.backends:
        if name not in IMAGE_BACKENDS:
            raise ConfigError(f"unknown output backend {name!r}; available: {', '.join(IMAGE_BACKENDS)}")
        stage = IMAGE_BACKENDS[name](policy, settings)
        # A backend that scores no category of this policy has nothing to say about its images.
        if any(category in policy for category in stage.categories):
            stages.append(stage)
        else:
            skipped.append(stage.name)
    return tuple(stages), tuple(skipped)
