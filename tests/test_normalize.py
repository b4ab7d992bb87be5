"""Prompt normalisation: each obfuscation alone and combined, benign text, API contract and properties."""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safeguard.normalize import BENIGN_CHANGES, NormalizedText, normalize

ALL_CHANGES = {
    "control",
    "zero_width",
    "whitespace",
    "fullwidth",
    "compatibility",
    "homoglyph",
    "accents",
    "combining",
    "case",
    "spacing",
    "leetspeak",
    "repeat",
}
WORD = re.compile(r"[^\W_]+")


def matches_phrase(result: NormalizedText, phrase: str) -> bool:
    """Whether the phrase occurs as whole words in the text or in a variant, as a matcher would look."""
    wanted = f" {phrase} "
    return any(wanted in f" {' '.join(WORD.findall(form))} " for form in (result.text, *result.variants))


# --- Each obfuscation alone ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected", "change"),
    [
        ("NuDe", "nude", "case"),
        ("ｎｕｄｅ", "nude", "fullwidth"),
        ("ＮＵＤＥ", "nude", "fullwidth"),
        ("nu\u200bde", "nude", "zero_width"),
        ("n\u200cu\u200dd\u2060e", "nude", "zero_width"),
        ("\ufeffnude\u200e", "nude", "zero_width"),
        ("nu\u00adde", "nude", "zero_width"),
        ("\u202enude\u202c", "nude", "zero_width"),
        ("nu\u2066de\u2069", "nude", "zero_width"),
        ("nu\u2063d\u2064e", "nude", "zero_width"),
        ("nu\u3164de", "nude", "zero_width"),
        ("nu\x00d\x7fe", "nude", "control"),
        ("nаkеd", "naked", "homoglyph"),  # Cyrillic а, е
        ("ѕех", "sex", "homoglyph"),  # all Cyrillic
        ("сlose", "close", "homoglyph"),  # Cyrillic es, the most common look-alike
        ("ԍore", "gore", "homoglyph"),
        ("кіll", "kill", "homoglyph"),
        ("ΝΑΚΕD", "naked", "homoglyph"),  # Greek capitals
        ("ηude", "nude", "homoglyph"),  # Greek eta looks like n
        ("ΗΟΤ", "hot", "homoglyph"),  # Greek capital eta looks like H
        ("ոսde", "nude", "homoglyph"),  # Armenian
        ("kıll", "kill", "homoglyph"),
        ("bℓood", "blood", "homoglyph"),
        ("\u212aill", "kill", "homoglyph"),  # KELVIN SIGN
        ("𝐧𝐮𝐝𝐞", "nude", "homoglyph"),
        ("𝓷𝓾𝓭𝓮", "nude", "homoglyph"),
        ("𝕟𝕦𝕕𝕖", "nude", "homoglyph"),
        ("ⓝⓤⓓⓔ", "nude", "homoglyph"),
        ("ɴᴜᴅᴇ", "nude", "homoglyph"),
        ("🇳🇺🇩🇪", "nude", "homoglyph"),
        ("🅽🆄🅳🅴", "nude", "homoglyph"),
        ("⒩⒰⒟⒠", "nude", "homoglyph"),
        ("ⁿᵘᵈᵉ", "nude", "homoglyph"),
        ("nudé", "nude", "accents"),
        ("n̸̢ų̴͝d̷̛e̵̗͓", "nude", "combining"),  # zalgo
        ("n4k3d", "naked", "leetspeak"),
        ("s3x", "sex", "leetspeak"),
        ("p0rn", "porn", "leetspeak"),
        ("k1ll", "kill", "leetspeak"),
        ("bl00d", "blood", "leetspeak"),
        ("8l00d", "blood", "leetspeak"),
        ("k1d", "kid", "leetspeak"),
        ("r4p3", "rape", "leetspeak"),
        ("nud3", "nude", "leetspeak"),
        ("5ex", "sex", "leetspeak"),
        ("0rgy", "orgy", "leetspeak"),
        ("swa7", "swat", "leetspeak"),  # 3+ letters then digits, whatever the digits ("win7" is a casualty)
        ("nuk35", "nukes", "leetspeak"),
        ("funn1357", "funniest", "leetspeak"),
        ("53xy", "sexy", "leetspeak"),  # two digits then letters that are no unit ("35mm" is kept)
        ("57yl3", "style", "leetspeak"),  # digits at both ends around 2+ letters
        ("0u7", "out", "leetspeak"),  # a vowel between digits ("4x4" is kept)
        ("3y35", "eyes", "leetspeak"),
        ("$ex", "sex", "leetspeak"),
        ("@ss", "ass", "leetspeak"),
        ("a$$", "ass", "leetspeak"),
        ("sh!t", "shit", "leetspeak"),
        ("ki||", "kill", "leetspeak"),
        ("s+ab", "stab", "leetspeak"),
        ("n.u.d.e", "nude", "spacing"),
        ("n-u-d-e", "nude", "spacing"),
        ("n u d e", "nude", "spacing"),
        ("n_u_d_e", "nude", "spacing"),
        ("n*u*d*e", "nude", "spacing"),
        ("n/u/d/e", "nude", "spacing"),
        ("n . u . d . e", "nude", "spacing"),
        ("n. u. d. e", "nude", "spacing"),
        ("n🍑u🍑d🍑e", "nude", "spacing"),
        ("killlll", "kill", "repeat"),
        ("bloooood", "blood", "repeat"),
        ("boooobs", "boobs", "repeat"),
    ],
)
def test_single_obfuscation_maps_to_clean_text(prompt: str, expected: str, change: str) -> None:
    result = normalize(prompt)
    assert result.text == expected
    assert result.tokens == (expected,)
    assert change in result.changes
    assert result.original == prompt


