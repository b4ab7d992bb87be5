"""The toy world: data generator, pixel judge, committed weights, and the training script end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from safeguard.toy import (
    COLOURS,
    IMAGE_SIZE,
    MARGIN,
    TOY_WORLD_DIR,
    ToyWorld,
    dominant_colour,
    make_batch,
    shows_shape,
    toy_world,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world() -> ToyWorld:
    return toy_world()


# ---------------------------------------------------------------------------------------------- data + judge


def test_batches_are_deterministic_per_seed() -> None:
    first, second, other = make_batch(16, seed=5), make_batch(16, seed=5), make_batch(16, seed=6)
    assert np.array_equal(first.images, second.images)
    assert first.captions == second.captions
    assert not np.array_equal(first.images, other.images)


def test_captions_use_synonyms_and_backgrounds() -> None:
    captions = " ".join(make_batch(400, seed=1).captions).split()
    for word in ("red", "crimson", "scarlet", "background", "small", "large", "and"):
        assert word in captions


def test_shapes_keep_a_margin_from_the_border() -> None:
    batch = make_batch(200, seed=2)
    for image, scene in zip(batch.images, batch.scenes, strict=True):
        border = np.concatenate([image[:MARGIN].reshape(-1, 3), image[-MARGIN:].reshape(-1, 3)])
        border = np.concatenate([border, image[:, :MARGIN].reshape(-1, 3), image[:, -MARGIN:].reshape(-1, 3)])
        expected = np.round(np.asarray(scene.background_rgb) * 255)
        assert np.abs(border - expected).max() <= 1


def test_judge_names_the_colour_of_rendered_single_shapes() -> None:
    batch = make_batch(400, seed=3)
    singles = [(img, s) for img, s in zip(batch.images, batch.scenes, strict=True) if len(s.shapes) == 1]
    assert len(singles) > 250
    for image, scene in singles:
        assert dominant_colour(image) == scene.main_colour, scene.caption
        assert shows_shape(image), scene.caption
    # Every colour is represented, and every one is recognised.
    assert {s.main_colour for _, s in singles} == set(COLOURS)


def test_judge_accepts_pil_and_float_images() -> None:
    batch = make_batch(4, seed=4)
    for image, scene in zip(batch.images, batch.scenes, strict=True):
        expected = dominant_colour(image)
        assert dominant_colour(Image.fromarray(image)) == expected
        assert dominant_colour(image.astype(np.float32) / 255.0) == expected
        assert expected == scene.main_colour or len(scene.shapes) == 2


def test_judge_rejects_blank_and_noise() -> None:
    blank = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    assert dominant_colour(blank) == "none"
    assert not shows_shape(blank)
    assert not shows_shape(noise)
    with pytest.raises(ValueError, match="RGB"):
        dominant_colour(np.zeros((8, 8), np.uint8))


# ---------------------------------------------------------------------------------------------- the weights


def test_toy_world_loads(world: ToyWorld) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = world.pipeline
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.safety_checker is None
    assert world.image_size == IMAGE_SIZE
    # The pipeline's own default: unet sample size times the VAE's scale factor.
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == IMAGE_SIZE
    assert pipe.unet.dtype == torch.float32
    assert pipe.text_encoder.dtype == torch.float32
    # The real CLIP vocabulary: "red" and "circle" have their OpenAI ids.
    assert pipe.tokenizer("a red circle").input_ids == [49406, 320, 736, 7117, 49407]


def test_toy_policy_has_red(world: ToyWorld) -> None:
    red = world.policy["red"]
    assert set(red.keywords) >= {"red", "crimson", "scarlet"}
    assert "a red shape" in red.concepts
    assert world.policy_path == TOY_WORLD_DIR / "policy.yaml"
    assert world.policy.image_model is not None
    assert world.policy.image_model.path == (TOY_WORLD_DIR / "clip").resolve()


def test_weights_are_small_safetensors() -> None:
    files = [f for f in TOY_WORLD_DIR.rglob("*") if f.is_file()]
    assert not [f for f in files if f.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    weights = sum(f.stat().st_size for f in files if f.suffix == ".safetensors")
    assert weights < 30e6
    assert (TOY_WORLD_DIR / "README.md").is_file()


def test_pipeline_folder_loads_on_its_own() -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(TOY_WORLD_DIR / "pipeline", local_files_only=True)
    assert pipe.tokenizer.model_max_length == pipe.text_encoder.config.max_position_embeddings


def test_clip_text_tower_is_the_pipeline_text_encoder(world: ToyWorld) -> None:
    clip_text = world.clip.model.text_model.state_dict()
    pipe_text = world.pipeline.text_encoder.state_dict()
    assert clip_text.keys() == pipe_text.keys()
    assert all(torch.equal(clip_text[k], pipe_text[k]) for k in clip_text)


def test_vae_is_the_identity(world: ToyWorld) -> None:
    # Latents are pixels: the one-block VAE is built to pass images through unchanged.
    pixels = torch.from_numpy(make_batch(4, seed=9).images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    vae = world.pipeline.vae
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean
        decoded = vae.decode(latents).sample
    assert world.pipeline.vae_scale_factor == 1
    assert torch.allclose(latents, pixels, atol=1e-3)
    assert torch.allclose(decoded, pixels, atol=1e-3)


def test_clip_tells_colours_apart(world: ToyWorld) -> None:
    batch = make_batch(120, seed=11)
    names = list(COLOURS)
    probs = world.clip.classify(batch.images, [f"a {c} shape" for c in names])
    singles = [i for i, s in enumerate(batch.scenes) if len(s.shapes) == 1]
    predicted = [names[probs[i].argmax()] for i in singles]
    truth = [batch.scenes[i].main_colour for i in singles]
    assert np.mean([p == t for p, t in zip(predicted, truth, strict=True)]) >= 0.9


def _generate(pipeline, prompt: str, n: int, seed: int):
    """``n`` images of ``prompt`` as numpy arrays: 20 steps, seeded, from a plain or a protected pipeline."""
    return pipeline(
        prompt,
        num_images_per_prompt=n,
        num_inference_steps=20,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )


def _red_share(world: ToyWorld, prompt: str, n: int, seed: int) -> float:
    out = _generate(world.pipeline, prompt, n, seed)
    assert out.images.shape == (n, IMAGE_SIZE, IMAGE_SIZE, 3)
    return float(np.mean([dominant_colour(img) == "red" for img in out.images]))


def test_short_generation_draws_what_is_asked(world: ToyWorld) -> None:
    assert _red_share(world, "a red circle", 8, seed=0) >= 0.75
    assert _red_share(world, "a blue circle", 8, seed=0) <= 0.125


def test_prompt_stage_flags_red_by_name_and_synonym_through_the_toy_text_encoder(world: ToyWorld) -> None:
    from safeguard.stages.encoder import EncoderPromptStage

    stage = EncoderPromptStage.for_pipeline(world.pipeline, world.policy)
    assert stage is not None, "the committed encoder calibration no longer matches the committed text encoder"
    red = ["a red circle", "a crimson circle", "a scarlet square", "a large red triangle", "a small crimson disc"]
    other = ["a blue circle", "a green square", "an orange triangle", "a small purple diamond", "a yellow disc"]
    for prompt, verdict in zip(red + other, stage.check(red + other), strict=True):
        assert verdict.flagged == (prompt in red), (prompt, verdict.category_scores)
        assert all(f.source == "encoder" for f in verdict.findings)


def test_prompt_embeds_alone_are_scored_by_the_toy_text_encoder(world: ToyWorld) -> None:
    import safeguard

    pipe = world.pipeline
    # Accepted only by an explicit user setting, and only with an image check (the toy world's CLIP) on.
    accept = {"accept_prompt_embeds": True}
    guarded = safeguard.protect(
        pipe, policy=world.policy, preset="research", steering=False, on_block="return", config=accept
    )
    embeds, _ = pipe.encode_prompt(["a crimson circle", "a green square"], pipe.device, 1, False)
    seeded = {"num_inference_steps": 2, "output_type": "np"}
    out = guarded(prompt_embeds=embeds, generator=torch.Generator().manual_seed(0), **seeded)
    assert [v.action.value for v in out.prompt_verdicts] == ["block", "allow"]
    assert out.prompt_verdicts[0].findings[0].source == "encoder"
    # The blocked row never runs: its slot is withheld, and the other is what its embeddings give alone.
    assert [v.blocked for v in out.verdicts] == [True, False]
    assert not out.images[0].any()
    alone = guarded(prompt_embeds=embeds[1:], generator=torch.Generator().manual_seed(0), **seeded)
    assert np.array_equal(out.images[1], alone.images[0])
    with pytest.raises(safeguard.PromptBlocked):
        safeguard.protect(pipe, policy=world.policy, preset="research", config=accept)(
            prompt_embeds=embeds[:1], num_inference_steps=2
        )


def test_output_stage_flags_red_images_and_passes_blue(world: ToyWorld) -> None:
    import safeguard

    guarded = safeguard.protect(world.pipeline, policy=world.policy, preset="research", prompt=False, steering=False)
    assert [s.name for s in guarded.guard.image_stages] == ["clip"]
    for prompt in ("a red circle", "a blue circle"):
        out = _generate(guarded, prompt, 8, seed=2)
        assert len(out.verdicts) == 8
        assert all("output" in v.stages and "red" in v.category_scores for v in out.verdicts)
        # Flagged images are redacted, so judge the colours on the unprotected pipeline's images.
        plain = _generate(world.pipeline, prompt, 8, seed=2).images
        red = [dominant_colour(img) == "red" for img in plain]
        flagged = [v.flagged for v in out.verdicts]
        assert sum(r and f for r, f in zip(red, flagged, strict=True)) == sum(red), prompt
        assert sum(f and not r for r, f in zip(red, flagged, strict=True)) <= 1, prompt


def test_steering_alone_removes_red_and_keeps_other_colours(world: ToyWorld) -> None:
    import safeguard

    guarded = safeguard.protect(
        world.pipeline, policy=world.policy, preset="research", prompt=False, output=False, steering="strong"
    )
    for prompt, colour, steered in (("a crimson circle", "red", True), ("a blue circle", "blue", False)):
        out = _generate(guarded, prompt, 8, seed=3)
        share = np.mean([dominant_colour(img) == colour for img in out.images])
        assert share <= 0.125 if steered else share >= 0.875, (prompt, share)


@pytest.mark.slow
def test_synonyms_draw_red(world: ToyWorld) -> None:
    for prompt in ("a crimson circle", "a scarlet circle"):
        assert _red_share(world, prompt, 16, seed=1) >= 0.75, prompt


@pytest.mark.slow
def test_training_script_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "world"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train_toy_world.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    small = toy_world(out)
    images = small.pipeline("a red circle", num_inference_steps=2, output_type="np").images
    assert images.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert "red" in small.policy


def test_protected_call_works_under_model_cpu_offload() -> None:
    # CI has no accelerator, so accelerate's offload hooks execute on the CPU here.
    import safeguard

    world = toy_world()
    world.pipeline.enable_model_cpu_offload(device="cpu")
    assert world.pipeline._execution_device.type == "cpu"
    guarded = safeguard.protect(world.pipeline, policy=world.policy, preset="research", prompt=False, steering=False)
    red = _generate(guarded, "a red circle", 4, seed=2)
    blue = _generate(guarded, "a blue circle", 4, seed=2)
    assert [s.name for s in guarded.guard.image_stages] == ["clip"]
    is_red = [dominant_colour(img) == "red" for img in red.images]
    assert sum(is_red) >= 3
    assert all(v.flagged for v, r in zip(red.verdicts, is_red, strict=True) if r)
    assert not any(v.flagged for v in blue.verdicts)
    assert all(dominant_colour(img) == "blue" for img in blue.images)


def test_loading_the_bundled_models_draws_no_progress_bars(capsys):
    from transformers.utils import logging as transformers_logging

    before = transformers_logging.is_progress_bar_enabled()
    toy_world()
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "Loading pipeline components" not in err
    assert transformers_logging.is_progress_bar_enabled() == before  # restored for the user's own loads
