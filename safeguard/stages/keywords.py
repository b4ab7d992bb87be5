"""The rule-based prompt stage: policy keywords and conjunctions matched on normalised text.

Keywords match whole words of the normalised prompt (so "sex" never matches "Essex"); a trailing ``*`` in a
keyword matches any word starting with the stem; plural and singular forms match each other. A keyword that
falls inside one of its category's (or signal's) ``allow_phrases`` does not count ("Al Gore" is not gore).
Conjunctions fire their category when all their signals are present, e.g. a sign of a minor together with
sexual content.

What the matcher sees: the prompt's normalised text and its variants (:mod:`safeguard.normalize`), with every
Cyrillic, Greek or Armenian look-alike letter read as Latin ("ребёнок" is matched as "peбehok"), and a light
fold of the prompt (compatibility forms, accents, invisible characters and case, but no leetspeak, so that
"13歳" keeps its digits). Keywords in any language are folded the same way when the stage is built, so a
policy writes them as the language spells them. Words in Chinese or Japanese script are matched as
substrings of the prompt under NFKC (keeping the dakuten that the normalised text drops), since those scripts
put no spaces between words. Arabic words are also tried without a leading و/ف and ال, بال, لل, ب, ل, ك.
An allow-phrase whose unaccented spelling is a keyword of its own category ("góry", Polish mountains, against
"gory"; "râpé", French grated, against "rape") counts only with its accents, and takes that keyword back when
the prompt writes the word with them and never without.

A signal with ``age_below`` also matches a stated age below it, read with its per-language ``ages`` lexicon:
number words and digits in age patterns ("twelve-year-old", "12 y/o", "9-y-o", "aged 12", "12歳", "12살"),
and school years up to ``grades_up_to`` ("5th grader", "in grade 7", "year 8 pupil"). Patterns match words
whatever separated them in the prompt, so "12-year-old", "12_year_old" and "12.year.old" read alike. An age
is not one when a word of ten, twenty, ... comes before its number ("twenty one year old"), a thing word
follows it ("a 12 year old whisky") or one of the lexicon's allow-phrases overlaps it ("12 years ago").

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
from functools import lru_cache

from safeguard.config import PromptSettings

# Step 1 of normalisation and its look-alike table, reused so that the light fold and the look-alike
# reading agree with normalize() character for character.
from safeguard.normalize import latin_skeleton, light_fold, normalize
from safeguard.policy import AgeLexicon, Policy, Signal
from safeguard.verdict import Action, Finding, Verdict

__all__ = ["KeywordPromptStage", "PhraseMatcher", "fold_phrase", "stem"]

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
    start with that word, not the size of the list. A word ending in ``*`` matches by prefix. With
    ``stem_words=False`` phrases are kept as written, for words that are matched unstemmed.
    """

    def __init__(self, labelled_phrases: Iterable[tuple[str, str]], *, stem_words: bool = True) -> None:
        fold = stem if stem_words else str
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
            words = (*(fold(w) for w in head), last.rstrip("*") if is_prefix else fold(last))
            if is_prefix and len(words) == 1:
                self._prefixes[words[0]].append((label, phrase))
            else:
                self._by_first[words[0]].append((words, is_prefix, label, phrase))
        self._prefix_lengths = sorted({len(p) for p in self._prefixes})

    def find(self, words: Sequence[str]) -> list[_Match]:
        """All matches in ``words`` (already casefolded, and stemmed unless ``stem_words`` was False)."""
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


_TOKEN = re.compile(r"[^\W_]+")
# Han, kana and their compatibility forms: scripts written without spaces between words.
_UNSPACED = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]")
_DIGIT = re.compile(r"\d")
# Single digits parted by one space, read as one number ("2 5" is 25; "12 13" and "2-3" are left alone).
_SPACED_DIGITS = re.compile(r"(?<![\d.,])(\d) (?=\d(?!\d))")
_ARABIC_TOKEN = re.compile(r"[\u0600-\u06ff]+")
_ARABIC_CLITICS = re.compile(r"[وف]?(?:بال|كال|فال|وال|لل|ال|ب|ل|ك)?")
_MIN_ARABIC_STEM = 3


def _whole_words(phrase: str) -> re.Pattern[str]:
    """A regex for ``phrase`` as whole words of a text."""
    return re.compile(rf"(?<![^\W_]){re.escape(phrase)}(?![^\W_])")


