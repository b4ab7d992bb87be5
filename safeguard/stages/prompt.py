"""Building the prompt stage from a policy and the preset's ``prompt`` settings."""

from __future__ import annotations

from safeguard.config import Settings
from safeguard.policy import Policy
from safeguard.stages.base import PromptStage
from safeguard.stages.keywords import KeywordPromptStage

__all__ = ["build_prompt_stage"]


def build_prompt_stage(policy: Policy, settings: Settings) -> PromptStage:
    """The prompt stage; with the stage off, only the locked rules (which nothing may disable) run."""
    return KeywordPromptStage(policy, settings.prompt, locked_only=not settings.prompt.enabled)
