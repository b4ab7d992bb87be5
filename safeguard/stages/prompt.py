"""Building the prompt stages from a policy and the preset's ``prompt`` settings."""

from __future__ import annotations

from safeguard.config import Settings
from safeguard.language import LanguageReader
from safeguard.policy import Policy
from safeguard.stages.base import PromptStage
from safeguard.stages.keywords import KeywordPromptStage
from safeguard.stages.language import EnglishOnlyStage, UnjudgedLanguageStage
from safeguard.stages.semantic import SemanticPromptStage

__all__ = ["build_prompt_stages"]


def build_prompt_stages(policy: Policy, settings: Settings) -> tuple[PromptStage, ...]:
    """The prompt stages whose verdicts combine per prompt (block wins).

    With the prompt stage on: the keyword rules (every language the policy lists, on every prompt), semantic
    scoring where the policy has a calibration, on the prompts read as English or undetermined only (its heads
    are English; :mod:`safeguard.stages.language`), and, where ``prompt.unjudged_language`` is ``block``, a block
    for prompts in a language the policy does not judge. With it off: only the locked rules, which nothing may
    disable.
    """
    if not settings.prompt.enabled:
        return (KeywordPromptStage(policy, settings.prompt, locked_only=True),)
    semantic = SemanticPromptStage.for_policy(policy, settings.prompt)
    stages: list[PromptStage] = [KeywordPromptStage(policy, settings.prompt)]
    reader = LanguageReader.for_policy(policy)
    if semantic is not None:
        stages.append(EnglishOnlyStage(semantic, policy, reader))
    if settings.prompt.unjudged_language == "block":
        stages.append(UnjudgedLanguageStage(policy, settings.prompt, reader))
    return tuple(stages)