def _unspaced_fold(text: str) -> str:
    """Text for substring matching in Chinese and Japanese: NFKC, case folded, without spaces or invisibles."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(c for c in text if not c.isspace() and unicodedata.category(c) not in ("Cf", "Cc"))


def _fold_words(text: str) -> list[str]:
    """The words a matcher sees for ``text`` (normalised, look-alikes read as Latin)."""
    return _TOKEN.findall(latin_skeleton(normalize(text).text))


@lru_cache(maxsize=1 << 14)
def fold_phrase(phrase: str) -> str:
    """A keyword or phrase as the matcher sees it; a trailing ``*`` on a word is kept.

    Example:
        >>> fold_phrase("Sous-Vêtement*"), fold_phrase("ребёнок")
        ('sous vetement*', 'peбehok')
    """
    if _UNSPACED.search(phrase):
        return _unspaced_fold(phrase).rstrip("*")
    words = []
    for word in phrase.split():
        star = word.endswith("*")
        folded = _fold_words(word.rstrip("*"))
        if folded and star:
            folded[-1] += "*"
        words += folded
    return " ".join(words)


def _strip_clitics(word: str) -> str:
    """An Arabic word without a leading conjunction and article or preposition ("والأطفال" -> "اطفال")."""
    if not _ARABIC_TOKEN.fullmatch(word):
        return word
    rest = word[_ARABIC_CLITICS.match(word).end() :]
    return rest if len(rest) >= _MIN_ARABIC_STEM else word


class _SubstringMatcher:
    """Matches labelled phrases anywhere in a text (for scripts without spaces), overlaps included."""

    def __init__(self, labelled_phrases: Iterable[tuple[str, str]]) -> None:
        self._by_first: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for label, phrase in labelled_phrases:
            if phrase:
                self._by_first[phrase[0]].append((phrase, label))

    def __bool__(self) -> bool:
        return bool(self._by_first)

    def find(self, text: str) -> list[_Match]:
        matches = []
        for i, char in enumerate(text):
            for phrase, label in self._by_first.get(char, ()):
                if text.startswith(phrase, i):
                    matches.append(_Match(label, phrase, i, i + len(phrase)))
        return matches


# --- Stated ages and school years ---------------------------------------------------------------------

#: Endings of a digit ordinal: "5th", "5e"/"5eme" (fr), "5o"/"5a" (es, pt: "5º"), "5to" (es), "5de" (nl).
_ORDINAL_ENDINGS = ("st", "nd", "rd", "th", "e", "eme", "er", "ere", "re", "o", "a", "to", "vo", "mo", "ro", "do")
_ORDINAL_ENDINGS += ("no", "ero", "te", "de", "ste")
#: Words that join a ten to its unit ("vingt et un", "vinte e um", "treinta y uno").
_NUMBER_JOINERS = frozenset({"and", "et", "e", "y", "i", "und", "en", "и", "ve"})
_PLACEHOLDER = re.compile(r"(\{n\}|\{nth\})")


def _literal(text: str, spaced: bool) -> str:
    """Regex for a literal piece of a pattern word; a trailing ``*`` is any ending."""
    star = text.endswith("*")
    text = text.rstrip("*")
    # Patterns run on the normalised words, so even Chinese and Japanese literals are folded by normalize().
    folded = (" " if spaced else "").join(_fold_words(text))
    return re.escape(folded) + (r"[^\W_]*" if star else "")


class _NumberWords:
    """One language's number and ordinal words, as regex alternatives and as values."""

    def __init__(self, lexicon: AgeLexicon) -> None:
        self.values: dict[str, int] = {}
        self.ordinal_values: dict[str, int] = {}
        self.ordinal_stems: list[tuple[str, int]] = []
        for word, value in lexicon.numbers:
            self.values[fold_phrase(word)] = value
        for word, value in lexicon.ordinals:
            folded = fold_phrase(word)
            if folded.endswith("*"):
                self.ordinal_stems.append((folded[:-1], value))
            else:
                self.ordinal_values[folded] = value
        self.ordinal_stems.sort(key=lambda pair: -len(pair[0]))
        # The characters of number words in scripts without spaces (一, 二, 十, ...): one before a number
        # means the number goes on ("二十二歳" is 22, not 12).
        self.numeral_chars = "".join(sorted({c for w in self.values for c in w if _UNSPACED.match(c)}))
        by_length = sorted(self.values, key=len, reverse=True)
        self.number = "|".join([r"\d{1,3}", *(re.escape(w) for w in by_length)])
        ordinals = sorted(self.ordinal_values, key=len, reverse=True)
        stems = [re.escape(stem) + r"[^\W_]*" for stem, _ in self.ordinal_stems]
        endings = "|".join(sorted(_ORDINAL_ENDINGS, key=len, reverse=True))
        self.ordinal = "|".join([rf"\d{{1,2}}(?:{endings})?", *(re.escape(w) for w in ordinals), *stems])

    def value(self, text: str, ordinal: bool) -> int | None:
        digits = text.rstrip("".join(sorted({c for e in _ORDINAL_ENDINGS for c in e}))) if ordinal else text
        if digits.isdigit():
            return int(digits)
        if not ordinal:
            return self.values.get(text)
        if text in self.ordinal_values:
            return self.ordinal_values[text]
        return next((v for stem, v in self.ordinal_stems if text.startswith(stem)), None)

    def is_tens(self, word: str) -> bool:
        value = self.values.get(word)
        return value is not None and value >= 10 and value % 10 == 0


