"""Which language a prompt is written in, for the per-language figures of ``safeguard eval``.

Identification uses py3langid (its model ships in the wheel), restricted to the languages
the policy's rules read: English plus every language its categories and signals list. Short prompts and token
soup are often unclear, so a prompt whose most likely language has a probability below ``min_confidence`` is
``und`` (undetermined) rather than a guess.

Example:
    >>> identify_languages(["a red bicycle leaning on a wall", "ein rotes Fahrrad an der Wand"], ["en", "de"])
    ['en', 'de']
"""

from __future__ import annotations

from collections.abc import Sequence

from safeguard.errors import ConfigError
from safeguard.policy import Policy

__all__ = ["UNDETERMINED", "identify_languages", "policy_languages"]

UNDETERMINED = "und"


def policy_languages(policy: Policy) -> list[str]:
    """English and the languages whose keywords the policy lists (categories and signals).

    Example:
        >>> from safeguard.policy import load_policy
        >>> "de" in policy_languages(load_policy())
        True
    """
    found = {"en"}
    for item in (*policy.categories, *policy.signals):
        found.update(language for language, _ in item.languages)
    return sorted(found)


def identify_languages(texts: Sequence[str], languages: Sequence[str], min_confidence: float = 0.9) -> list[str]:
    """The language code of each text among ``languages``, or ``"und"`` below ``min_confidence``.

    Raises:
        ConfigError: py3langid knows none of ``languages``.
    """
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    known = [code for code in languages if code in identifier.nb_classes]
    if not known:
        raise ConfigError(f"py3langid knows none of the languages {list(languages)}")
    identifier.set_languages(known)
    results = []
    for text in texts:
        code, probability = identifier.classify(text)
        results.append(code if probability >= min_confidence else UNDETERMINED)
    return results
