"""Building the prompt stages from a policy and the preset's ``prompt`` settings."""

from __future__ import annotations

from safeguard.config import Settings
from safeguard.policy import Policy
from safeguard.stages.base import PromptStage
from safeguard.stages.keywords import KeywordPromptStage
from safeguard.stages.semantic import SemanticPromptStage

__all__ = ["build_prompt_stages"]


def build_prompt_stages(policy: Policy, settings: Settings) -> tuple[PromptStage, ...]:
    """The prompt stages whose verdicts combine per prompt (block wins).

    With the prompt stage on: the keyword rules, and semantic scoring where the policy has a calibration.
    With it off: only the locked rules, which nothing may disable.
    """
    if not settings.prompt.enabled:
        return (KeywordPromptStage(policy, settings.prompt, locked_only=True),)
    semantic = SemanticPromptStage.for_policy(policy, settings.prompt)
    keywords = KeywordPromptStage(policy, settings.prompt)
    return (keywords,) if semantic is None else (keywords, semantic)
