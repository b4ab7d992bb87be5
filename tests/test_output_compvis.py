"""The CompVis safety checker backend decides exactly as diffusers' own ``StableDiffusionSafetyChecker``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPConfig

from safeguard.config import resolve_settings
from safeguard.errors import ConfigError
from safeguard.guard import Guard
from safeguard.policy import load_policy
from safeguard.stages.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, preprocess
from safeguard.stages.compvis import CompVisStage, compvis_margins

POLICY = load_policy()
SIZE = 32


def _tiny_checker(images: torch.Tensor) -> StableDiffusionSafetyChecker:
    """A tiny checker whose concept thresholds sit inside the batch's similarity range, so some images fire."""
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": SIZE,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        checker.concept_embeds.copy_(torch.randn(17, 16))
        checker.special_care_embeds.copy_(torch.randn(3, 16))
        clip_input = preprocess(images, SIZE, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        emb = torch.nn.functional.normalize(checker.visual_projection(checker.vision_model(clip_input)[1]), dim=-1)
        cos = emb @ torch.nn.functional.normalize(checker.concept_embeds, dim=-1).T
        special = emb @ torch.nn.functional.normalize(checker.special_care_embeds, dim=-1).T
        # Concept 0's threshold at the batch median, one special-care concept near its top (so the +0.01
        # adjustment takes part), every other concept out of reach.
        concept_w = torch.full((17,), 2.0)
        concept_w[0] = torch.quantile(cos[:, 0], 0.5)
        special_w = torch.full((3,), 2.0)
        special_w[0] = torch.quantile(special[:, 0], 0.75)
        checker.concept_embeds_weights.copy_(concept_w)
        checker.special_care_embeds_weights.copy_(special_w)
    return checker


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    # Diverse images (a colour each, plus noise of varying strength) so that CLIP similarities spread out.
    gen = torch.Generator().manual_seed(0)
    colours = torch.rand(12, 3, 1, 1, generator=gen)
    noise = torch.rand(12, 3, SIZE, SIZE, generator=gen)
    strength = torch.linspace(0, 1, 12).view(12, 1, 1, 1)
    images = (colours * (1 - strength) + noise * strength).clamp(0, 1)
    checker = _tiny_checker(images)
    root = tmp_path_factory.mktemp("sd15-checkpoint")
    checker.save_pretrained(root / "safety_checker")
    return images, checker, root


def test_decisions_equal_diffusers_checker_on_a_batch(setup):
    images, checker, root = setup
    settings = resolve_settings(config={"output": {"backends": ["compvis"], "compvis": {"weights": str(root)}}})
    guard = Guard(POLICY, settings)
    assert [s.name for s in guard.image_stages] == ["compvis"]
    ours = guard.check_images(images)

    clip_input = preprocess(images, SIZE, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    np_images = images.permute(0, 2, 3, 1).numpy().copy()
    with torch.no_grad():
        _, reference = checker(clip_input=clip_input, images=np_images)
    assert [v.blocked for v in ours] == list(reference)
    assert 0 < sum(reference) < len(reference), "the batch must hold both kinds of images"
    for verdict, nsfw in zip(ours, reference, strict=True):
        score = verdict.category_scores["sexual"]
        assert (score > 0.5) == nsfw
        if nsfw:
            finding = verdict.findings[0]
            assert (finding.category, finding.source, finding.threshold) == ("sexual", "compvis", 0.5)
            assert "CompVis margin +" in finding.detail


def test_margins_match_the_reference_scores(setup):
    images, checker, _ = setup
    clip_input = preprocess(images, SIZE, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    margins = compvis_margins(checker, clip_input)
    # The reference records its rounded margins per concept; compare the largest per image.
    with torch.no_grad():
        pooled = checker.vision_model(clip_input)[1]
        emb = checker.visual_projection(pooled)
    special = (
        torch.nn.functional.normalize(emb, dim=-1)
        @ torch.nn.functional.normalize(checker.special_care_embeds, dim=-1).T
    )
    cos = torch.nn.functional.normalize(emb, dim=-1) @ torch.nn.functional.normalize(checker.concept_embeds, dim=-1).T
    for i in range(len(images)):
        adjustment = (
            0.01
            if any(round(float(special[i, k]) - float(checker.special_care_embeds_weights[k]), 3) > 0 for k in range(3))
            else 0.0
        )
        expected = max(
            round(float(cos[i, k]) - float(checker.concept_embeds_weights[k]) + adjustment, 3) for k in range(17)
        )
        assert float(margins[i]) == pytest.approx(expected, abs=1.5e-3)


def test_the_backend_stays_on_the_tensor_path(setup, monkeypatch):
    images, _, root = setup

    def boom(*_a, **_k):
        raise AssertionError("left the tensor path")

    monkeypatch.setattr(torch.Tensor, "numpy", boom)
    stage = CompVisStage(POLICY, resolve_settings(config={"output": {"compvis": {"weights": str(root)}}}).output)
    assert len(stage.check(images)) == len(images)


def test_missing_checker_weights_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"compvis\.weights"):
        Guard.create(config={"output": {"backends": ["compvis"]}})
    with pytest.raises(ConfigError, match="no CompVis safety checker"):
        Guard.create(config={"output": {"backends": ["compvis"], "compvis": {"weights": str(tmp_path)}}})


def test_numpy_reference_images_untouched(setup):
    """diffusers' checker blacks out flagged images in its ``images`` argument; ours never edits inputs."""
    images, _, root = setup
    before = images.clone()
    CompVisStage(POLICY, resolve_settings(config={"output": {"compvis": {"weights": str(root)}}}).output).check(images)
    assert torch.equal(images, before)
    assert np.isfinite(before.numpy()).all()
