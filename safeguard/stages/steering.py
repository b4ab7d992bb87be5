"""Building the steering stage from a policy and the preset's ``steering`` settings."""

from __future__ import annotations

from safeguard.config import Settings
from safeguard.errors import ConfigError
from safeguard.policy import Policy
from safeguard.stages.base import SteeringStage

__all__ = ["build_steering_stage"]


def build_steering_stage(policy: Policy, settings: Settings) -> SteeringStage | None:
    """The steering stage for these settings, or None when steering is off.

    Raises:
        ConfigError: steering is asked for but not available.
    """
    if not settings.steering.enabled:
        return None
    raise ConfigError(
        "the steering stage is not available in this version of safeguard; "
        f"turn it off (steering=False) to use preset {settings.preset!r}"
    )
