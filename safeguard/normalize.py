"""Canonical form of a prompt for keyword matching and semantic scoring.

Obfuscation tricks ("ｎ\u200b.u.d.3", "ѕех", "n4k3d", "nuuuude", "𝐤𝐢𝐥𝐥") are undone before any rule sees the
text, while the original string is kept for the record. Every step is a ``str.translate`` table, a
C-speed ``str`` method, a loop over items, or a regular expression without nested quantifiers, so the
cost is linear in the prompt length by construction.

The steps, in order:

1. Characters, one table built per call from a per-character cache: zero-width and format characters
   (category Cf: U+200B..U+200F, U+2060..U+2064, U+FEFF, soft hyphen, bidi controls) and other
   controls (Cc, plus surrogates, private-use and unassigned code points) are removed; every whitespace
   character becomes a space; NFKD decomposition resolves fullwidth forms, mathematical alphanumerics,
   circled and superscript letters; combining marks (Mn, Me) are dropped, which turns "nudé" into "nude"
   and cleans zalgo text; Latin look-alikes without a decomposition ("ı", small capitals "ᴋɪʟʟ",
   "🅽", regional indicators) and letters with a stroke ("ø", "ł") become plain Latin letters.
2. Cyrillic, Greek and Armenian look-alikes ("а", "е", "ο", "ѕ", ...) become Latin letters inside any
   word that also holds ASCII (or leetspeak symbols), or whose letters are all look-alikes. A word with
   a letter that has no Latin twin ("привет") is genuine text and is left alone: an attacker gains
   nothing from a word that does not look Latin. This runs before case folding because the look-alike
   depends on case (Greek "Η" looks like "H", "η" like "n").
3. Case folding (``str.casefold``), NFC recomposition (Hangul), runs of whitespace to one space.
4. Spacing: a run of at least 3 single letters or digits separated by the same separator of at most
   3 characters ("n.u.d.e", "n u d e", "n_u_d_e", "n * u * d * e", "n🍑u🍑d🍑e") is joined; "a cat" and
   "e.g." are left alone; so are runs without a letter ("1 2 3"). The separator is also dropped where it
   parts a joined run from adjacent punctuation ("“.k.i.l.l.," -> "“kill,"); "u.s.a." keeps its dot.
5. Leetspeak (0->o, 1->i, 3->e, 4->a, 5->s, 7->t, 8->b, 9->g, @->a, $->s, !->i, |->l, +->t, €->e, £->l,
   ¢->c, §->s, ©->c) only inside words that mix letters with such characters. Kept as written:
   numbers ("1990", "3 cats"); a number with a unit, ordinal or one letter ("4k", "3d", "35mm", "1990s",
   "20th", "4yo"); a number of 3+ digits before letters ("1080ti"); a code holding a digit that is never
   leet, 2 or 6 ("r2d2", "h264"); one consonant between numbers ("4x4", "1080p30"); at most 2 letters
   before digits ("mp3", "ps5", "a55"); an amount after a currency sign ("$5k"). In a prompt where some
   word has a leet digit between letters ("n4k3d"), the writer is using leetspeak, so codes and numbers
   before 2+ letters are read as leet too ("po53", "b357", "5l17", "4x4"); numbers with a unit stay.
   Symbols read as letters only where a symbol would not be punctuation: "!" and "+" only between
   characters of a word ("sh!t", but "wow!" and "cat++" stay), "|" and "+" not between two runs of 2+
   characters ("cat|dog" is prompt alternation syntax). "covid-19" and "b&w" hold no leet word at all.
   Known casualties, since without a dictionary "swa7" and "win7" look alike: "win7" reads "wint",
   "covid19" "covidig", "gpt4" "gpta", "c3po" "cepo".
6. Repeated letters: a run of 3 or more of one letter becomes 2 in ``text`` ("killll" -> "kill",
   "boooobs" -> "boobs"); the form with such runs reduced to 1 ("nuuuude" -> "nude") is a variant.
   Doubles are never touched, since either reading can be the real word.

Ambiguous leetspeak gets a second reading too: "1" and "|" read as "i" and "l" in ``text`` and the other
way round in a variant ("b100d" -> "biood", variant "blood"). So does spacing next to a one-letter word:
"a n u d e woman" is "anude woman", with the variant "a nude woman". A matcher should try ``text`` and
every variant. Normalising ``text`` again returns it unchanged.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["BENIGN_CHANGES", "NormalizedText", "latin_skeleton", "light_fold", "normalize"]

#: Change names that ordinary, non-evasive prompts trigger (capitals, line breaks, "café", "…").
BENIGN_CHANGES = frozenset({"case", "whitespace", "compatibility", "accents"})


@dataclass(frozen=True)
class NormalizedText:
    """A prompt and its canonical form.

    ``text`` is casefolded, with look-alikes, leetspeak, spaced-out letters, invisible characters and
    combining marks resolved and whitespace collapsed to single spaces. Punctuation stays where it was
    (it keeps the text readable for semantic scoring); match words against ``tokens``, the runs of
    letters and digits. ``variants`` are the other plausible readings, none equal to ``text`` and at
    most seven: runs of a repeated letter reduced to one, "1" and "|" read as "l" and "i", a one-letter
    word kept apart from spaced-out letters; a matcher tries ``text`` and each of them. ``changes``
    names each transformation that altered something, in pipeline order, from: control, zero_width,
    whitespace, fullwidth, compatibility, homoglyph, accents, combining, case, spacing, leetspeak,
    repeat.

    Example:
        >>> result = normalize("A N.u.D.e  ph0t0")
        >>> result.text, result.tokens, result.changes
        ('a nude photo', ('a', 'nude', 'photo'), ('whitespace', 'case', 'spacing', 'leetspeak'))
    """

    original: str
    text: str
    tokens: tuple[str, ...]
    variants: tuple[str, ...]
    changes: tuple[str, ...]

    @property
    def obfuscated(self) -> bool:
        """Whether a transformation typical of deliberate evasion changed the prompt.

        Example:
            >>> normalize("Café au lait").obfuscated, normalize("caf\u200bé").obfuscated
            (False, True)
        """
        return any(change not in BENIGN_CHANGES for change in self.changes)


# Change flags, in the order their names are reported.
_CONTROL = 1 << 0
_ZERO_WIDTH = 1 << 1
_WHITESPACE = 1 << 2
_FULLWIDTH = 1 << 3
_COMPATIBILITY = 1 << 4
_HOMOGLYPH = 1 << 5
_ACCENTS = 1 << 6
_COMBINING = 1 << 7
_CASE = 1 << 8
_SPACING = 1 << 9
_LEETSPEAK = 1 << 10
_REPEAT = 1 << 11
_CHANGE_NAMES = (
    (_CONTROL, "control"),
    (_ZERO_WIDTH, "zero_width"),
    (_WHITESPACE, "whitespace"),
    (_FULLWIDTH, "fullwidth"),
    (_COMPATIBILITY, "compatibility"),
    (_HOMOGLYPH, "homoglyph"),
    (_ACCENTS, "accents"),
    (_COMBINING, "combining"),
    (_CASE, "case"),
    (_SPACING, "spacing"),
    (_LEETSPEAK, "leetspeak"),
    (_REPEAT, "repeat"),
)

# --- Step 1: characters -------------------------------------------------------------------------------

_REMOVED_CATEGORIES = {"Cc": _CONTROL, "Cf": _ZERO_WIDTH, "Cs": _CONTROL, "Co": _CONTROL, "Cn": _CONTROL}
_MARK_CATEGORIES = frozenset({"Mn", "Me"})
# Hangul fillers are letters (Lo) that render as nothing.
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")
# Braille blank renders as a space but is a symbol (So).
_BLANK_SYMBOLS = frozenset("\u2800")
# Emoji and text presentation selectors follow most emoji; dropping them is not worth reporting.
_PRESENTATION_SELECTORS = frozenset("\ufe0e\ufe0f")
# Decomposition tags of styled letters (mathematical, circled, superscript, ...) and of width variants.
_STYLED_TAGS = frozenset({"<font>", "<circle>", "<super>", "<sub>", "<square>", "<small>"})
_WIDTH_TAGS = frozenset({"<wide>", "<narrow>"})


def _enclosed_letters() -> dict[str, str]:
    """Letter-like symbols that NFKD leaves alone or wraps in parentheses, mapped to their letter."""
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    first_code_points = (
        0x249C,  # PARENTHESIZED LATIN SMALL LETTER A (NFKD gives "(a)")
        0x1F110,  # PARENTHESIZED LATIN CAPITAL LETTER A
        0x1F150,  # NEGATIVE CIRCLED LATIN CAPITAL LETTER A (no decomposition)
        0x1F170,  # NEGATIVE SQUARED LATIN CAPITAL LETTER A
        0x1F1E6,  # REGIONAL INDICATOR SYMBOL LETTER A
    )
    return {chr(first + offset): letter for first in first_code_points for offset, letter in enumerate(alphabet)}


# Blocks holding the upper- and title-case partners of the look-alike letters (Latin, Greek, Cyrillic,
# Armenian and their extensions); the test over every BMP character checks that none is missing.
_CASED_BLOCKS = ((0x80, 0x590), (0x1C80, 0x1C90), (0x1D00, 0x2150), (0x2C00, 0x2D30), (0xA640, 0xA800))


def _case_closed(pairs: str) -> dict[str, str]:
    """Parse "x:y" pairs and add every character whose case folding is one of the x.

    Case folding runs after the look-alike tables, so without the closure "Ɪ" would fold to "ɪ" and only a
    second normalisation would map it to "i".
    """
    table = {key: value for key, value in (pair.split(":") for pair in pairs.split())}
    for first, stop in _CASED_BLOCKS:
        for code_point in range(first, stop):
            char = chr(code_point)
            if char not in table and char.casefold() in table:
                table[char] = table[char.casefold()]
    return table


# Latin look-alikes with no decomposition: dotless i and j, Latin alpha and script g, small capitals.
_LATIN_LOOKALIKES = _case_closed(
    "ı:i ȷ:j ɑ:a ɡ:g ɩ:i ǀ:l ǃ:! ᴀ:a ʙ:b ᴄ:c ᴅ:d ᴇ:e ꜰ:f ɢ:g ʜ:h ɪ:i ᴊ:j ᴋ:k ʟ:l ᴍ:m ɴ:n ᴏ:o ᴘ:p ꞯ:q ʀ:r"
    " ꜱ:s ᴛ:t ᴜ:u ᴠ:v ᴡ:w ʏ:y ᴢ:z"
)
# Letters with a stroke and ligatures have no decomposition either: reported as accents. Sharp s is here
# because case folding would turn it into ASCII after step 2 has judged its word non-Latin.
_LATIN_LETTER_VARIANTS = _case_closed("ø:o đ:d ð:d ħ:h ł:l ŧ:t ƀ:b ɨ:i ʉ:u ƶ:z ǥ:g ɇ:e ɍ:r ɉ:j ĸ:k æ:ae œ:oe þ:th ß:ss")
_ENCLOSED_LETTERS = _enclosed_letters()


def _decomposition_flag(char: str, decomposed: str) -> int:
    """Which change a character's own NFKD decomposition stands for."""
    tag = unicodedata.decomposition(char).partition(" ")[0]
    if tag in _WIDTH_TAGS:
        return _FULLWIDTH
    if tag in _STYLED_TAGS:
        return _HOMOGLYPH if any(part.isalpha() for part in decomposed) else _COMPATIBILITY
    if tag.startswith("<"):
        return _COMPATIBILITY
    # A canonical singleton is a twin of another character (KELVIN SIGN is "K"); other canonical
    # decompositions split off accents, which are reported when the marks are dropped.
    return _HOMOGLYPH if len(decomposed) == 1 else 0


