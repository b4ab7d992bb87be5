#!/usr/bin/env python
"""How often obfuscated forms of detected prompts are still detected, per obfuscation.

Takes the unsafe prompts of the CSVs that a preset flags in clean form, rewrites each with homoglyphs,
leetspeak, zero-width characters, spaced letters, fullwidth forms and all of them mixed, and prints the share
of rewritten prompts still flagged, relative to the clean ones.

The "(clean)" row checks the detected prompts again unchanged, in a batch like the rewritten ones: where it is
under 100%, the model's scores depend on the batch and the other rows carry that much noise. With
``--show-misses`` it also lists, per obfuscation, the prompts detected in clean form but missed once
rewritten, with the words whose normalised form differs from the clean prompt's: what normalisation failed
to undo. ``--seed`` changes the sample and the rewrites, to check that a figure is not a fluke of one draw.

Usage:
    scripts/eval_obfuscation.py [FOLDER] [--preset balanced] [--limit 400] [--seed 0] [--show-misses]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from safeguard.guard import Guard
from safeguard.normalize import normalize
from safeguard.reports.data import read_labelled_csv

DEFAULT_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
HOMOGLYPHS = {"a": "а", "e": "е", "o": "о", "p": "р", "c": "с", "x": "х", "y": "у", "i": "і", "s": "ѕ"}
LEET = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"}


def _words(text: str, rng: random.Random, rewrite) -> str:
    # Rewrite the longer words, as an evader would: short function words carry no concept.
    return " ".join(rewrite(w) if len(w) > 3 and rng.random() < 0.7 else w for w in text.split())


def homoglyph(text: str, rng: random.Random) -> str:
    return _words(text, rng, lambda w: "".join(HOMOGLYPHS.get(c, c) if rng.random() < 0.5 else c for c in w))


def leetspeak(text: str, rng: random.Random) -> str:
    return _words(text, rng, lambda w: "".join(LEET.get(c, c) if rng.random() < 0.5 else c for c in w))


def zero_width(text: str, rng: random.Random) -> str:
    return _words(text, rng, lambda w: "\u200b".join(w))


def spaced(text: str, rng: random.Random) -> str:
    sep = rng.choice([" ", ".", "-"])
    return _words(text, rng, lambda w: sep.join(w))


def fullwidth(text: str, rng: random.Random) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def mixed(text: str, rng: random.Random) -> str:
    for rewrite in (leetspeak, homoglyph, zero_width):
        text = rewrite(text, rng)
    return text


OBFUSCATIONS = {f.__name__: f for f in (homoglyph, leetspeak, zero_width, spaced, fullwidth, mixed)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--limit", type=int, default=400, help="detected prompts to rewrite")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample; the rewrites use seed + 1")
    parser.add_argument("--show-misses", action="store_true", help="list the prompts missed once rewritten")
    args = parser.parse_args()

    guard = Guard.create(preset=args.preset)
    rows = [row for path in sorted(args.folder.glob("*.csv")) for row in read_labelled_csv(path)]
    unsafe = [row.prompt for row in rows if row.label == "unsafe"]
    random.Random(args.seed).shuffle(unsafe)
    unsafe = [p[:2000] for p in unsafe]
    detected = [p for p, v in zip(unsafe, guard.check_prompts(unsafe), strict=True) if v.flagged][: args.limit]
    print(f"{len(detected)} unsafe prompts detected in clean form (preset {args.preset})")
    print(f"{'obfuscation':12} {'still detected':>15} {'normalised back':>16}")
    # The clean prompts again, in a batch of the same size: model scores that depend on the batch (padding,
    # quantisation) move a few prompts across the threshold with no obfuscation at all.
    rechecked = sum(v.flagged for v in guard.check_prompts(detected))
    print(f"{'(clean)':12} {100 * rechecked / max(1, len(detected)):14.1f}% {100.0:15.1f}%")
    misses: dict[str, list[tuple[str, str]]] = {}
    for name, rewrite in OBFUSCATIONS.items():
        rng = random.Random(args.seed + 1)
        rewritten = [rewrite(p, rng)[: guard.settings.prompt.max_chars] for p in detected]
        verdicts = guard.check_prompts(rewritten)
        kept = sum(v.flagged for v in verdicts)
        # Whether normalisation recovered the clean prompt's normal form exactly, a stricter measure.
        recovered = sum(normalize(p).text == normalize(r).text for p, r in zip(detected, rewritten, strict=True))
        share = 100 / max(1, len(detected))
        print(f"{name:12} {share * kept:14.1f}% {share * recovered:15.1f}%")
        misses[name] = [(p, r) for p, r, v in zip(detected, rewritten, verdicts, strict=True) if not v.flagged]
    if args.show_misses:
        for name, pairs in misses.items():
            print(f"\n== {name}: {len(pairs)} missed")
            for clean, rewritten in pairs:
                _print_miss(clean, rewritten)
    return 0


def _print_miss(clean: str, rewritten: str) -> None:
    """The clean prompt, and each word that normalises differently once rewritten: clean -> rewritten."""
    clean_words = normalize(clean).text.split()
    rewritten_words = normalize(rewritten).text.split()
    print(f"- {clean[:200]!r}")
    if clean_words == rewritten_words:
        print("    same normal form as the clean prompt: a batch effect, not normalisation")
        return
    if len(clean_words) != len(rewritten_words):
        # Spacing can merge words; show the whole normal form rather than a misaligned word list.
        print(f"    normalised: {normalize(rewritten).text[:200]!r}")
        return
    originals = rewritten.split()
    for index, (want, got) in enumerate(zip(clean_words, rewritten_words, strict=True)):
        if want != got:
            written = originals[index] if len(originals) == len(clean_words) else "?"
            print(f"    {want!r} <- {written!r} -> {got!r}")


if __name__ == "__main__":
    sys.exit(main())
