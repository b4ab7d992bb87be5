"""Which language a prompt is written in, and whether the prompt stage can judge it.

Identification uses py3langid, whose model ships in its wheel (no download, works offline). The languages a
policy *judges* are English and every language its categories and signals list keywords for
(:func:`policy_languages`). A prompt is read as one of three things:

- ``en`` or ``und`` (undetermined): the English semantic heads read it, as they always did. A prompt is
  undetermined when it is mostly Latin letters and no language other than English reaches ``min_confidence``
  (short prompts, token soup, English with a foreign word or name).
- A judged language other than English, identified with at least ``min_confidence`` among the judged languages,
  or, for a prompt too short to be identified confidently, at least ``LIKELY`` and ``ENGLISH_RATIO`` times as
  likely as English and with few English words (measured: 57 of 17,140 English prompts of the development
  sets, mostly names, memes and token soup, lose the English heads this way; the keyword rules still read
  them), or any prompt written mostly in Cyrillic, Chinese, Japanese, Korean or Arabic script: the English
  heads read such text as noise, so only the keyword rules (with the policy's lists for that language) judge it.
- A language the policy does not judge, identified with at least ``min_confidence`` among all of py3langid's
  languages (Swedish, Vietnamese, ...), or a prompt mostly in another script (Greek, Hebrew, Thai, Devanagari,
  ...): the preset's ``prompt.unjudged_language`` says what happens to it.

The identifiers are built once per language set and readings are cached per text; a reading costs about
0.1 to 0.4 ms (one or two classifications of a short text).

Example:
    >>> reader = LanguageReader.for_languages(("en", "fr", "de"))
    >>> prompts = ["a cat on a sofa", "un chat endormi sur un canapé", "con mèo ngủ trên ghế sofa"]
    >>> [reader.read(prompt).language for prompt in prompts]
    ['und', 'fr', 'vi']
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from safeguard.errors import ConfigError
from safeguard.normalize import light_fold
from safeguard.policy import Policy

__all__ = ["UNDETERMINED", "LanguageReader", "Reading", "policy_languages"]

UNDETERMINED = "und"
#: py3langid's code for text without linguistic content: read as undetermined, never as a language.
_NO_LANGUAGE = "zxx"
#: Letters a prompt needs before a Latin-script identification counts (below it: undetermined).
MIN_LETTERS = 8
#: A short Latin-script prompt is not read as English when a judged language is at least this likely ...
LIKELY = 0.2
#: ... and at least this many times as likely as English.
ENGLISH_RATIO = 2.0
#: ... unless at least this share of its words are whole words of MiniLM's (English) vocabulary ("sad",
#: "black woman twerking"): measured, this keeps 33 of the 90 English development prompts the rule above
#: would take from the heads, and 3 of the 60 short foreign prompts it catches ("pôr do sol", "cane").
ENGLISH_WORDS = 0.75
_WORD = re.compile(r"[^\W\d_]+")
#: Scripts whose languages the policy's lists cover, by the first word of a letter's Unicode name.
_JUDGED_SCRIPTS = ("LATIN", "CYRILLIC", "CJK", "HIRAGANA", "KATAKANA", "HANGUL", "ARABIC")


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


@dataclass(frozen=True)
class Reading:
    """What the prompt stage makes of a prompt's language.

    Attributes:
        language: an ISO 639 code as py3langid writes it, or ``"und"``.
        probability: py3langid's probability for ``language`` (0.0 for ``und`` without letters).
        judged: the policy judges this language (English, undetermined and the languages it lists).
        english: the English semantic heads read the prompt (``en`` and ``und``).
    """

    language: str
    probability: float
    judged: bool
    english: bool


@lru_cache(maxsize=1)
def _model() -> tuple[Any, ...]:
    """py3langid's model, loaded once (the arrays are shared by every identifier built from it)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return (LanguageIdentifier, MODEL_FILE)


@lru_cache(maxsize=16)
def identifier(languages: tuple[str, ...] | None) -> Any:
    """A py3langid identifier with normalised probabilities, restricted to ``languages`` (None: all of them).

    Raises:
        ConfigError: py3langid knows none of ``languages``.
    """
    cls, model_file = _model()
    found = cls.from_model_file(model_file, norm_probs=True)
    if languages is not None:
        known = [code for code in languages if code in found.nb_classes]
        if not known:
            raise ConfigError(f"py3langid knows none of the languages {list(languages)}")
        found.set_languages(known)
    return found