@lru_cache(maxsize=1 << 16)
def _fold_char(char: str) -> tuple[str, int]:
    """One character's replacement in step 1 and the flags of what changed; case is folded later."""
    if char.isspace() or char in _BLANK_SYMBOLS:
        return " ", (0 if char == " " else _WHITESPACE)
    if char in _INVISIBLE_LETTERS:
        return "", _ZERO_WIDTH
    category = unicodedata.category(char)
    if category in _REMOVED_CATEGORIES:
        return "", _REMOVED_CATEGORIES[category]
    if char in _PRESENTATION_SELECTORS:
        return "", 0
    mark_flag = _COMBINING if category in _MARK_CATEGORIES else _ACCENTS
    flags = 0
    current = _ENCLOSED_LETTERS.get(char, char)
    if current != char:
        flags |= _HOMOGLYPH
    # A replacement can itself decompose ("𝚤" -> "ı" -> "i"), so repeat until nothing changes.
    while True:
        pieces = []
        for unit in current:
            decomposed = unicodedata.normalize("NFKD", unit)
            if decomposed != unit:
                flags |= _decomposition_flag(unit, decomposed)
            for part in decomposed:
                if unicodedata.category(part) in _MARK_CATEGORIES:
                    flags |= mark_flag
                elif part in _LATIN_LOOKALIKES:
                    flags |= _HOMOGLYPH
                    pieces.append(_LATIN_LOOKALIKES[part])
                elif part in _LATIN_LETTER_VARIANTS:
                    flags |= _ACCENTS
                    pieces.append(_LATIN_LETTER_VARIANTS[part])
                else:
                    pieces.append(part)
        folded = "".join(pieces)
        if folded == current:
            return unicodedata.normalize("NFC", folded), flags
        current = folded


