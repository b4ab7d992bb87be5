"""Train the toy world from scratch: a tiny CLIP, a pixel-space VAE and a tiny Stable Diffusion UNet.

Everything is seeded; on the same machine and thread count two runs give the same weights. The full run
takes about 25 minutes on 2 CPU cores and writes the folder that ``safeguard.toy.toy_world()`` loads:

    toy_world/
        policy.yaml, README.md      (kept as they are)
        encoder_calibration.yaml    prompt-score thresholds for this text encoder (safeguard.stages.encoder)
        pipeline/                   StableDiffusionPipeline.save_pretrained folder (safetensors)
        clip/                       CLIPModel folder; its text tower is the pipeline's text encoder file

Phases, in order (each one's time is printed):
    1. data:  a pool of rendered scenes and their tokenized captions (safeguard.toy.make_batch)
    2. clip:  contrastive training of CLIPModel; targets treat scenes with the same content as matches
    3. vae:   a one-block AutoencoderKL constructed (not trained) to be the identity: latents are pixels
    4. unet:  v-prediction DDPM on pixels, conditioned on the frozen CLIP text encoder, with 10% empty
              captions for classifier-free guidance, min-SNR loss weights and an EMA of the weights
    5. calibrate: thresholds for prompt scores from the new text encoder (encoder_calibration.yaml)

Usage:
    python scripts/train_toy_world.py                       # full run, writes safeguard/toy_world
    python scripts/train_toy_world.py --out /tmp/tw --quick # seconds-long smoke run
    python scripts/eval_toy_world.py --path /tmp/tw         # judge what was written
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from safeguard.stages.encoder import calibrate_encoder
from safeguard.testing.tiny import clip_tokenizer
from safeguard.toy import IMAGE_SIZE, TOY_WORLD_DIR, Scene, labelled_prompts, make_batch, toy_world

# OpenAI CLIP's normalisation constants, so generic CLIP preprocessing code works with the toy CLIP too.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Prompts are short; 32 positions hold the longest caption the generator writes.
TEXT_LENGTH = 32
TEXT_WIDTH = 64


@dataclass(frozen=True)
class Settings:
    """Step counts and sizes of one training run."""

    seed: int = 0
    pool: int = 40_000
    clip_steps: int = 800
    clip_batch: int = 128
    clip_lr: float = 2e-3
    unet_steps: int = 2200
    unet_batch: int = 32
    unet_lr: float = 1e-3
    unet_channels: tuple[int, ...] = (16, 32, 64)
    ema_decay: float = 0.999
    empty_caption_share: float = 0.1
    min_snr_gamma: float = 5.0
    prediction_type: str = "v_prediction"
    calibration_prompts: int = 3000


QUICK = Settings(pool=512, clip_steps=5, clip_batch=32, unet_steps=5, unet_batch=8, calibration_prompts=64)


def log(message: str) -> None:
    print(message, flush=True)


def lr_at(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    warmup = min(warmup, max(1, total // 10))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.45 * (1.0 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value


# ----------------------------------------------------------------------------------------------------------
# Data


@dataclass
class Pool:
    """Rendered scenes as tensors: pixels in [-1, 1] (n, 3, H, W), token ids (n, TEXT_LENGTH), content keys."""

    pixels: torch.Tensor
    input_ids: torch.Tensor
    keys: np.ndarray
    empty_ids: torch.Tensor


def scene_key(scene: Scene) -> str:
    # Scenes with the same colours, kinds and background are the same content for the contrastive targets.
    shapes = ",".join(sorted(f"{s.colour}-{s.kind}" for s in scene.shapes))
    return f"{shapes}@{scene.background}"


def build_pool(settings: Settings, tokenizer: CLIPTokenizer) -> Pool:
    batch = make_batch(settings.pool, seed=np.random.default_rng(settings.seed))
    pixels = torch.from_numpy(batch.images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()
    tokens = tokenizer(batch.captions, padding="max_length", max_length=TEXT_LENGTH, truncation=True)
    empty = tokenizer([""], padding="max_length", max_length=TEXT_LENGTH).input_ids
    _, keys = np.unique([scene_key(s) for s in batch.scenes], return_inverse=True)
    return Pool(
        pixels=pixels,
        input_ids=torch.tensor(tokens.input_ids, dtype=torch.long),
        keys=keys,
        empty_ids=torch.tensor(empty, dtype=torch.long),
    )


# ----------------------------------------------------------------------------------------------------------
# Models


def build_tokenizer() -> CLIPTokenizer:
    return clip_tokenizer(TEXT_LENGTH)


def build_clip() -> CLIPModel:
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": 4 * TEXT_WIDTH,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": TEXT_LENGTH,
            "bos_token_id": 49406,
            # Pooling reads the first <|endoftext|>, which is also the padding token.
            "eos_token_id": 49407,
            "pad_token_id": 49407,
        },
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": IMAGE_SIZE,
            "patch_size": 4,
        },
        projection_dim=64,
    )
    return CLIPModel(config)


def build_vae() -> AutoencoderKL:
    """A one-block AutoencoderKL built to be the identity: latents are the pixels, in [-1, 1].

    One block makes ``vae_scale_factor`` 1, so the UNet works in pixel space and no VAE training is needed.
    The only obstacle to an exact identity is the GroupNorm + SiLU before each ``conv_out``, which would
    erase absolute colour levels. The construction sidesteps it: ``conv_in`` writes the channels
    (x, -x, B, -B) with a large constant B, so the group mean is exactly 0 and the group standard deviation
    is B/2 up to a relative error of about 1e-6; the norm's affine weights undo that scale and lift the
    values to where SiLU is linear; ``conv_out`` takes (x - (-x)) / 2. All residual blocks add zero.
    """
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        layers_per_block=1,
        latent_channels=3,
        norm_num_groups=1,
        sample_size=IMAGE_SIZE,
        scaling_factor=1.0,
        mid_block_add_attention=False,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    big, lift = 1000.0, 20.0
    with torch.no_grad():
        for param in vae.parameters():
            param.zero_()  # every residual branch ends in a zero conv, so each block passes its input on
        for coder in (vae.encoder, vae.decoder):
            for c in range(3):
                coder.conv_in.weight[c, c, 1, 1] = 1.0
                coder.conv_in.weight[c + 3, c, 1, 1] = -1.0
                coder.conv_out.weight[c, c, 1, 1] = 0.5
                coder.conv_out.weight[c, c + 3, 1, 1] = -0.5
            coder.conv_in.bias[6], coder.conv_in.bias[7] = big, -big
            coder.conv_norm_out.weight.fill_(math.sqrt(big**2 / 4 + coder.conv_norm_out.eps))
            coder.conv_norm_out.bias.fill_(lift)
        # The encoder's other three outputs are the log-variance: a tiny one, so a sample is the mean.
        vae.encoder.conv_out.bias[3:] = -30.0
    return vae.eval()


def build_unet(settings: Settings) -> UNet2DConditionModel:
    levels = len(settings.unet_channels)
    # Attention only at the coarsest level: at 32x32 it would cost more than the convolutions.
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE,
        in_channels=3,
        out_channels=3,
        block_out_channels=settings.unet_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * (levels - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
        cross_attention_dim=TEXT_WIDTH,
        # diffusers reads this as the number of heads: 2 heads of 32 channels at the 64-channel level.
        attention_head_dim=2,
        norm_num_groups=8,
        # The prompt also reaches every resolution as a global signal: the text states are attention-pooled
        # into the time embedding, which scales and shifts each ResNet's features. Colour is a global
        # property of these scenes, and cross-attention alone (only at 8x8) learns it far more slowly.
        # StableDiffusionPipeline supports this as is: it needs nothing but encoder_hidden_states.
        addition_embed_type="text",
        addition_embed_type_num_heads=4,
        resnet_time_scale_shift="scale_shift",
    )


def train_scheduler(prediction_type: str = "v_prediction") -> DDPMScheduler:
    """The classic pixel-space DDPM schedule (linear betas, as for 32x32 images in the DDPM paper).

    v-prediction rather than epsilon: at high noise an epsilon model's image estimate divides its error
    by sqrt(alpha_bar) (about 1/150 at the last step), and guidance scale 7.5 multiplies that again, which
    in pixel space turns whole backgrounds into saturated false colours. A v model predicts the image
    there almost directly, so guidance extrapolates between two sensible images.
    """
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type=prediction_type,
    )


def sampling_scheduler(prediction_type: str = "v_prediction") -> DPMSolverMultistepScheduler:
    """The scheduler the pipeline ships with: DPM-Solver++ over the training schedule, 20 steps by default.

    The predicted image is clipped to [-1, 1] at every step (``thresholding`` with ``sample_max_value`` 1;
    StableDiffusionPipeline would switch ``clip_sample`` off, so that is not used). Together with
    v-prediction this keeps pixel-space sampling stable at the default guidance scale of 7.5, where DDIM
    with the same settings still drifts to the wrong colour now and then. "trailing" spacing starts the
    sampler at the last training step, where the latents really are pure noise.
    """
    return DPMSolverMultistepScheduler.from_config(
        train_scheduler(prediction_type).config,
        algorithm_type="dpmsolver++",
        solver_order=2,
        thresholding=True,
        dynamic_thresholding_ratio=0.995,
        sample_max_value=1.0,
        steps_offset=1,
        timestep_spacing="trailing",
    )


# ----------------------------------------------------------------------------------------------------------
# Training phases


def train_clip(model: CLIPModel, pool: Pool, settings: Settings, rng: np.random.Generator) -> None:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "embedding" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=settings.clip_lr
    )
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    model.train()
    n = len(pool.keys)
    for step in range(settings.clip_steps):
        set_lr(optimizer, lr_at(step, settings.clip_steps, settings.clip_lr))
        index = rng.choice(n, size=settings.clip_batch, replace=False)
        pixels = ((pool.pixels[index] + 1.0) / 2.0 - mean) / std
        out = model(input_ids=pool.input_ids[index], pixel_values=pixels)
        # Soft targets: every item in the batch with the same content is a match, not a negative.
        keys = torch.from_numpy(pool.keys[index])
        same = (keys[:, None] == keys[None, :]).float()
        targets = same / same.sum(dim=1, keepdim=True)
        logits = out.logits_per_image
        loss = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, math.log(100.0))
        if step % 100 == 0 or step == settings.clip_steps - 1:
            accuracy = (same[torch.arange(len(index)), logits.argmax(dim=1)] > 0).float().mean()
            log(f"  clip step {step:5d}  loss {loss.item():.4f}  batch top-1 {accuracy.item():.3f}")
    model.eval()


def train_unet(
    unet: UNet2DConditionModel,
    text_encoder: torch.nn.Module,
    pool: Pool,
    settings: Settings,
    rng: np.random.Generator,
    gen: torch.Generator,
    snapshots: Path | None = None,
) -> UNet2DConditionModel:
    """Train ``unet`` and return an EMA copy of it (the one to save).

    With ``snapshots``, the EMA weights are also written there every 500 steps, to study quality vs. steps.
    """
    scheduler = train_scheduler(settings.prediction_type)
    alphas = scheduler.alphas_cumprod
    optimizer = torch.optim.AdamW(unet.parameters(), lr=settings.unet_lr, weight_decay=0.0)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    unet.train()
    n = len(pool.keys)
    started = time.perf_counter()
    for step in range(settings.unet_steps):
        set_lr(optimizer, lr_at(step, settings.unet_steps, settings.unet_lr))
        index = rng.choice(n, size=settings.unet_batch, replace=False)
        x0 = pool.pixels[index]
        ids = pool.input_ids[index].clone()
        drop = torch.from_numpy(rng.random(len(index)) < settings.empty_caption_share)
        ids[drop] = pool.empty_ids
        with torch.no_grad():
            context = text_encoder(input_ids=ids).last_hidden_state
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(index),), generator=gen)
        noisy = scheduler.add_noise(x0, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=context).sample
        # Min-SNR weighting: low-noise steps stop dominating the loss, which speeds up training.
        snr = alphas[t] / (1.0 - alphas[t])
        if settings.prediction_type == "epsilon":
            target, weight = noise, snr.clamp(max=settings.min_snr_gamma) / snr
        else:
            target, weight = scheduler.get_velocity(x0, noise, t), snr.clamp(max=settings.min_snr_gamma) / (snr + 1)
        loss = (weight * (pred - target).pow(2).mean(dim=(1, 2, 3))).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        # EMA with a warm-up, so the average is not dominated by the random initial weights.
        decay = min(settings.ema_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for avg, param in zip(ema.parameters(), unet.parameters(), strict=True):
                avg.lerp_(param, 1.0 - decay)
        if step % 100 == 0 or step == settings.unet_steps - 1:
            rate = (time.perf_counter() - started) / (step + 1)
            log(f"  unet step {step:5d}  loss {loss.item():.4f}  {rate:.2f} s/step")
        if snapshots is not None and (step + 1) % 500 == 0:
            snapshots.mkdir(parents=True, exist_ok=True)
            save_file(ema.state_dict(), snapshots / f"unet-{step + 1:05d}.safetensors")
    return ema


# ----------------------------------------------------------------------------------------------------------
# Saving


def _rewrite_safetensors(path: Path, transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> None:
    tensors = transform(load_file(path))
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})


def save_tokenizer(tokenizer: CLIPTokenizer, folder: Path) -> None:
    """Write vocab.json + merges.txt (1.5 MB) instead of tokenizer.json (3.6 MB); both load the same."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        config = json.loads((Path(tmp) / "tokenizer_config.json").read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only", "backend"):
        config.pop(key, None)
    config["model_max_length"] = TEXT_LENGTH
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / "tokenizer.json").unlink(missing_ok=True)
    tokenizer.backend_tokenizer.model.save(str(folder))