@dataclass(frozen=True)
class _Branch:
    """One compiled age, grade or allow pattern."""

    kind: str  # "age", "grade" or "allow"
    regex: re.Pattern[str]
    groups: tuple[tuple[str, bool], ...]  # the group of each placeholder, and whether it is an ordinal
    lexicon: _NumberWords
    spaced: bool
    things: re.Pattern[str] | None


@dataclass
class _Anchors:
    """Which patterns could match a text, from the words they need: most prompts need none run."""

    words: dict[str, set[int]]  # a literal word of the pattern, as a whole word
    prefixes: dict[str, set[int]]  # a literal word ending in "*"
    glued: dict[str, set[int]]  # a literal right after a number in one word ("12yo", "zwölfjährige")
    substrings: dict[str, set[int]]  # a literal of a pattern in Chinese or Japanese script
    always: dict[str, set[int]]  # patterns without a literal to anchor on: run on every prompt

    def add(self, kind: str, literal: str, index: int) -> None:
        getattr(self, kind).setdefault(literal, set()).add(index)

    def lengths(self, kind: str) -> tuple[int, ...]:
        return tuple(sorted({len(literal) for literal in getattr(self, kind)}))


def _by_prefix(word: str, table: dict[str, set[int]], lengths: tuple[int, ...]) -> set[int]:
    """The entries of ``table`` whose key starts ``word``, looked up by the keys' lengths."""
    found: set[int] = set()
    for length in lengths:
        if length > len(word):
            break
        found |= table.get(word[:length], set())
    return found