def _fold_characters(text: str) -> tuple[str, int]:
    """Step 1 over a whole string: one translate table built from its distinct characters."""
    if text.isascii() and text.isprintable():
        return text, 0
    replacements: dict[int, str] = {}
    flags = 0
    for char in set(text):
        folded, char_flags = _fold_char(char)
        flags |= char_flags
        if folded != char:
            replacements[ord(char)] = folded
    return text.translate(replacements), flags


# Symbols that leetspeak uses as letters (step 5); step 2 takes them as a sign of Latin text.
_LEET_SYMBOLS = "@$!|+€£¢§©"
_LEET_SYMBOL_CLASS = re.escape(_LEET_SYMBOLS)

# --- Step 2: Cyrillic, Greek and Armenian look-alikes -------------------------------------------------

# Lower case gives the look-alike of most letters; the upper-case entries differ from their lower case.
_SCRIPT_LOOKALIKES = _case_closed(
    # Cyrillic
    "а:a в:b г:r с:c ԁ:d е:e є:e ҽ:e ԍ:g һ:h н:h і:i ј:j к:k ӏ:l Ӏ:l м:m п:n о:o р:p ԛ:q ѕ:s т:t у:y ү:y"
    " ѵ:v ԝ:w х:x ь:b"
    # Greek
    " α:a β:b γ:y ε:e η:n ι:i κ:k μ:u ν:v ο:o ρ:p τ:t υ:u χ:x ω:w ϲ:c ϳ:j Η:h Μ:m Ν:n Υ:y Ζ:z"
    # Armenian
    " օ:o ս:u հ:h ո:n ց:g զ:q"
)
_SCRIPT_TABLE = str.maketrans(_SCRIPT_LOOKALIKES)
_SCRIPT_LOOKALIKE = re.compile("[" + re.escape("".join(_SCRIPT_LOOKALIKES)) + "]")
_SCRIPT_WORD = re.compile(rf"[\w{_LEET_SYMBOL_CLASS}]+")
# ASCII or a leetspeak symbol in a word means it is meant to read as Latin.
_LATIN_CONTEXT = re.compile(rf"[\x00-\x7f{_LEET_SYMBOL_CLASS}]")


