"""Latency of the steering stage on the SD 1.5 architecture at random weights (CPU).

The pipeline is built from configs, offline: the SD 1.5 UNet (block sizes 320/640/1280/1280, two layers per
block, cross-attention 768), a narrower VAE with SD's 8x downsampling (32/64/128/128; SD's is 128/256/512/512)
and a CLIP ViT-L/14-size text encoder (12 layers, width 768) with the real CLIP vocabulary. Weights are random,
so images are noise, but the UNet and text encoder have their real sizes, which is what latency depends on.
256x256 images, 10 DDIM steps, guidance scale 7.5 (batched CFG).

It prints, measured in one run:

- the latency ratio of a benign prompt with steering enabled (preset ``strong``) against disabled, with the
  prompt stage on (the stage installs nothing: expected 1.00) and, for information, with it off (the stage
  then scores the prompt with one text-encoder pass, timed on its own). At random weights that own concept
  score is noise: the "benign" prompt may land in a category's steer band and be steered, which then costs
  what steering costs, not one text-encoder pass. Each configuration's call verdict is printed, so a steered
  call shows as such;
- the cost of each method (projection, guidance, both) on a flagged prompt, against the same prompt unsteered.

Runs alternate between the configurations being compared and the median is reported. Concept encodings are
made on the first steered call and cached; that one-time cost is printed separately.

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_steering.py [--repeats 5] [--steps 10] [--size 256]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import safeguard

BENIGN = "a watercolor painting of a lighthouse at dawn"
FLAGGED = "a gory battlefield at dusk"  # the AUP's "gore" keyword; steered, not blocked, under STEER_ONLY
# Presets calibrate per-category thresholds: here no category blocks or steers except gore, which steers, so the
# flagged prompt reaches the steering stage and the benign one runs as it would without safeguard.
_QUIET = {"steer": None, "block": None}
STEER_ONLY = {
    "prompt": {
        "thresholds": {
            "default": _QUIET,
            **{c.id: _QUIET for c in safeguard.load_policy().categories},
            "gore": {"steer": 0.5, "block": None},
        }
    }
}


def sd15_pipeline(size: int):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from safeguard.testing.tiny import clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=size // 8,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        # A narrower VAE than SD's (128/256/512/512, two layers per block) with the same 8x downsampling: the
        # decoder runs once per call whatever steering does, and at full size it would dominate CPU runs.
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(32, 64, 128, 128),
            layers_per_block=1,
            latent_channels=4,
            sample_size=size,
        )
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                projection_dim=768,
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=49407,
            )
        )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for module in (unet, vae, text):
        module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _with_method(guarded, projection: bool, guidance: bool):
    stage = guarded.guard.steering_stage
    stage.preset = dataclasses.replace(
        stage.preset,
        projection=dataclasses.replace(stage.preset.projection, enabled=projection),
        guidance=dataclasses.replace(stage.preset.guidance, enabled=guidance),
    )
    return guarded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per benign configuration")
    parser.add_argument("--flagged-repeats", type=int, default=1, help="timed runs per flagged configuration")
    parser.add_argument("--own-score-repeats", type=int, default=1, help="timed runs with the prompt stage off")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sections", nargs="+", default=["benign", "own-score", "flagged"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    pipe = sd15_pipeline(args.size)
    params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    print(
        f"SD 1.5 architecture, random weights: UNet {params:.0f}M params, {args.size}x{args.size}, "
        f"{args.steps} steps, CFG 7.5, {args.threads} CPU threads, torch {torch.__version__} "
        f"(built in {time.perf_counter() - start:.0f} s)",
        flush=True,
    )

    def call(guarded, prompt: str, steps: int | None = None) -> tuple[float, float, Any]:
        t0, c0 = time.perf_counter(), time.process_time()
        out = guarded(
            prompt,
            num_inference_steps=steps or args.steps,
            guidance_scale=7.5,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        )
        return time.perf_counter() - t0, time.process_time() - c0, out.verdicts[0]

    def protect(steering, **kwargs):
        return safeguard.protect(pipe, preset="research", output=False, config=STEER_ONLY, steering=steering, **kwargs)

    def compare(configs: dict[str, tuple], repeats: int) -> dict[str, tuple[float, float]]:
        """Median (wall, CPU) seconds per configuration; runs alternate between configurations."""
        for name, (guarded, prompt) in configs.items():
            print(f"  {name:<14} prompt verdict: {guarded.guard.check_prompts([prompt])[0]}", flush=True)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
        first: dict[str, float] = {}
        for name, (guarded, prompt) in configs.items():
            # Warm-up with one step: steered configurations build their (cached) concept encodings here.
            wall, _, verdict = call(guarded, prompt, steps=1)
            first[name] = wall
            # What the call did, steering included: a prompt steering acts on costs its methods' extra work.
            print(f"  {name:<14} call verdict:   {verdict}", flush=True)
        for _ in range(repeats):
            for name, (guarded, prompt) in configs.items():
                times[name].append(call(guarded, prompt)[:2])
        medians = {}
        for name, runs in times.items():
            medians[name] = (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
            print(
                f"  {name:<14} median wall {medians[name][0]:7.2f} s, CPU {medians[name][1]:7.2f} s; "
                f"wall runs {', '.join(f'{w:.2f}' for w, _ in runs)} (1-step warm-up {first[name]:.2f} s)",
                flush=True,
            )
        return medians

    def ratio(m: dict[str, tuple[float, float]], a: str, b: str) -> str:
        return f"wall {m[a][0] / m[b][0]:.3f}, CPU time {m[a][1] / m[b][1]:.3f}"

    if "benign" in args.sections:
        benign_section(protect, compare, ratio, args)
    if "own-score" in args.sections:
        own_score_section(protect, compare, ratio, args, pipe)
    if "flagged" in args.sections:
        flagged_section(protect, compare, ratio, args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


def benign_section(protect, compare, ratio, args) -> None:
    print(f"\nbenign prompt {BENIGN!r}, steering off vs on (preset strong), prompt stage on:")
    m = compare({"steering off": (protect(False), BENIGN), "steering on": (protect("strong"), BENIGN)}, args.repeats)
    wall = m["steering on"][0] / m["steering off"][0]
    print(
        f"  RATIO benign on/off: {ratio(m, 'steering on', 'steering off')}  "
        f"({'PASS' if wall <= 1.02 else 'FAIL'}: wall <= 1.02)"
    )


def own_score_section(protect, compare, ratio, args, pipe) -> None:
    print("\nbenign prompt, prompt stage off (steering scores the prompt itself: one text-encoder pass):")
    steered = protect("strong", prompt=False)
    m2 = compare({"steering off": (protect(False, prompt=False), BENIGN), "steering on": (steered, BENIGN)},
                 args.own_score_repeats)  # fmt: skip
    print(f"  ratio benign on/off, prompt stage off: {ratio(m2, 'steering on', 'steering off')}")
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        steered.guard.steering_stage.concept_scores(pipe, [BENIGN])
        runs.append(time.perf_counter() - t0)
    print(f"  the stage's own concept score of the prompt alone: median {statistics.median(runs):.3f} s")


def flagged_section(protect, compare, ratio, args) -> None:
    print(f"\nflagged prompt {FLAGGED!r} (gore: steered), preset strong, cost of each method:")
    configs = {"unsteered": (protect(False), FLAGGED)}
    for method, (projection, guidance) in {
        "projection": (True, False),
        "guidance": (False, True),
        "both": (True, True),
    }.items():
        configs[method] = (_with_method(protect("strong"), projection, guidance), FLAGGED)
    m3 = compare(configs, args.flagged_repeats)
    for method in ("projection", "guidance", "both"):
        rows = 1 if method != "projection" else 0
        print(
            f"  {method:<11} x unsteered: {ratio(m3, method, 'unsteered')}  "
            f"(+{rows} denoiser batch row per image and step: {2 + rows} rows instead of 2)"
        )


if __name__ == "__main__":
    sys.exit(main())
