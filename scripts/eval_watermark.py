"""Robustness and cost of the disclosure watermark, printed as tables.

Marks every image (scikit-image photographs at several crops and sizes, toy-world renders, 512 and 1024 px) with
safeguard's watermark and with invisible-watermark's dwtDctSvd as it is, reads each back after common sharing
(PNG, JPEG 90/75/50, resize 0.5x, a 10% crop, brightness +-10%, a screenshot-like rescale), counts false
detections on unmarked images, and times marking and reading against a protected toy-world call and one SDXL UNet
step at random weights.

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/eval_watermark.py                # the full run
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/eval_watermark.py --photos 2 --toy 2 --unmarked 50 --no-sdxl
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from safeguard.disclosure import evaluation
from safeguard.disclosure.watermark import Payload, detect, embed


def _robustness(args: argparse.Namespace) -> None:
    images = evaluation.marked_images(args.photos, args.toy)
    groups = sorted({group for group, _, _ in images})
    print(f"== robustness: {len(images)} images ({', '.join(groups)})\n")
    for method in args.methods:
        start = time.perf_counter()
        rows = evaluation.robustness(method, images)
        print(f"-- {method} ({time.perf_counter() - start:.0f} s)")
        table = [
            [r.attack, str(r.images), f"{r.detected:.1%}", f"{r.bit_accuracy:.3f}", str(r.wrong_payloads)] for r in rows
        ]
        print(evaluation.format_table(["attack", "images", "detected", "bit accuracy", "wrong payload"], table))
        print("\ndetected, by group")
        by_group = [[r.attack, *(f"{r.by_group[g]:.0%}" for g in groups)] for r in rows]
        print(evaluation.format_table(["attack", *groups], by_group), "\n", flush=True)


def _false_detections(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    found, total = evaluation.false_detections(evaluation.unmarked_images(args.unmarked))
    print(f"== false detections on unmarked images ({time.perf_counter() - start:.0f} s)")
    print(f"{found} of {total} unmarked images read as marked ({found / total:.3%})\n", flush=True)


def _sdxl_coexistence() -> None:
    rows = [
        [name, f"{alone:.0%}", f"{both:.0%}", "yes" if found else "no"]
        for name, alone, both, found in evaluation.sdxl_watermark_coexistence()
    ]
    print("== diffusers' SDXL watermark (dwtDct) with safeguard's on top, 1024 px")
    headers = ["photo", "their bits read, alone", "after ours", "ours found"]
    print(evaluation.format_table(headers, rows), "\n", flush=True)


def _cost(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for size in (512, 1024):
        image = evaluation.square_photo(size)
        marked = np.round(embed(image, Payload(1, 2))).astype(np.uint8)
        mark_ms = evaluation.timed_ms(lambda image=image: embed(image, Payload(1, 2)), args.repeats)
        read_ms = evaluation.timed_ms(lambda marked=marked: detect(marked), args.repeats)
        unmarked = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
        miss_ms = evaluation.timed_ms(lambda unmarked=unmarked: detect(unmarked), args.repeats)
        rows.append([f"{size} px", f"{mark_ms:.1f}", f"{read_ms:.1f}", f"{miss_ms:.1f}"])
    print("== cost (CPU, median ms per image)")
    print(evaluation.format_table(["image", "mark", "read (marked)", "read (unmarked)"], rows))
    # The share is the mark's own median time over the call's: the difference of two timed calls on shared CPUs
    # is noisier than the mark itself.
    mark_ms = {256: evaluation.timed_ms(lambda: embed(evaluation.square_photo(256), Payload(1, 2)), args.repeats)}
    mark_ms.update({512: float(rows[0][1]), 1024: float(rows[1][1])})
    shares = []
    for size in (256, 512):
        off = evaluation.toy_world_call_ms(size, args.toy_steps, False, args.call_repeats)
        on = evaluation.toy_world_call_ms(size, args.toy_steps, True, args.call_repeats)
        shares.append([f"protected toy-world call, {size} px, {args.toy_steps} steps", f"{off:.0f}", f"{on:.0f}",
                       f"{mark_ms[size]:.1f}", f"{mark_ms[size] / on:.1%}"])  # fmt: skip
    if args.sdxl:
        step = evaluation.sdxl_unet_step_ms(1024)
        shares.append(["one SDXL UNet step, 1024 px, batch 2, random weights", f"{step:.0f}", "-",
                       f"{mark_ms[1024]:.1f}", f"{mark_ms[1024] / step:.1%}"])  # fmt: skip
    print("\n== share of a call (CPU, ms)")
    headers = ["what", "disclosure off", "disclosure on", "mark", "mark / call"]
    print(evaluation.format_table(headers, shares), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=15, help="scikit-image photographs (up to 15)")
    parser.add_argument("--toy", type=int, default=12, help="toy-world renders")
    parser.add_argument("--unmarked", type=int, default=1200, help="unmarked images for false detections")
    parser.add_argument("--methods", nargs="+", default=list(evaluation.METHODS), choices=list(evaluation.METHODS))
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per cost figure")
    parser.add_argument("--toy-steps", type=int, default=4, help="denoising steps of the timed toy-world call")
    parser.add_argument("--call-repeats", type=int, default=2, help="timed repeats per toy-world call")
    parser.add_argument("--no-sdxl", dest="sdxl", action="store_false", help="skip the SDXL UNet step (~10 GB RAM)")
    args = parser.parse_args()
    _robustness(args)
    _false_detections(args)
    _sdxl_coexistence()
    _cost(args)


if __name__ == "__main__":
    main()