def _resolve_script_word(match: re.Match[str]) -> str:
    """The word with look-alikes made Latin, if it reads as Latin (see step 2)."""
    word = match.group()
    latin = word.translate(_SCRIPT_TABLE)
    if latin == word:
        return word
    if _LATIN_CONTEXT.search(word) or not any(char.isalpha() and not char.isascii() for char in latin):
        return latin
    return word


def _resolve_script_lookalikes(text: str) -> str:
    """Step 2 over a whole string."""
    if text.isascii() or not _SCRIPT_LOOKALIKE.search(text):
        return text
    return _SCRIPT_WORD.sub(_resolve_script_word, text)


# --- Step 4: spacing ----------------------------------------------------------------------------------

# Alternating runs of letters/digits and runs of anything else.
_ALNUM_OR_SEPARATOR = re.compile(r"[^\W_]+|[\W_]+")
# Three single characters with one repeated separator: a cheap test before the item loop. Each start
# position does bounded work (separator of 1 to 3 characters), so this cannot backtrack badly.
_SPACED_TRIPLE = re.compile(r"(?<![^\W_])[^\W_]([\W_]{1,3})[^\W_]\1[^\W_](?![^\W_])")
_MAX_SEPARATOR = 3
_MIN_SPACED_RUN = 3
_ONE_LETTER_WORDS = frozenset({"a", "i"})


