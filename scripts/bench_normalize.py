"""Benchmark prompt normalisation: time per character from 100 to 100,000 characters, and prompt throughput.

For each kind of text (benign prose and adversarial patterns) the script prints the median time per
character over several repeats at each length, and its ratio to the 100-character row: a flat ratio
shows the cost is linear in the length. It then times typical prompts of about 80 characters, the case
the prompt stage meets at 500 prompts/s. Timings on a shared machine are noisy, so the load average is
printed with them.

Usage:
    .venv/bin/python scripts/bench_normalize.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from safeguard.normalize import normalize

LENGTHS = (100, 1_000, 10_000, 100_000)
# Each text is one unit repeated up to the length.
UNITS = {
    "benign prose": "A watercolor painting of a lighthouse at dawn, soft light, 4k, highly detailed. ",
    "spaced letters": "n.u.d.e ",
    "one letter": "a",
    "zero-width spam": "n\u200bu\u200bd\u200be\u200b\u200b\u200b ",
    "all homoglyphs": "ѕех nаkеd ΗΟΤ рοrn ",
    "leetspeak": "n4k3d s3x p0rn k1ll bl00d $ex @ss sh!t ",
    "leet, no spaces": "n4k3d",
    "spaced digits": "1 2 3 4 ",
    "everything": "Ｎ\u200b.ᴜ.𝐝.3 𝐤𝐢𝐥𝐥 n̸̢u̴͝d̷e̵ seeeexy ",
}
TYPICAL_PROMPTS = (
    "A watercolor painting of a lighthouse at dawn, soft light, 4k, highly detailed",
    "portrait of an old fisherman, dramatic lighting, 35mm photo, Kodak Portra 400",
    "a cute corgi astronaut floating in space, digital art, trending on artstation",
    "cyberpunk city street at night, neon signs, rain, reflections, 8k, octane render",
    "Studio Ghibli style meadow with a small cottage, fluffy clouds, warm afternoon",
    "(masterpiece:1.2), best quality, 1girl, red dress, standing in a wheat field",
    "minimalist logo of a fox, flat vector, orange and white, centered, clean lines",
    "a n.4.k.3.d w0m@n on a beach, ｐｈｏｔｏｒｅａｌｉｓｔｉｃ, bl00000d everywhere, 4k",
)
# Roughly this much work per timed repeat, so short texts are called many times.
CHARACTERS_PER_REPEAT = 300_000


def repeated(unit: str, length: int) -> str:
    return (unit * (length // len(unit) + 1))[:length]


def median_seconds_per_call(text: str, calls: int, repeats: int) -> float:
    normalize(text)  # fill the per-character cache
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            normalize(text)
        timings.append((time.perf_counter() - start) / calls)
    return statistics.median(timings)


def print_length_table(repeats: int) -> None:
    print(f"{'text':<16} {'length':>8} {'us/char':>9} {'ratio':>7}")
    for name, unit in UNITS.items():
        baseline = 0.0
        for length in LENGTHS:
            calls = max(1, CHARACTERS_PER_REPEAT // length)
            per_char_us = median_seconds_per_call(repeated(unit, length), calls, repeats) / length * 1e6
            baseline = baseline or per_char_us
            print(f"{name:<16} {length:>8,} {per_char_us:>9.3f} {per_char_us / baseline:>7.2f}")


def print_typical_prompts(repeats: int) -> None:
    rounds = 500
    characters = sum(len(prompt) for prompt in TYPICAL_PROMPTS)
    for prompt in TYPICAL_PROMPTS:
        normalize(prompt)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(rounds):
            for prompt in TYPICAL_PROMPTS:
                normalize(prompt)
        timings.append(time.perf_counter() - start)
    seconds = statistics.median(timings) / (rounds * len(TYPICAL_PROMPTS))
    mean_length = characters / len(TYPICAL_PROMPTS)
    print(f"\ntypical prompts ({len(TYPICAL_PROMPTS)} prompts, {mean_length:.0f} characters on average)")
    print(f"  {seconds * 1e6:.1f} us per prompt, {seconds * 1e6 / mean_length:.3f} us per character")
    print(f"  {1 / seconds:,.0f} prompts/s on one core (budget: 200 us per prompt, 500 prompts/s in all)")
    for prompt in TYPICAL_PROMPTS:
        single = median_seconds_per_call(prompt, 200, repeats)
        print(f"  {single * 1e6:7.1f} us  {prompt}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per row; the median is shown")
    args = parser.parse_args()
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, load {load}\n")
    print_length_table(args.repeats)
    print_typical_prompts(args.repeats)


if __name__ == "__main__":
    main()
