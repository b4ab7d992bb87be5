"""Language gating of the prompt stages: which prompts the English semantic heads read, and what happens to a
prompt in a language the policy does not judge.

- :class:`EnglishOnlyStage` wraps the semantic stage, whose heads were fit on English text and read other
  languages as noise ("un chat endormi sur un canapé" scored 0.71 for violence). It scores only the prompts
  :class:`~safeguard.language.LanguageReader` reads as English or undetermined; every other prompt gets an
  empty verdict from it (scores 0), and the keyword rules, with the policy's lists for that language, judge it.
- :class:`UnjudgedLanguageStage` gives a prompt in a language the policy does not judge (not English and none
  that its categories list keywords for) a ``block`` finding, for presets whose ``prompt.unjudged_language`` is
  ``block``. The finding's category is ``safeguard_circumvention`` where the policy has it (writing in a
  language the filter cannot read is a way around it), else ``stage_failure``; its detail names the language.

Example:
    >>> from safeguard.policy import load_policy
    >>> from safeguard.config import resolve_settings
    >>> stage = UnjudgedLanguageStage(load_policy(), resolve_settings(preset="strict").prompt)
    >>> [v.action.value for v in stage.check(["a red bicycle", "con mèo ngủ trên ghế sofa"])]
    ['allow', 'block']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from safeguard.config import PromptSettings
from safeguard.language import LanguageReader
from safeguard.policy import Policy
from safeguard.stages.base import PromptStage
from safeguard.verdict import STAGE_FAILURE, Action, Finding, Verdict

__all__ = ["UNJUDGED_CATEGORY", "EnglishOnlyStage", "UnjudgedLanguageStage"]

#: The category of an unjudged-language finding, where the policy has it.
UNJUDGED_CATEGORY = "safeguard_circumvention"


class EnglishOnlyStage:
    """A prompt stage that scores only what its English model can read; everything else it leaves alone.

    Attributes other than ``check`` (``name``, ``categories``, ``heads``, ...) are the wrapped stage's.
    """

    def __init__(self, inner: PromptStage, policy: Policy, reader: LanguageReader | None = None) -> None:
        self.inner = inner
        self.policy = policy
        self.reader = reader or LanguageReader.for_policy(policy)

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    @property
    def name(self) -> str:
        return self.inner.name

    def check(self, prompts: Sequence[str]) -> list[Verdict]:
        readings = self.reader.read_all(prompts)
        english = [i for i, reading in enumerate(readings) if reading.english]
        scored = iter(self.inner.check([prompts[i] for i in english]) if english else ())
        categories = tuple(getattr(self.inner, "categories", ()))
        empty = Verdict.for_stage([], dict.fromkeys(categories, 0.0), self.policy, "prompt")
        return [next(scored) if reading.english else empty for reading in readings]


class UnjudgedLanguageStage:
    """Blocks prompts in a language the policy does not judge, for presets whose setting says so."""

    name = "language"

    def __init__(self, policy: Policy, settings: PromptSettings, reader: LanguageReader | None = None) -> None:
        self.policy = policy
        self.settings = settings
        self.reader = reader or LanguageReader.for_policy(policy)
        self.category = UNJUDGED_CATEGORY if UNJUDGED_CATEGORY in policy else STAGE_FAILURE
        #: The categories this stage can flag.
        self.categories: tuple[str, ...] = (self.category,) if settings.unjudged_language == "block" else ()

    def check(self, prompts: Sequence[str]) -> list[Verdict]:
        verdicts = []
        for reading in self.reader.read_all(prompts):
            findings = []
            if not reading.judged and self.settings.unjudged_language == "block":
                detail = (
                    f"language {reading.language} (py3langid, p={reading.probability:.2f}) is not one the prompt "
                    f"stage judges ({', '.join(self.reader.languages)}); prompt.unjudged_language: block"
                )
                findings.append(Finding(self.category, 1.0, 1.0, "prompt", Action.BLOCK, "language", detail))
            verdicts.append(Verdict.for_stage(findings, {}, self.policy, "prompt"))
        return verdicts