def _is_single(item: str) -> bool:
    return len(item) == 1 and item.isalnum()


def _join_apart_from_words(singles: list[str], separator: str) -> str:
    """Join spaced singles but keep a leading or trailing "a"/"i" apart: "a n u d e" -> "a nude"."""
    first, stop = 0, len(singles)
    if separator == " ":
        if singles[first] in _ONE_LETTER_WORDS and stop - first > _MIN_SPACED_RUN:
            first += 1
        if singles[stop - 1] in _ONE_LETTER_WORDS and stop - first > _MIN_SPACED_RUN:
            stop -= 1
    return " ".join([*singles[:first], "".join(singles[first:stop]), *singles[stop:]])


def _join_spaced_letters(text: str) -> tuple[str, str]:
    """Join runs like "n.u.d.e" (see step 4), greedily from the left; each item is visited at most twice.

    Returns the text with every run joined, and the text with a one-letter word at either end of a
    space-separated run kept apart, for "a n u d e woman" (both readings are plausible).
    """
    if not _SPACED_TRIPLE.search(text):
        return text, text
    items = _ALNUM_OR_SEPARATOR.findall(text)
    joined: list[str] = []
    apart: list[str] = []
    start = 0
    while start < len(items):
        if not _is_single(items[start]):
            joined.append(items[start])
            apart.append(items[start])
            start += 1
            continue
        separator = items[start + 1] if start + 1 < len(items) else ""
        last = start
        if len(separator) <= _MAX_SEPARATOR:
            while last + 2 < len(items) and items[last + 1] == separator and _is_single(items[last + 2]):
                last += 2
        singles = items[start : last + 1 : 2]
        run = "".join(singles)
        if len(run) < _MIN_SPACED_RUN:
            joined.append(items[start])
            apart.append(items[start])
            start += 1
        # Joining conjoining Hangul jamo would compose new syllables and break idempotence.
        elif any(char.isalpha() for char in run) and (run.isascii() or unicodedata.is_normalized("NFC", run)):
            # Spacing every character also parts a word from its punctuation ("“.k.i.l.l.," for "“kill,"); left
            # in, the separator changes what the semantic model reads. A separator that is the whole item stays
            # ("u.s.a." keeps its dot), and so does a space, which ordinary text puts next to punctuation.
            keep_separator = separator.isspace()
            before = joined[-1] if start else ""
            if not keep_separator and len(before) > len(separator) and before.endswith(separator):
                joined[-1] = apart[-1] = before[: -len(separator)]
            joined.append(run)
            apart.append(_join_apart_from_words(singles, separator))
            start = last + 1
            after = items[start] if start < len(items) else ""
            if not keep_separator and len(after) > len(separator) and after.startswith(separator):
                items[start] = after[len(separator) :]
        else:
            # Keep the run; its last character may still begin a run with another separator.
            joined.extend(items[start:last])
            apart.extend(items[start:last])
            start = last
    return "".join(joined), "".join(apart)