@pytest.mark.parametrize(
    ("prompt", "text", "phrase"),
    [
        ("nuuuuude", "nuude", "nude"),  # runs of 3+ become 2 in text, 1 in a variant
        ("seeeexy", "seexy", "sexy"),
        ("b100d", "biood", "blood"),  # "1" reads "i" first, "l" in the variant
        ("k|ll", "kll", "kill"),  # "|" reads "l" first, "i" in the variant
        ("a n u d e woman", "anude woman", "a nude woman"),  # one-letter word kept apart in a variant
        ("n u d e a woman", "nudea woman", "nude a woman"),
    ],
)
def test_ambiguous_obfuscation_is_matched_through_a_variant(prompt: str, text: str, phrase: str) -> None:
    result = normalize(prompt)
    assert result.text == text
    assert phrase not in result.text
    assert matches_phrase(result, phrase)


# --- Combined obfuscations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("ｎ\u200b.ᴜ.𝐝.3", "nude"),  # fullwidth + zero-width + small capital + math bold + spacing + leet
        ("Ｋ\u200b.ı.Ｌ.Ｌ", "kill"),
        ("ѕ\u200bе\u200bх", "sex"),
        ("ѕ.3.х", "sex"),  # homoglyph singles joined, then leet
        ("s 3 x", "sex"),
        ("n̸̢ｕ\u200bd̷3", "nude"),
        ("𝐁𝐋𝟎𝟎𝐃", "blood"),
        ("NАКЕD", "naked"),  # Cyrillic capitals among Latin
        ("B\u200bL\u200b0\u200b0\u200b0\u200b0\u200bD", "blood"),  # zero-width + leet + repeat
        ("k-i-l-l  y0urs3lf", "kill yourself"),
        ("a pH0t0 of a n.4.k.3.d w0m@n cov3r3d in bl00000d", "a photo of a naked woman covered in blood"),
        ("shoot the p0l1c3 0ff1c3r", "shoot the police officer"),
        # leet, Cyrillic and zero-width characters in one word
        ("р1сa550", "picasso"),
        ("с\u200b4\u200bn\u200bv\u200b4\u200b5", "canvas"),
        ("5\u200b7\u200bу\u200bl\u200b3", "style"),
        ("qu4lі7у,in7r1са7e", "quality,intricate"),
        ("Ｎ Ａ Ｋ Ｅ Ｄ  ɢɪʀʟ", "naked girl"),
        ("\u202ek\u200bi\u00adl\u2060l\u202c  \U0001d606\U0001d5fc\U0001d602", "kill you"),
    ],
)
def test_combined_obfuscations_map_to_clean_text(prompt: str, expected: str) -> None:
    result = normalize(prompt)
    assert result.text == expected
    assert result.obfuscated


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a n4k3d po53", "a naked pose"),
        ("p0se,5l17,", "pose,slit,"),
        ("b357 p0rn", "best porn"),
        ("th3 4x4 w1th 1080ti", "the axa with ioboti"),
        ("n4k3d in 4k, 35mm, 1990s, 3d", "naked in 4k, 35mm, 1990s, 3d"),  # numbers with a unit stay
        ("r2d2 a3b2 po53", "r2d2 a3b2 pose"),  # 2 and 6 are never leet, but "a3b" still shows leetspeak
    ],
)
def test_codes_read_as_leet_in_a_leet_prompt(prompt: str, expected: str) -> None:
    result = normalize(prompt)
    assert result.text == expected
    assert normalize(result.text).text == result.text


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("m.o.v.i.e., f.i.l.m.i.c.,", "movie, filmic,"),  # the separator also went between word and comma
        ("“.s.t.a.b.b.e.d o.u.t.”", "“stabbed out”"),
        ("t.i.g.e.r.,.s.h.a.r.p", "tiger,sharp"),
        ("j-e-a-n-, g-r-e-g", "jean, greg"),
        ("u.s.a.", "usa."),  # a separator alone stays
        ("e.g. n.u.d.e", "e.g. nude"),
        ("a cat, n u d e", "a cat, nude"),  # spaces are ordinary next to punctuation
        ("r e a l i s t i c , s m o o t h", "realistic , smooth"),
    ],
)
def test_separator_between_spaced_word_and_punctuation_is_dropped(prompt: str, expected: str) -> None:
    result = normalize(prompt)
    assert result.text == expected
    assert normalize(result.text).text == result.text


