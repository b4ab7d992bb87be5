"""What the CLIP output stage costs next to the denoiser: one checker pass against one UNet step.

Real-size architectures at random weights (no download): the CLIP ViT-L/14 checker (safeguard's own
``ClipImageStage``: torch preprocessing, vision tower, projection, scores against the cached concept
embeddings), the SD 1.5 UNet at 512x512 and the SDXL UNet at 1024x1024, each UNet step at batch 2 as
classifier-free guidance runs it. The checker's share of a call is

    share = checker / (steps * unet_step + checker)

with the VAE decode and the text encoders left out of the denominator: they only add to the call, so leaving
them out overstates the checker's share (the conservative choice).

On a CUDA machine it also times whole protected and unprotected SD 1.5 calls (random weights, real sizes) and
prints their wall-time ratio.

Usage:
    python scripts/bench_output_stage.py [--repeats 3] [--sdxl-repeats 1] [--json]

With ``--json`` the last line printed is a JSON object with ``sd15_share`` and ``sdxl_share`` (fractions) and
the raw timings.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

SD15_STEPS, SDXL_STEPS = 25, 30


def _median_time(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def clip_l14_stage(device: torch.device) -> Any:
    """safeguard's CLIP checker around a CLIP ViT-L/14 (text and vision) at random weights."""
    from transformers import CLIPConfig, CLIPModel

    from safeguard.config import resolve_settings
    from safeguard.policy import load_policy
    from safeguard.stages.clip import ClipImageStage, TransformersClipEncoder
    from safeguard.testing.tiny import clip_tokenizer

    config = CLIPConfig(
        text_config={"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12},
        vision_config={
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "num_hidden_layers": 24,
            "patch_size": 14,
            "image_size": 224,
        },
        projection_dim=768,
    )
    model = CLIPModel(config).eval()
    encoder = TransformersClipEncoder(model, clip_tokenizer(), 224)
    settings = resolve_settings(config={"output": {"backends": ["clip"]}}, image_model=encoder)
    return ClipImageStage(load_policy(), settings.output).to(device)


def sd15_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        cross_attention_dim=768,
        attention_head_dim=8,
        layers_per_block=2,
    ).eval()


def sdxl_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        layers_per_block=2,
    ).eval()


def unet_step_time(unet: Any, size: int, context: int, xl: bool, device: torch.device, dtype: torch.dtype,
                   repeats: int, sync: Callable[[], None]) -> float:  # fmt: skip
    """Median seconds of one denoiser step at batch 2 (classifier-free guidance)."""
    unet.to(device=device, dtype=dtype)
    latents = torch.randn(2, 4, size // 8, size // 8, device=device, dtype=dtype)
    text = torch.randn(2, 77, context, device=device, dtype=dtype)
    t = torch.tensor([500, 500], device=device)
    extra = {}
    if xl:
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, 1280, device=device, dtype=dtype),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device=device, dtype=dtype),
        }
    with torch.inference_mode():
        return _median_time(lambda: unet(latents, t, encoder_hidden_states=text, **extra), repeats, sync)


def checker_time(stage: Any, size: int, device: torch.device, repeats: int, sync: Callable[[], None]) -> float:
    """Median seconds of one output-stage pass on one decoded image of ``size`` x ``size``."""
    images = torch.rand(1, 3, size, size, device=device)
    stage.check(images)  # warm-up: computes and caches the concept text embeddings once
    return _median_time(lambda: stage.check(images), repeats, sync)


def gpu_wall_ratio(steps: int = SD15_STEPS) -> float:
    """Protected / unprotected wall time of a full SD 1.5-size pipeline call on CUDA (random weights)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    import safeguard
    from safeguard.testing.tiny import clip_tokenizer

    device = torch.device("cuda")
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, projection_dim=768))  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=clip_tokenizer(), unet=sd15_unet(), scheduler=PNDMScheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).to(device, torch.float16)  # fmt: skip
    stage = clip_l14_stage(device)
    guarded = safeguard.protect(pipe, preset="research", image_model=stage.encoder,
                                config={"output": {"backends": ["clip"]}})  # fmt: skip
    prompt = "a watercolor painting of a lighthouse at dawn"

    def run(p: Any) -> None:
        p(prompt, num_inference_steps=steps, output_type="pt", generator=torch.Generator(device).manual_seed(0))

    run(pipe), run(guarded)  # warm-up
    sync = torch.cuda.synchronize
    plain = _median_time(lambda: run(pipe), 3, sync)
    protected = _median_time(lambda: run(guarded), 3, sync)
    print(f"GPU SD 1.5 {steps} steps: unprotected {plain:.3f}s, protected {protected:.3f}s, "
          f"ratio {protected / plain:.4f} (prompt stage + CLIP output stage)")  # fmt: skip
    return protected / plain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of the checker and the SD 1.5 step")
    parser.add_argument("--sdxl-repeats", type=int, default=1, help="timed repeats of the SDXL step (slow on CPU)")
    parser.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # random weights must not fall into slow denormal arithmetic
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.float16 if cuda else torch.float32
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    print(f"device {device}, dtype {dtype}, torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)

    stage = clip_l14_stage(device)
    check_512 = checker_time(stage, 512, device, args.repeats, sync)
    check_1024 = checker_time(stage, 1024, device, args.repeats, sync)
    print(f"checker pass (CLIP ViT-L/14, 1 image): 512px {check_512:.3f}s, 1024px {check_1024:.3f}s", flush=True)
    del stage
    gc.collect()

    unet = sd15_unet()
    sd15_step = unet_step_time(unet, 512, 768, False, device, dtype, args.repeats, sync)
    print(f"SD 1.5 UNet step (batch 2, 512x512): {sd15_step:.3f}s", flush=True)
    del unet
    gc.collect()

    unet = sdxl_unet()
    sdxl_step = unet_step_time(unet, 1024, 2048, True, device, dtype, args.sdxl_repeats, sync)
    print(f"SDXL UNet step (batch 2, 1024x1024): {sdxl_step:.3f}s", flush=True)
    del unet
    gc.collect()

    sd15_share = check_512 / (SD15_STEPS * sd15_step + check_512)
    sdxl_share = check_1024 / (SDXL_STEPS * sdxl_step + check_1024)
    rows = [
        ("SD 1.5, 512x512", SD15_STEPS, sd15_step, check_512, sd15_share),
        ("SDXL, 1024x1024", SDXL_STEPS, sdxl_step, check_1024, sdxl_share),
    ]
    print()
    print(f"{'pipeline':<18}{'steps':>6}{'UNet step s':>13}{'denoise s':>11}{'checker s':>11}{'share':>9}")
    for name, steps, step, check, share in rows:
        print(f"{name:<18}{steps:>6}{step:>13.3f}{steps * step:>11.1f}{check:>11.3f}{share:>9.3%}")
    print("share = checker / (steps * UNet step + checker); VAE decode and text encoders excluded (conservative)")

    result: dict[str, Any] = {
        "device": str(device),
        "dtype": str(dtype),
        "threads": torch.get_num_threads(),
        "sd15_share": sd15_share,
        "sdxl_share": sdxl_share,
        "checker_512_s": check_512,
        "checker_1024_s": check_1024,
        "sd15_step_s": sd15_step,
        "sdxl_step_s": sdxl_step,
        "vae_included": False,
    }
    if cuda:
        result["gpu_sd15_wall_ratio"] = gpu_wall_ratio()
    if args.json:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