# --- Step 5: leetspeak --------------------------------------------------------------------------------

_LEET_DIGITS = "01345789"
# Each character above the letter it stands for; "1" and "|" have two readings.
_LEET_CHARACTERS = "0345789@$!+€£¢§©"
_LEET_LETTERS = "oeastbgasitelcsc"
_LEET_PRIMARY = str.maketrans(_LEET_CHARACTERS + "1|", _LEET_LETTERS + "il")
_LEET_ALTERNATIVE = str.maketrans(_LEET_CHARACTERS + "1|", _LEET_LETTERS + "li")
_LEET_TRIGGER = re.compile(f"[{_LEET_DIGITS}{_LEET_SYMBOL_CLASS}]")
_LEADING_SYMBOLS = "@$|€£¢§"
_TRAILING_SYMBOLS = "@$|"
_WORD_JOINERS = "|+"
_CURRENCY_SYMBOLS = "$€£¢"
# Runs of letters/digits, runs of leet symbols, runs of anything else.
_LEET_ITEM = re.compile(rf"[^\W_]+|[{_LEET_SYMBOL_CLASS}]+|(?:[^\w{_LEET_SYMBOL_CLASS}]|_)+")
_LETTER = re.compile(r"[^\W\d_]")
_UNMAPPED_DIGIT = re.compile(rf"[^\D{_LEET_DIGITS}]")
_ASCII_DIGITS = "0123456789"
# Suffixes of a number that make it a measurement or ordinal ("35mm", "20th", "4yo"); one letter always does.
_UNIT_SUFFIXES = frozenset(
    {"th", "st", "nd", "rd", "am", "pm", "mm", "cm", "km", "kg", "mb", "gb", "tb", "kb", "px", "fps", "hz"}
    | {"khz", "mhz", "ghz", "bit", "yo", "yr", "yrs", "ft", "in", "hr", "hrs", "min", "ms", "mp", "ml", "lb"}
    | {"lbs", "oz", "pcs", "dpi", "ppi", "ds", "wd", "mph", "kph"}
)
# Most letters before digits in a code ("mp3"); most digits before letters that may be leet ("53xy", not "1080ti").
_MAX_CODE_PREFIX = 2
_MAX_NUMBER_PREFIX = 2
# A vowel between digits reads as leet ("0u7", "3y35"); other letters make a size or format ("4x4", "1080p30").
_VOWELS = frozenset("aeiouy")
# A mapped digit between two letters ("n4k3d", "c3po"): the prompt is written in leetspeak.
_INNER_LEET_DIGIT = re.compile(rf"[^\W\d_][{_LEET_DIGITS}]+[^\W\d_]")


def _kept_as_written(word: str, leet_text: bool) -> bool:
    """Whether a word of letters and digits is a number, measurement or code rather than leetspeak.

    ``leet_text`` says that a word of the prompt is plainly leetspeak; a short code ("po53", "b357", "5l17")
    is then read as leet too, since a prompt that writes "n4k3d" rarely also names a "ps5". A number with a
    unit ("4k", "35mm") stays a number even then.
    """
    if _UNMAPPED_DIGIT.search(word):
        return True
    lead = len(word) - len(word.lstrip(_ASCII_DIGITS))
    trail = len(word) - len(word.rstrip(_ASCII_DIGITS))
    core = word[lead : len(word) - trail]
    if any(char in _ASCII_DIGITS for char in core):
        return False
    if lead and trail:
        return len(core) == 1 and core not in _VOWELS and not leet_text
    if lead:
        return len(core) == 1 or core in _UNIT_SUFFIXES or (lead > _MAX_NUMBER_PREFIX and not leet_text)
    if trail:
        return len(core) <= _MAX_CODE_PREFIX and not leet_text
    return False


