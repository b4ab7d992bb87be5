#!/usr/bin/env python
"""How often obfuscated forms of detected prompts are still detected, per obfuscation.

Takes the unsafe prompts of the CSVs that a preset flags in clean form, rewrites each with homoglyphs,
leetspeak, zero-width characters, spaced letters, fullwidth forms and all of them mixed, and prints the share
of rewritten prompts still flagged, relative to the clean ones.

Usage:
    scripts/eval_obfuscation.py [FOLDER] [--preset balanced] [--limit 400]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from safeguard.guard import Guard

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
    args = parser.parse_args()

    guard = Guard.create(preset=args.preset)
    unsafe = []
    for path in sorted(args.folder.glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            unsafe += [r["prompt"] for r in csv.DictReader(handle) if r["label"] == "unsafe" and r["prompt"].strip()]
    random.Random(0).shuffle(unsafe)
    unsafe = [p[:2000] for p in unsafe]
    detected = [p for p, v in zip(unsafe, guard.check_prompts(unsafe), strict=True) if v.flagged][: args.limit]
    print(f"{len(detected)} unsafe prompts detected in clean form (preset {args.preset})")
    print(f"{'obfuscation':12} {'still detected':>15}")
    for name, rewrite in OBFUSCATIONS.items():
        rng = random.Random(1)
        rewritten = [rewrite(p, rng)[: guard.settings.prompt.max_chars] for p in detected]
        kept = sum(v.flagged for v in guard.check_prompts(rewritten))
        print(f"{name:12} {100 * kept / max(1, len(detected)):14.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
