"""Building the output stage's image backends from a policy and the preset's ``output`` settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from safeguard.config import OutputSettings
from safeguard.errors import ConfigError
from safeguard.policy import Policy
from safeguard.stages.base import ImageStage
from safeguard.stages.clip import ClipImageStage, OpenClipImageStage
from safeguard.stages.compvis import CompVisStage
from safeguard.stages.nudenet import NudeNetStage
from safeguard.stages.opennsfw import OpenNSFWStage

__all__ = ["IMAGE_BACKENDS", "build_image_stages"]

#: Image backends by the name presets use in ``output.backends``.
IMAGE_BACKENDS: dict[str, Callable[[Policy, Any], ImageStage]] = {
    "opennsfw": OpenNSFWStage,
    "nudenet": NudeNetStage,
    "compvis": CompVisStage,
    "clip": ClipImageStage,
    "openclip": OpenClipImageStage,
}
#: Backends that join without being listed, when the user gives their weights or the policy names its model.
_JOIN_WHEN_GIVEN = (ClipImageStage, OpenClipImageStage)


def build_image_stages(policy: Policy, settings: OutputSettings) -> tuple[tuple[ImageStage, ...], tuple[str, ...]]:
    """The image stages to run, and the names of listed backends skipped because they score no policy category.

    The CLIP backends also run unlisted when weights are given (``image_model=``, ``output.clip.weights``) or
    the policy names its own ``image_model``.

    Raises:
        ConfigError: a backend name that does not exist, or a backend asked for whose weights are missing.
    """
    if not settings.enabled:
        return (), ()
    stages, skipped = [], []
    names = list(dict.fromkeys(settings.backends))
    names += [c.name for c in _JOIN_WHEN_GIVEN if c.name not in names and c.wanted(policy, settings)]
    for name in names:
        if name not in IMAGE_BACKENDS:
            raise ConfigError(f"unknown output backend {name!r}; available: {', '.join(IMAGE_BACKENDS)}")
        stage = IMAGE_BACKENDS[name](policy, settings)
        # A backend that scores no category of this policy has nothing to say about its images.
        if any(category in policy for category in stage.categories):
            stages.append(stage)
        else:
            skipped.append(stage.name)
    return tuple(stages), tuple(skipped)