def test_combined_obfuscation_reports_each_change() -> None:
    result = normalize("ｎ\u200b.ᴜ.𝐝.3  sexxxy")
    assert result.text == "nude sexxy"
    assert result.variants == ("nude sexy",)
    assert set(result.changes) == {
        "zero_width",
        "whitespace",
        "fullwidth",
        "homoglyph",
        "spacing",
        "leetspeak",
        "repeat",
    }


# --- Benign text ---------------------------------------------------------------------------------------


def test_benign_prompt_only_changes_case() -> None:
    result = normalize("A watercolor painting of a lighthouse at dawn")
    assert result.text == "a watercolor painting of a lighthouse at dawn"
    assert result.tokens == ("a", "watercolor", "painting", "of", "a", "lighthouse", "at", "dawn")
    assert result.variants == ()
    assert result.changes == ("case",)
    assert not result.obfuscated


@pytest.mark.parametrize(
    ("prompt", "tokens"),
    [
        ("4k", ("4k",)),
        ("8k uhd", ("8k", "uhd")),
        ("3d render", ("3d", "render")),
        ("1990s", ("1990s",)),
        ("covid-19", ("covid", "19")),
        ("r2d2", ("r2d2",)),
        ("3 cats", ("3", "cats")),
        ("1990", ("1990",)),
        ("b&w photo", ("b", "w", "photo")),
        ("35mm film, f1.8", ("35mm", "film", "f1", "8")),
        ("20th century", ("20th", "century")),
        ("4x4 truck", ("4x4", "truck")),
        ("1080p30 video", ("1080p30", "video")),
        ("h264 mp3 ps5 a55", ("h264", "mp3", "ps5", "a55")),
        ("1080ti", ("1080ti",)),
        ("50ft", ("50ft",)),
        ("po53 b357 5l17", ("po53", "b357", "5l17")),  # codes, as long as nothing else reads as leet
        ("a 4yo child", ("a", "4yo", "child")),
        ("costs $5k", ("costs", "5k")),
        ("wow!", ("wow",)),
        ("[cat|dog] cat++", ("cat", "dog", "cat")),
        ("(masterpiece:1.2)", ("masterpiece", "1", "2")),
        ("e.g. a cat", ("e", "g", "a", "cat")),
        ("x y axis", ("x", "y", "axis")),
    ],
)
def test_ordinary_tokens_stay_intact(prompt: str, tokens: tuple[str, ...]) -> None:
    result = normalize(prompt)
    assert result.text == prompt
    assert result.tokens == tokens
    assert result.changes == ()


@pytest.mark.parametrize(
    ("prompt", "text"),
    [
        ("gpt4", "gpta"),  # a letters word ending in one of 0/1/3/4/5 reads as leet ("nud3")
        ("c3po", "cepo"),  # a digit between letters always reads as leet ("s3x")
        ("win7", "wint"),  # 3+ letters then digits read as leet, as in "swa7"
        ("covid19", "covidig"),
        ("c3po mp3", "cepo mpe"),  # a plain leet word makes short codes leet too
        ("u.s.a.", "usa."),  # spaced letters join whatever they spell
    ],
)
def test_documented_casualties(prompt: str, text: str) -> None:
    assert normalize(prompt).text == text


@pytest.mark.parametrize(
    ("prompt", "text", "changes"),
    [
        ("Café au lait", "cafe au lait", ("accents", "case")),
        ("Привет мир", "привет мир", ("case",)),  # genuine Cyrillic words are not transliterated
        ("καλημέρα", "καλημερα", ("accents",)),
        ("富士山の風景", "富士山の風景", ()),
        ("a ❤️ heart", "a ❤ heart", ()),  # the emoji presentation selector goes unreported
        ("first line\nsecond\tline ", "first line second line", ("whitespace",)),
        ("Straße", "strasse", ("accents", "case")),
        ("ﬁne…", "fine...", ("compatibility",)),
    ],
)
def test_benign_non_ascii_text_stays_readable(prompt: str, text: str, changes: tuple[str, ...]) -> None:
    result = normalize(prompt)
    assert result.text == text
    assert result.changes == changes
    assert not result.obfuscated


