"""The rule-based prompt stage: policy keywords and conjunctions matched on normalised text.

Keywords match whole words of the normalised prompt (so "sex" never matches "Essex"); a trailing ``*`` in a
keyword matches any word starting with the stem; plural and singular forms match each other. A keyword that
falls inside one of its category's ``allow_phrases`` does not count ("Al Gore" is not gore). Conjunctions fire
their category when all their signals are present, e.g. a sign of a minor together with sexual content.

Example:
    >>> from safeguard.policy import load_policy
    >>> from safeguard.config import resolve_settings
    >>> stage = KeywordPromptStage(load_policy(), resolve_settings().prompt)
    >>> [v.action.value for v in stage.check(["a lighthouse at dawn", "a nude portrait"])]
    ['allow', 'block']
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from safeguard.config import PromptSettings
from safeguard.normalize import normalize
from safeguard.policy import Policy
from safeguard.verdict import Action, Finding, Verdict

__all__ = ["KeywordPromptStage", "PhraseMatcher", "stem"]

#: Score of a keyword or conjunction match, and the fixed threshold of locked rules (no preset can move it).
MATCH_SCORE = 1.0
LOCKED_THRESHOLD = 0.5


def stem(word: str) -> str:
    """A light singular form, so that keyword and prompt plurals meet ("nudes" -> "nude")."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@dataclass(frozen=True)
class _Match:
    label: str
    phrase: str
    start: int
    end: int


class PhraseMatcher:
    """Matches many labelled phrases against a token sequence in one pass.

    Phrases are stored by their first (stemmed) word, so the work per token is the number of phrases that
    start with that word, not the size of the list. A word ending in ``*`` matches by prefix.
    """

    def __init__(self, labelled_phrases: Iterable[tuple[str, str]]) -> None:
        self._by_first: dict[str, list[tuple[tuple[str, ...], bool, str, str]]] = defaultdict(list)
        # Single-word prefixes ("nud*") by prefix: a word looks up each of its prefixes of a listed length, instead
        # of testing every listed prefix (the dominant cost of the keyword stage when this was a list).
        self._prefixes: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for label, phrase in labelled_phrases:
            words = tuple(phrase.casefold().split())
            if not words:
                continue
            *head, last = words
            is_prefix = last.endswith("*")
            words = (*(stem(w) for w in head), last.rstrip("*") if is_prefix else stem(last))
            if is_prefix and len(words) == 1:
                self._prefixes[words[0]].append((label, phrase))
            else:
                self._by_first[words[0]].append((words, is_prefix, label, phrase))
        self._prefix_lengths = sorted({len(p) for p in self._prefixes})

    def find(self, words: Sequence[str]) -> list[_Match]:
        """All matches in ``words`` (already casefolded and stemmed)."""
        matches = []
        for i, word in enumerate(words):
            for phrase_words, is_prefix, label, phrase in self._by_first.get(word, ()):
                end = i + len(phrase_words)
                if end > len(words):
                    continue
                body_ok = all(words[i + k] == phrase_words[k] for k in range(1, len(phrase_words) - 1))
                last = words[end - 1]
                last_ok = last.startswith(phrase_words[-1]) if is_prefix else last == phrase_words[-1]
                if body_ok and (len(phrase_words) == 1 or last_ok):
                    matches.append(_Match(label, phrase, i, end))
            for length in self._prefix_lengths:
                if length > len(word):
                    break
                for label, phrase in self._prefixes.get(word[:length], ()):
                    matches.append(_Match(label, phrase, i, i + 1))
        return matches


_WORD = re.compile(r"\w+")
_AGE_WORDS = re.compile(r"[a-z0-9]+")
_AGE_SUFFIXES = ("yo", "yrs", "yr", "yearold", "yearsold")


def _stated_ages(text: str) -> list[int]:
    """Ages written as "12 year old", "12 years old", "12yo", "12 yo", "aged 12" or "age 12"."""
    words = _AGE_WORDS.findall(unicodedata.normalize("NFKC", text).casefold())
    ages = []
    for i, word in enumerate(words):
        digits = word.rstrip("abcdefghijklmnopqrstuvwxyz")
        if not digits.isdigit() or len(digits) > 3:
            continue
        suffix = word[len(digits) :]
        after = words[i + 1 : i + 3]
        spelled_out = after[:1] == ["yo"] or (after[:1] in (["year"], ["years"]) and after[1:] == ["old"])
        prefixed = i > 0 and words[i - 1] in ("aged", "age")
        if suffix in _AGE_SUFFIXES or (not suffix and (spelled_out or prefixed)):
            ages.append(int(digits))
    return ages