def save_world(
    out: Path,
    clip: CLIPModel,
    tokenizer: CLIPTokenizer,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    prediction_type: str = "v_prediction",
) -> None:
    scheduler = sampling_scheduler(prediction_type)
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=clip.text_model,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe_dir, clip_dir = out / "pipeline", out / "clip"
    for folder in (pipe_dir, clip_dir):
        if folder.exists():
            shutil.rmtree(folder)
    pipeline.save_pretrained(pipe_dir, safe_serialization=True)
    save_tokenizer(tokenizer, pipe_dir / "tokenizer")

    # The text encoder holds the 49408-token embedding table, most of the bytes: store it once, in float16,
    # under the classic "text_model." key names that both CLIPTextModel and CLIPModel load.
    text_file = pipe_dir / "text_encoder" / "model.safetensors"
    _rewrite_safetensors(text_file, lambda sd: {f"text_model.{k}": v.half() for k, v in sd.items()})

    # The CLIP folder stores only what the text encoder file lacks; its index points at that file.
    clip_dir.mkdir(parents=True)
    clip.config.dtype = "float32"
    clip.config.save_pretrained(clip_dir)
    own = {k: v.detach().clone() for k, v in clip.state_dict().items() if not k.startswith("text_model.")}
    save_file({k: v.contiguous() for k, v in own.items()}, clip_dir / "vision.safetensors", metadata={"format": "pt"})
    text_keys = list(load_file(text_file))
    weight_map = {k: "vision.safetensors" for k in own} | {
        k: "../pipeline/text_encoder/model.safetensors" for k in text_keys
    }
    index = {
        "metadata": {"note": "text_model.* is the pipeline's text encoder, stored once"},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (clip_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    save_tokenizer(tokenizer, clip_dir)
    preprocessor = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": IMAGE_SIZE},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "do_convert_rgb": True,
    }
    (clip_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=TOY_WORLD_DIR, help="folder to write (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    # One thread by default: on a shared machine two OpenMP threads can be many times slower than one.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (results depend on it)")
    parser.add_argument("--quick", action="store_true", help="a few steps of each phase: a smoke test")
    parser.add_argument("--clip-steps", type=int)
    parser.add_argument("--unet-steps", type=int)
    parser.add_argument("--snapshots", type=Path, help="also save the EMA UNet here every 500 steps")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = replace(QUICK if args.quick else Settings(), seed=args.seed)
    overrides = {"clip_steps": args.clip_steps, "unet_steps": args.unet_steps}
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    torch.set_num_threads(args.threads)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    log(f"settings: {settings}")
    wall0, cpu0 = time.perf_counter(), time.process_time()

    def phase(name: str, since: float) -> float:
        now = time.perf_counter()
        log(f"[{name}] {now - since:.1f} s (total {now - wall0:.1f} s wall, {time.process_time() - cpu0:.1f} s CPU)")
        return now

    t = time.perf_counter()
    tokenizer = build_tokenizer()
    pool = build_pool(settings, tokenizer)
    t = phase("data", t)

    clip = build_clip()
    train_clip(clip, pool, settings, rng)
    t = phase("clip", t)

    vae = build_vae()

    unet = build_unet(settings)
    log(f"  unet parameters: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M")
    text_encoder = clip.text_model.eval().requires_grad_(False)
    ema = train_unet(unet, text_encoder, pool, settings, rng, gen, args.snapshots)
    t = phase("unet", t)

    args.out.mkdir(parents=True, exist_ok=True)
    save_world(args.out, clip, tokenizer, vae, ema, settings.prediction_type)
    if args.out.resolve() != TOY_WORLD_DIR.resolve():
        # A world elsewhere gets the committed policy, so toy_world(out) loads it the same way.
        shutil.copy2(TOY_WORLD_DIR / "policy.yaml", args.out / "policy.yaml")
    t = phase("save", t)

    # Prompt scores from the new text encoder need their own calibration (safeguard.stages.encoder).
    world = toy_world(args.out)
    prompts, labels = labelled_prompts(settings.calibration_prompts, seed=settings.seed)
    calibration = calibrate_encoder(
        world.pipeline,
        world.policy,
        prompts,
        labels,
        provenance={
            "data": f"{len(prompts)} toy captions (safeguard.toy.labelled_prompts, seed {settings.seed})",
            "command": "scripts/train_toy_world.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        },
    )
    calibration.save(args.out / "encoder_calibration.yaml")
    log(f"  encoder calibration: red (steer, block) = {calibration.thresholds['red']}")
    phase("calibrate", t)
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    log(f"wrote {args.out} ({total / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