# --- API contract --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, b"nude", 42, ["nude"]])
def test_non_str_input_raises_type_error(value: object) -> None:
    with pytest.raises(TypeError):
        normalize(value)  # type: ignore[arg-type]


def test_empty_string_gives_empty_fields() -> None:
    assert normalize("") == NormalizedText(original="", text="", tokens=(), variants=(), changes=())


def test_original_is_kept_exactly() -> None:
    prompt = "  Ｎ\u200bude\t"
    result = normalize(prompt)
    assert result.original is prompt
    assert result.text == "nude"


def test_result_is_frozen() -> None:
    result = normalize("nude")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.text = "safe"  # type: ignore[misc]


def test_benign_changes_are_known_change_names() -> None:
    assert BENIGN_CHANGES < ALL_CHANGES


def test_docstring_examples() -> None:
    failures, attempted = doctest.testmod(importlib.import_module("safeguard.normalize"))
    assert attempted > 0
    assert failures == 0


# --- Properties ----------------------------------------------------------------------------------------


def check_invariants(prompt: str) -> NormalizedText:
    result = normalize(prompt)
    assert isinstance(result.text, str)
    assert result.original is prompt
    assert result.tokens == tuple(WORD.findall(result.text))
    assert result.text == " ".join(result.text.split())
    assert result.text not in result.variants
    assert len(set(result.variants)) == len(result.variants)
    assert set(result.changes) <= ALL_CHANGES
    assert normalize(result.text).text == result.text, "normalising the canonical text again changed it"
    return result


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.text(max_size=10_000))
def test_arbitrary_unicode(prompt: str) -> None:
    check_invariants(prompt)


# Characters that the steps treat specially, so that random strings exercise their interplay.
TRICKY_ALPHABET = (
    "abdeiklnostuxyz  .-_*/|+!@$€0123456789()[]:,'\n"
    "асеоѕрхнкбиж"  # Cyrillic look-alikes and genuine letters
    "ΗηΝνΜμΥυαοιτζ"  # Greek
    "\u200b\u200d\u00ad\u202e\u0301\u0489\ufe0f"  # invisible characters and marks
    "ıＮ𝐧ᴋꞮᲂßǃ²½¨ﬁⓐ🅽🇳⒩\u2800\u3164"  # look-alikes and compatibility forms
    "\u1100\u1161\u11a8\uac00\u0b47\u0b3e"  # conjoining jamo and Indic vowel signs that compose under NFC
)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=TRICKY_ALPHABET, max_size=200))
def test_tricky_text(prompt: str) -> None:
    check_invariants(prompt)


def test_every_bmp_character_alone() -> None:
    for code_point in range(0x10000):
        if not 0xD800 <= code_point < 0xE000:
            char = chr(code_point)
            text = normalize(char).text
            assert normalize(text).text == text, f"U+{code_point:04X}"


def test_lone_surrogates_are_removed() -> None:
    assert normalize("nu\ud800de").text == "nude"


# --- Linear-time smoke test: adversarial inputs of 200,000 characters finish ---------------------------

SIZE = 200_000


def random_adversarial_text(size: int) -> str:
    generator = random.Random(7)
    return "".join(generator.choice(TRICKY_ALPHABET) for _ in range(size))


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("n.u.d.e " * (SIZE // 8), " ".join(["nude"] * (SIZE // 8))),
        ("s 3 x " * (SIZE // 6), "sex" * (SIZE // 6)),  # one run of singles, then one huge leet word
        ("a" * SIZE, "aa"),
        ("\u200b" * SIZE, ""),
        ("1 " * (SIZE // 2), " ".join(["1"] * (SIZE // 2))),  # a run of digits is kept, item by item
        ("ѕ" * SIZE, "ss"),
        ("n4k3d" * (SIZE // 5), "naked" * (SIZE // 5)),
        ("ab|" * (SIZE // 3), "ab|" * (SIZE // 3 - 1) + "abl"),
        ("$" * SIZE, "$" * SIZE),
        ("n" + "\u0301" * SIZE, "n"),
        ("a-" * (SIZE // 2), "aa-"),
        ("𝐧\u200bｕ" * (SIZE // 3), "nu" * (SIZE // 3)),
        ("m.o.v.i.e., " * (SIZE // 12), " ".join(["movie,"] * (SIZE // 12))),
        ("n4k3d po53 " * (SIZE // 11), " ".join(["naked pose"] * (SIZE // 11))),  # leet read across the prompt
    ],
)
def test_long_adversarial_input_finishes(prompt: str, expected: str) -> None:
    assert normalize(prompt).text == expected


def test_long_random_adversarial_input_finishes() -> None:
    prompt = random_adversarial_text(SIZE)
    assert len(normalize(prompt).original) == SIZE