class _AgeMatcher:
    """Finds stated ages below ``age_below`` and school years up to ``grades_up_to`` with a signal's lexicon.

    Each pattern is a regex over the prompt's words joined by single spaces. It runs only when the prompt holds
    its anchor: the literal word of the pattern that is least likely to be common (the longest of its word
    with the shortest alternatives), or for a pattern made of one word, what follows the number in it.
    """

    def __init__(self, signal: Signal) -> None:
        self.age_below = signal.age_below or 0
        self.grades_up_to = signal.grades_up_to or 0
        self._branches: list[_Branch] = []
        self._anchors = _Anchors({}, {}, {}, {}, {})
        self._allow_anchors = _Anchors({}, {}, {}, {}, {})
        numbers: set[str] = set()
        for lexicon in signal.ages:
            words = _NumberWords(lexicon)
            numbers.update(w for w in (*words.values, *words.ordinal_values) if " " not in w)
            things = [_literal(t, True) for t in lexicon.thing_words]
            thing_re = re.compile(rf" (?:{'|'.join(things)})(?![^\W_])") if things else None
            for kind, patterns in (("age", lexicon.ages), ("grade", lexicon.grades), ("allow", lexicon.allow_phrases)):
                for pattern in patterns:
                    index = len(self._branches)
                    body, groups, spaced, anchors = self._compile(pattern, words, index)
                    regex = re.compile(body)
                    self._branches.append(_Branch(kind, regex, groups, words, spaced, thing_re))
                    table = self._allow_anchors if kind == "allow" else self._anchors
                    for anchor_kind, literal in anchors or [("always", "")]:
                        table.add(anchor_kind, literal, index)
        # Numbers and ordinals that can start a word glued to its unit ("zwölfjährige", "열두살", "fünftklässler").
        self._glued_numbers = set(numbers)
        self._glued_starts = {n[:2] for n in numbers}
        self._glued_lengths = tuple(sorted({len(n) for n in numbers}))
        self._lengths = {
            (id(a), kind): a.lengths(kind)
            for a in (self._anchors, self._allow_anchors)
            for kind in ("prefixes", "glued")
        }

    @staticmethod
    def _compile(
        pattern: str, words: _NumberWords, index: int
    ) -> tuple[str, tuple[tuple[str, bool], ...], bool, list[tuple[str, str]]]:
        """A pattern as a regex over words joined by single spaces, its placeholders' groups and its anchors."""
        spaced = not _UNSPACED.search(pattern)
        groups: list[tuple[str, bool]] = []
        pieces = []
        # Per word whose every alternative holds a literal: one anchor (kind, text) per alternative.
        candidates: list[list[tuple[str, str]]] = []
        for word in pattern.split():
            alternatives = []
            anchors: list[tuple[str, str] | None] = []
            for alternative in word.split("|"):
                parts = []
                anchor: tuple[str, str] | None = None
                split = [piece for piece in _PLACEHOLDER.split(alternative) if piece]
                for position, piece in enumerate(split):
                    if piece in ("{n}", "{nth}"):
                        name = f"n{index}_{len(groups)}"
                        groups.append((name, piece == "{nth}"))
                        slot = words.ordinal if piece == "{nth}" else words.number
                        if not spaced:
                            slot = rf"(?<![\d{words.numeral_chars}])(?:{slot}) ?"
                        parts.append(f"(?P<{name}>{slot})")
                        continue
                    parts.append(_literal(piece, spaced))
                    bare = (" " if spaced else "").join(_fold_words(piece.rstrip("*")))
                    if anchor is not None or not bare:
                        continue
                    if not spaced:
                        anchor = ("substrings", bare)
                    elif position > 0:  # right after a number in the same word
                        anchor = ("glued", bare.split(" ")[0])
                    elif piece.endswith("*") or len(split) > 1 or " " in bare:
                        anchor = ("prefixes", bare.split(" ")[0])
                    else:
                        anchor = ("words", bare)
                alternatives.append("".join(parts))
                anchors.append(anchor)
            pieces.append(f"(?:{'|'.join(alternatives)})")
            if all(anchors):
                candidates.append([a for a in anchors if a is not None])
        # The anchor word: all of its alternatives give an anchor; prefer the one with the longest shortest literal.
        best = max(candidates, key=lambda a: min(len(t) for _, t in a), default=[])
        if spaced:
            return rf"(?<![^\W_]){' '.join(pieces)}(?![^\W_])", tuple(groups), True, best
        return " ?".join(pieces), tuple(groups), False, best

    def _candidates(self, anchors: _Anchors, words: Iterable[str], texts: Sequence[str]) -> set[int]:
        """The patterns whose anchor is among ``words`` (for Chinese and Japanese: in one of ``texts``)."""
        found: set[int] = set(anchors.always.get("", ()))
        prefix_lengths = self._lengths[id(anchors), "prefixes"]
        glued_lengths = self._lengths[id(anchors), "glued"]
        for word in words:
            found |= anchors.words.get(word, set())
            found |= _by_prefix(word, anchors.prefixes, prefix_lengths)
            if anchors.glued:
                for rest in self._after_number(word):
                    found |= _by_prefix(rest, anchors.glued, glued_lengths)
        if anchors.substrings:
            for text in texts:
                if _UNSPACED.search(text):
                    found |= {
                        i for literal, branches in anchors.substrings.items() if literal in text for i in branches
                    }
        return found

    def _after_number(self, word: str) -> list[str]:
        """What follows a leading number in a word ("12yo" -> "yo", "zwolfjahrige" -> "jahrige")."""
        digits = len(word) - len(word.lstrip("0123456789"))
        if digits:
            return [word[digits:]]
        rests: list[str] = []
        if word[:2] not in self._glued_starts:
            return rests
        for length in self._glued_lengths:
            if length >= len(word):
                break
            if word[:length] in self._glued_numbers:
                rests.append(word[length:])
        return rests

    def matches(self, forms: Iterable[Sequence[str]]) -> bool:
        """Whether any form (a sequence of words) states an age or school year that counts."""
        forms = [words for words in forms if words]
        texts = [" ".join(words) for words in forms]
        candidates = self._candidates(self._anchors, {w for words in forms for w in words}, texts)
        return bool(candidates) and any(
            self._matches_one(words, text, candidates) for words, text in zip(forms, texts, strict=True)
        )

    def _matches_one(self, words: Sequence[str], text: str, candidates: set[int]) -> bool:
        allowed: list[tuple[int, int]] | None = None
        for index in sorted(candidates):
            branch = self._branches[index]
            for match in branch.regex.finditer(text):
                name, ordinal = next((g, o) for g, o in branch.groups if match.group(g) is not None)
                number = match.group(name).strip()
                value = branch.lexicon.value(number, ordinal=ordinal)
                if value is None:
                    continue
                if branch.kind == "age" and not value < self.age_below:
                    continue
                if branch.kind == "grade" and not 1 <= value <= self.grades_up_to:
                    continue
                start, end = match.span()
                if branch.things is not None and branch.things.match(text, end):
                    continue
                if branch.spaced and not number[0].isdigit() and self._after_tens(text, match.start(name), branch):
                    continue
                if allowed is None:
                    allowed = self._allowed_spans(words, text)
                if any(a_start < end and start < a_end for a_start, a_end in allowed):
                    continue
                return True
        return False

    def _allowed_spans(self, words: Sequence[str], text: str) -> list[tuple[int, int]]:
        spans = []
        for index in self._candidates(self._allow_anchors, set(words), [text]):
            spans += [m.span() for m in self._branches[index].regex.finditer(text)]
        return spans

    @staticmethod
    def _after_tens(text: str, start: int, branch: _Branch) -> bool:
        """Whether a word for ten, twenty, ... (maybe with "and") comes before the number at ``start``."""
        before = text[:start].split()[-2:]
        if before and before[-1] in _NUMBER_JOINERS:
            before = before[:-1]
        return bool(before) and branch.lexicon.is_tens(before[-1])