class KeywordPromptStage:
    """Scores prompts with the policy's keywords, allow-phrases, signals and conjunctions.

    With ``locked_only`` it checks only the locked categories and conjunctions: that instance runs under
    every preset, with every stage toggled off.
    """

    name = "keywords"

    def __init__(self, policy: Policy, settings: PromptSettings, *, locked_only: bool = False) -> None:
        self.policy = policy
        self.settings = settings
        self.locked_only = locked_only
        categories = [c for c in policy.enforced("prompt") if (c.locked or not locked_only) and c.keywords]
        self._categories = tuple(c.id for c in categories)
        self._scored = tuple(c.id for c in policy.enforced("prompt") if c.locked or not locked_only)
        self._locked = set(policy.locked_categories)
        self._conjunctions = tuple(r for r in policy.conjunctions if r.locked or not locked_only)
        needed_signals = {name for rule in self._conjunctions for name in rule.all_of}
        phrases: list[tuple[str, str]] = [(f"c:{c.id}", k) for c in categories for k in c.keywords]
        phrases += [(f"a:{c.id}", p) for c in categories for p in c.allow_phrases]
        for signal in policy.signals:
            if signal.id in needed_signals:
                phrases += [(f"s:{signal.id}", k) for k in signal.keywords]
                for included in signal.include_categories:
                    phrases += [(f"s:{signal.id}", k) for k in policy[included].keywords]
        for rule in self._conjunctions:
            for name in rule.all_of:
                if name in policy:
                    phrases += [(f"s:{name}", k) for k in policy[name].keywords]
        self._matcher = PhraseMatcher(phrases)
        self._age_signals = {s.id: s.age_below for s in policy.signals if s.age_below and s.id in needed_signals}

    def check(self, prompts: Sequence[str]) -> list[Verdict]:
        return [self._check_one(prompt) for prompt in prompts]

    def _check_one(self, prompt: str) -> Verdict:
        normalized = normalize(prompt)
        hits: dict[str, list[str]] = defaultdict(list)
        signals: set[str] = set()
        forms = (normalized.tokens, *(_WORD.findall(v) for v in normalized.variants))
        for tokens in forms:
            words = [stem(w) for w in tokens]
            matches = self._matcher.find(words)
            allowed = [m for m in matches if m.label.startswith("a:")]
            for match in matches:
                kind, name = match.label.split(":", 1)
                if kind == "s":
                    signals.add(name)
                elif kind == "c" and not any(
                    a.label[2:] == name and a.start <= match.start and match.end <= a.end for a in allowed
                ):
                    hits[name].append(match.phrase)
        if self._age_signals:
            ages = _stated_ages(prompt)
            signals.update(s for s, below in self._age_signals.items() if any(age < below for age in ages))

        findings: list[Finding] = []
        scores = dict.fromkeys(self._scored, 0.0)
        for category, phrases in hits.items():
            scores[category] = MATCH_SCORE
            findings.append(self._finding(category, f"keyword: {', '.join(sorted(set(phrases)))}", "keyword"))
        for rule in self._conjunctions:
            if all(name in signals or name in hits for name in rule.all_of):
                scores[rule.category] = MATCH_SCORE
                findings.append(
                    self._finding(rule.category, f"{' + '.join(rule.all_of)}", f"conjunction:{rule.id}", rule.locked)
                )
        findings = [f for f in findings if f.action is not Action.ALLOW]
        return Verdict.for_stage(findings, scores, self.policy, "locked" if self.locked_only else "prompt")

    def _finding(self, category: str, detail: str, source: str, locked: bool = False) -> Finding:
        locked = locked or category in self._locked
        if locked:
            steer, block = None, LOCKED_THRESHOLD
        else:
            steer, block = self.settings.thresholds.for_category(category)
        if block <= MATCH_SCORE:
            action, threshold = Action.BLOCK, block
        elif steer is not None and steer <= MATCH_SCORE:
            action, threshold = Action.STEER, steer
        else:
            action, threshold = Action.ALLOW, block
        stage = "locked" if locked and self.locked_only else "prompt"
        return Finding(category, MATCH_SCORE, threshold, stage, action, source, detail, locked)
