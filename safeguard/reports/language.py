"""Which language a prompt is written in, for the per-language figures of ``safeguard eval``.

Identification uses py3langid (its model ships in the wheel) through :mod:`safeguard.language`, the one home
of the identifier that the prompt stage also uses, restricted to the languages the policy's rules read:
English plus every language its categories and signals list. Short prompts and token soup are often unclear,
so a prompt whose most likely language has a probability below ``min_confidence`` is ``und`` (undetermined)
rather than a guess.

Example:
    >>> identify_languages(["a red bicycle leaning on a wall", "ein rotes Fahrrad an der Wand"], ["en", "de"])
    ['en', 'de']
"""

from __future__ import annotations

from collections.abc import Sequence

from safeguard.language import UNDETERMINED, identifier, policy_languages

__all__ = ["UNDETERMINED", "identify_languages", "policy_languages"]


def identify_languages(texts: Sequence[str], languages: Sequence[str], min_confidence: float = 0.9) -> list[str]:
    """The language code of each text among ``languages``, or ``"und"`` below ``min_confidence``.

    Raises:
        ConfigError: py3langid knows none of ``languages``.
    """
    found = identifier(tuple(sorted(set(languages))))
    results = []
    for text in texts:
        code, probability = found.classify(text)
        results.append(code if probability >= min_confidence else UNDETERMINED)
    return results