@lru_cache(maxsize=8)
def _age_matcher(signal: Signal) -> _AgeMatcher:
    """The matcher of a signal, built once per signal (compiling the patterns is the costly part)."""
    return _AgeMatcher(signal)


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
        categories = [c for c in policy.enforced("prompt") if (c.locked or not locked_only) and c.all_keywords]
        self._scored = tuple(c.id for c in policy.enforced("prompt") if c.locked or not locked_only)
        self._locked = set(policy.locked_categories)
        self._conjunctions = tuple(r for r in policy.conjunctions if r.locked or not locked_only)
        #: The categories this stage can flag: by their own keywords, or as what a conjunction fires.
        self.categories: tuple[str, ...] = tuple(
            dict.fromkeys([c.id for c in categories] + [r.category for r in self._conjunctions])
        )
        needed_signals = {name for rule in self._conjunctions for name in rule.all_of}
        # Labels: c: a category's keyword, a: its allow-phrase; s: a signal's keyword, sa: its allow-phrase.
        # English keywords and every allow-phrase match with plurals folded; the keywords of other languages
        # match words as written (English plural folding would make "seks" "sek" and "ados" "ado"), so their
        # lists spell out the forms they need.
        phrases: list[tuple[str, str]] = [(f"c:{c.id}", k) for c in categories for k in c.keywords]
        phrases += [(f"a:{c.id}", p) for c in categories for p in c.allow_phrases]
        written: list[tuple[str, str]] = [(f"c:{c.id}", k) for c in categories for _, ks in c.languages for k in ks]
        for signal in policy.signals:
            if signal.id in needed_signals:
                phrases += [(f"s:{signal.id}", k) for k in signal.keywords]
                phrases += [(f"sa:{signal.id}", p) for p in signal.allow_phrases]
                written += [(f"s:{signal.id}", k) for _, ks in signal.languages for k in ks]
                for included in signal.include_categories:
                    phrases += [(f"s:{signal.id}", k) for k in policy[included].keywords]
                    phrases += [(f"sa:{signal.id}", p) for p in policy[included].allow_phrases]
                    written += [(f"s:{signal.id}", k) for _, ks in policy[included].languages for k in ks]
        for rule in self._conjunctions:
            for name in rule.all_of:
                if name in policy:
                    phrases += [(f"s:{name}", k) for k in policy[name].keywords]
                    phrases += [(f"sa:{name}", p) for p in policy[name].allow_phrases]
                    written += [(f"s:{name}", k) for _, ks in policy[name].languages for k in ks]
        # Each phrase as the matcher sees it; findings name the phrase as the policy writes it.
        self._written: dict[tuple[str, str], str] = {}
        folded_sets: tuple[list[tuple[str, str]], ...] = ([], [], [])
        for group, labelled in ((0, phrases), (1, written)):
            for label, phrase in labelled:
                folded = fold_phrase(phrase)
                if folded:
                    self._written.setdefault((label, folded), phrase)
                    folded_sets[2 if _UNSPACED.search(folded) else group].append((label, folded))
        # An allow-phrase whose unaccented spelling is itself a keyword of its category ("góry", Polish for
        # mountains, folds to "gory"; French "râpé", grated, to "rape") counts only as written, accents and all:
        # it takes that keyword back when the prompt spells the word with its accents and never without them.
        keywords = {(label, folded) for label, folded in (*folded_sets[0], *folded_sets[1])}
        self._accented: list[tuple[str, str, re.Pattern[str], re.Pattern[str]]] = []
        for label, folded in list(folded_sets[0]):
            if not label.startswith(("a:", "sa:")):
                continue
            keyword_label = ("c:" if label.startswith("a:") else "s:") + label.split(":", 1)[1]
            written = " ".join(_TOKEN.findall(unicodedata.normalize("NFC", self._written[label, folded].casefold())))
            if (keyword_label, folded) in keywords and written != folded:
                folded_sets[0].remove((label, folded))
                self._accented.append((keyword_label, folded, _whole_words(written), _whole_words(folded)))
        self._matcher = PhraseMatcher(folded_sets[0])
        self._exact = PhraseMatcher(folded_sets[1], stem_words=False)
        self._substrings = _SubstringMatcher(folded_sets[2])
        self._ages = {
            s.id: _age_matcher(s) for s in policy.signals if s.age_below and s.ages and s.id in needed_signals
        }

    def check(self, prompts: Sequence[str]) -> list[Verdict]:
        return [self._check_one(prompt) for prompt in prompts]

    def _check_one(self, prompt: str) -> Verdict:
        normalized = normalize(prompt)
        hits: dict[str, list[str]] = defaultdict(list)
        signals: set[str] = set()
        texts = dict.fromkeys((normalized.text, *normalized.variants, light_fold(prompt)))
        forms = [list(f) for f in dict.fromkeys(tuple(_TOKEN.findall(latin_skeleton(text))) for text in texts)]
        taken_back = self._taken_back(prompt) if self._accented and not prompt.isascii() else frozenset()
        for tokens in [*forms, *(self._without_clitics(forms) if _ARABIC_TOKEN.search(prompt) else ())]:
            matches = self._matcher.find([stem(w) for w in tokens]) + self._exact.find(tokens)
            self._collect([m for m in matches if (m.label, m.phrase) not in taken_back], hits, signals)
        if self._substrings and _UNSPACED.search(prompt):
            self._collect(self._substrings.find(_unspaced_fold(prompt)), hits, signals)
        if self._ages:
            # Prompts scraped from generators often space out the digits of a number ("a 2 5 year old man").
            age_forms = (
                [_TOKEN.findall(_SPACED_DIGITS.sub(r"\1", latin_skeleton(t))) for t in texts]
                if _DIGIT.search(prompt)
                else forms
            )
            for signal, ages in self._ages.items():
                if signal not in signals and ages.matches(age_forms):
                    signals.add(signal)

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

    def _taken_back(self, prompt: str) -> frozenset[tuple[str, str]]:
        """The (label, keyword) pairs that an accented allow-phrase takes back in ``prompt``."""
        text = " ".join(_TOKEN.findall(unicodedata.normalize("NFC", prompt.casefold())))
        found = set()
        for label, folded, accented, plain in self._accented:
            if accented.search(text) and not plain.search(text):
                found.add((label, folded))
        return frozenset(found)

    @staticmethod
    def _without_clitics(forms: list[list[str]]) -> list[list[str]]:
        """The forms that hold Arabic words, with clitics stripped from them."""
        stripped = []
        for tokens in forms:
            bare = [_strip_clitics(t) for t in tokens]
            if bare != tokens:
                stripped.append(bare)
        return stripped

    def _collect(self, matches: list[_Match], hits: dict[str, list[str]], signals: set[str]) -> None:
        """Record the keyword and signal matches of one form that no allow-phrase of theirs covers."""
        allowed = [m for m in matches if m.label.startswith(("a:", "sa:"))]
        for match in matches:
            kind, name = match.label.split(":", 1)
            if kind not in ("c", "s"):
                continue
            allow_label = f"{'a' if kind == 'c' else 'sa'}:{name}"
            if any(a.label == allow_label and a.start <= match.start and match.end <= a.end for a in allowed):
                continue
            if kind == "s":
                signals.add(name)
            else:
                hits[name].append(self._written.get((match.label, match.phrase), match.phrase))

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