def _inner_symbols_read_as_letters(symbols: str, before: str, after: str) -> bool:
    """A symbol run between letters/digits is part of the word, unless "|" or "+" joins two words.

    Two words means 2+ characters on each side; whether they are letters is not asked, because decoding
    may turn their digits into letters and a second normalisation would then decide differently.
    """
    between_words = len(before) > 1 and len(after) > 1
    return not (between_words and not symbols.strip(_WORD_JOINERS))


def _word_spans(items: list[str]) -> list[bool]:
    """Which items belong to a word: letters/digits, and the leet symbol runs that read as letters."""
    count = len(items)
    is_alnum = [item[0].isalnum() for item in items]
    is_symbols = [item[0] in _LEET_SYMBOLS for item in items]
    if not any(is_symbols):
        return is_alnum
    in_word = is_alnum.copy()
    for index in range(1, count - 1):
        if is_symbols[index] and is_alnum[index - 1] and is_alnum[index + 1]:
            in_word[index] = _inner_symbols_read_as_letters(items[index], items[index - 1], items[index + 1])
    # Whether the word starting at an index holds a letter, filled from the right.
    letter_ahead = [False] * (count + 1)
    for index in range(count - 1, -1, -1):
        in_letters = is_alnum[index] and _LETTER.search(items[index]) is not None
        letter_ahead[index] = in_word[index] and (in_letters or letter_ahead[index + 1])
    for index in range(count):
        if not is_symbols[index] or in_word[index]:
            continue
        symbols = items[index]
        has_before = index > 0 and is_alnum[index - 1]
        has_after = index + 1 < count and is_alnum[index + 1]
        if has_after and not has_before:
            # "$ex" and "@ss" read as letters, "$5k" is an amount.
            amount = symbols[-1] in _CURRENCY_SYMBOLS and items[index + 1][0].isdigit()
            in_word[index] = not symbols.strip(_LEADING_SYMBOLS) and letter_ahead[index + 1] and not amount
        elif has_before and not has_after:
            in_word[index] = not symbols.strip(_TRAILING_SYMBOLS)
    return in_word


def _decode_leet_chunk(chunk: str, leet_text: bool) -> tuple[str, str]:
    """One space-free chunk with leet words decoded, in the primary and the alternative reading."""
    if not _LETTER.search(chunk):
        return chunk, chunk
    if chunk.isalnum():  # the common case: one word of letters and digits
        if _kept_as_written(chunk, leet_text):
            return chunk, chunk
        return chunk.translate(_LEET_PRIMARY), chunk.translate(_LEET_ALTERNATIVE)
    items = _LEET_ITEM.findall(chunk)
    in_word = _word_spans(items)
    primary: list[str] = []
    alternative: list[str] = []
    start = 0
    while start < len(items):
        end = start + 1
        while in_word[start] and end < len(items) and in_word[end]:
            end += 1
        word = "".join(items[start:end])
        has_symbol = end - start > 1  # letters-and-digits runs are maximal, so more items mean a symbol
        after_currency = start > 0 and word[0].isdigit() and items[start - 1][-1] in _CURRENCY_SYMBOLS
        if (
            in_word[start]
            and not after_currency
            and _LETTER.search(word)
            and (has_symbol or not _kept_as_written(word, leet_text))
        ):
            primary.append(word.translate(_LEET_PRIMARY))
            alternative.append(word.translate(_LEET_ALTERNATIVE))
        else:
            primary.append(word)
            alternative.append(word)
        start = end
    return "".join(primary), "".join(alternative)