@lru_cache(maxsize=1 << 14)
def _script(char: str) -> str:
    name = unicodedata.name(char, "")
    return name.split(" ", 1)[0] if name else ""


@lru_cache(maxsize=1)
def _english_words() -> frozenset[str]:
    """The whole words of MiniLM's vocabulary (English, uncased), or none where its wheel is missing."""
    try:
        from safeguard.semantic import model_dir

        with open(Path(model_dir()) / "vocab.txt", encoding="utf-8") as handle:
            return frozenset(line.strip() for line in handle if not line.startswith("##"))
    except Exception:  # without the vocabulary the rule does not apply
        return frozenset()


def _english_word_share(text: str) -> float:
    words = _WORD.findall(light_fold(text))
    vocabulary = _english_words()
    if not words or not vocabulary:
        return 0.0
    return sum(word in vocabulary for word in words) / len(words)


class LanguageReader:
    """Reads prompts' languages against a set of judged languages; build it with :meth:`for_languages`."""

    def __init__(self, languages: Sequence[str], min_confidence: float = 0.9) -> None:
        self.languages = tuple(sorted(set(languages) | {"en"}))
        self.min_confidence = min_confidence
        self._all = identifier(None)
        self._judged = identifier(self.languages)
        self.read = lru_cache(maxsize=1 << 14)(self._read)

    @classmethod
    @lru_cache(maxsize=8)
    def for_languages(cls, languages: tuple[str, ...], min_confidence: float = 0.9) -> LanguageReader:
        """The reader for ``languages`` (English is always judged), built once per set."""
        return cls(languages, min_confidence)

    @classmethod
    def for_policy(cls, policy: Policy) -> LanguageReader:
        """The reader for the languages ``policy`` judges."""
        return cls.for_languages(tuple(policy_languages(policy)))

    def read_all(self, texts: Sequence[str]) -> list[Reading]:
        return [self.read(text) for text in texts]

    def _read(self, text: str) -> Reading:
        letters = [c for c in text if c.isalpha()]
        if not letters:
            return Reading(UNDETERMINED, 0.0, True, True)
        if text.isascii():
            latin = judged_script = 1.0
        else:
            scripts = [_script(c) for c in letters]
            latin = scripts.count("LATIN") / len(letters)
            judged_script = sum(s in _JUDGED_SCRIPTS for s in scripts) / len(letters)
        code, probability = self._judged.classify(text)
        if code == "en" and probability >= self.min_confidence and latin >= 0.5:
            return Reading("en", float(probability), True, True)
        judged_code, judged_probability = code, probability
        code, probability = self._all.classify(text)
        if code == _NO_LANGUAGE:
            code, probability = UNDETERMINED, 0.0
        confident = probability >= self.min_confidence and (latin < 0.5 or len(letters) >= MIN_LETTERS)
        if code not in self.languages and code != UNDETERMINED and (confident or judged_script < 0.5):
            return Reading(code, float(probability), False, False)
        code, probability = judged_code, judged_probability
        if latin >= 0.5:
            if code != "en" and probability >= self.min_confidence and len(letters) >= MIN_LETTERS:
                return Reading(code, float(probability), True, False)
            # Short prompts are rarely identified confidently. One whose likeliest judged language is not
            # English, at least LIKELY and at least ENGLISH_RATIO times as likely as English, is not read as
            # English either ("bicicleta roja", "rotes Fahrrad"): the heads would read it as noise.
            ranked = dict(self._judged.rank(text))
            english_p = ranked.get("en", 0.0)
            top, top_p = max(((c, p) for c, p in ranked.items() if c != "en"), key=lambda cp: cp[1])
            if top_p >= LIKELY and top_p >= ENGLISH_RATIO * english_p and _english_word_share(text) < ENGLISH_WORDS:
                return Reading(top, float(top_p), True, False)
            english = code == "en" and probability >= self.min_confidence
            return Reading("en" if english else UNDETERMINED, float(probability), True, True)
        # Mostly Cyrillic, CJK, Hangul or Arabic letters: the English heads cannot read it, whatever its length.
        if code == "en":
            code = self._judged_non_english(text)
        return Reading(code, float(probability), True, False)

    def _judged_non_english(self, text: str) -> str:
        ranked = [code for code, _ in self._judged.rank(text) if code != "en"]
        return ranked[0] if ranked else UNDETERMINED