def _decode_leetspeak(text: str) -> tuple[str, str]:
    """The text with leet words decoded, reading 1 and | as i and l, and reading them as l and i.

    Only the space-separated chunks that hold a leet character are looked at; no word spans a space.
    """
    leet_text = _INNER_LEET_DIGIT.search(text) is not None
    primary: list[str] = []
    alternative: list[str] = []
    position = 0
    while match := _LEET_TRIGGER.search(text, position):
        space_before = text.rfind(" ", position, match.start())
        chunk_start = position if space_before < 0 else space_before + 1
        chunk_end = text.find(" ", match.end())
        if chunk_end < 0:
            chunk_end = len(text)
        primary_chunk, alternative_chunk = _decode_leet_chunk(text[chunk_start:chunk_end], leet_text)
        primary += (text[position:chunk_start], primary_chunk)
        alternative += (text[position:chunk_start], alternative_chunk)
        position = chunk_end
    if not position:
        return text, text
    primary.append(text[position:])
    alternative.append(text[position:])
    return "".join(primary), "".join(alternative)


# --- Step 6: repeated letters -------------------------------------------------------------------------

# A letter and two or more copies of it; one pass, no nested quantifier.
_LETTER_RUN = re.compile(r"([^\W\d_])\1\1+")
# Any character three times: a cheaper test first, since a category check per character is slow.
_ANY_RUN = re.compile(r"(.)\1\1", re.DOTALL)

# --- Assembly -----------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[^\W_]+")


def normalize(text: str) -> NormalizedText:
    """Normalise a prompt for matching and scoring; the input is kept as ``original``.

    Raises ``TypeError`` for anything but a ``str``. An empty string gives empty fields.

    Example:
        >>> normalize("ｎ\u200b.а.k.3.d  wom@n, bloooood").text
        'naked woman, blood'
        >>> normalize("nuuuude 4k").variants
        ('nude 4k',)
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize() takes a str, not {type(text).__name__}")
    folded, flags = _fold_characters(text)
    resolved = _resolve_script_lookalikes(folded)
    if resolved != folded:
        flags |= _HOMOGLYPH
    lowered = resolved.casefold()
    if lowered != resolved:
        flags |= _CASE
    if not lowered.isascii() and not unicodedata.is_normalized("NFC", lowered):
        lowered = unicodedata.normalize("NFC", lowered)
    collapsed = " ".join(lowered.split())
    if collapsed != lowered:
        flags |= _WHITESPACE
    joined, joined_apart = _join_spaced_letters(collapsed)
    if joined != collapsed:
        flags |= _SPACING
    decoded_readings = [
        decoded
        for reading in dict.fromkeys((joined, joined_apart))
        for decoded in dict.fromkeys(_decode_leetspeak(reading))
    ]
    if decoded_readings[0] != joined:
        flags |= _LEETSPEAK
    forms = []
    for decoded in decoded_readings:
        collapsed_to_two, runs = _LETTER_RUN.subn(r"\1\1", decoded) if _ANY_RUN.search(decoded) else (decoded, 0)
        forms.append(collapsed_to_two)
        if runs:
            forms.append(_LETTER_RUN.sub(r"\1", decoded))
    canonical = forms[0]
    if canonical != decoded_readings[0]:
        flags |= _REPEAT
    variants = tuple(dict.fromkeys(form for form in forms if form != canonical))
    return NormalizedText(
        original=text,
        text=canonical,
        tokens=tuple(_TOKEN.findall(canonical)),
        variants=variants,
        changes=tuple(name for flag, name in _CHANGE_NAMES if flags & flag),
    )


def latin_skeleton(text: str) -> str:
    """Every Cyrillic, Greek and Armenian look-alike letter read as its Latin twin, whatever the word.

    Example:
        >>> latin_skeleton("порно")
        'nopho'
    """
    return text.translate(_SCRIPT_TABLE)


def light_fold(text: str) -> str:
    """Step 1 of normalisation (compatibility forms, accents, invisible characters), case and look-alikes,
    without leetspeak or spacing repairs (which read digits and CJK text wrongly).

    Example:
        >>> light_fold("Ｃafé 13歳")
        'cafe 13歳'
    """
    folded, _ = _fold_characters(text)
    folded = folded.casefold()
    if not folded.isascii():
        folded = latin_skeleton(unicodedata.normalize("NFC", folded))
    return folded
