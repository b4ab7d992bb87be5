"""A blocked image in a protected pipeline call comes back blurred or withheld per preset, with its verdict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_output_clip import direction, noise_images, plant, tiny_encoder

import safeguard
from safeguard.redact import blur, pixelate
from safeguard.testing import tiny

PROMPT = "a watercolor painting of a lighthouse at dawn"


def _run(pipe, **kwargs):
    return pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(0), **kwargs)


@pytest.fixture(scope="module")
def scene():
    """A tiny SD pipeline, its plain output, and a tiny CLIP planted so that this output reads as violence."""
    pipe = tiny.sd_pipeline()
    plain = _run(pipe, output_type="pt").images
    encoder = tiny_encoder(seed=11)
    stage = safeguard.protect(pipe, image_model=encoder).guard.image_stages[-1]
    assert stage.name == "clip"
    basis = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(1)))[0].T
    neutral = basis[len(stage.concepts.names)]
    plant(stage, torch.cat([plain, noise_images(1, 9, tuple(plain.shape[-2:]))]),
          torch.stack([direction(stage, basis, "violence"), neutral]))  # fmt: skip
    return pipe, plain, encoder


def test_balanced_blurs_the_blocked_image_and_reports_why(scene):
    pipe, plain, encoder = scene
    # Disclosure off: the redacted pixels are compared exactly, without the watermark on top.
    guarded = safeguard.protect(pipe, image_model=encoder, disclosure=False)
    out = _run(guarded, output_type="pt")
    verdict = out.verdicts[0]
    assert verdict.blocked
    finding = next(f for f in verdict.findings if f.source == "clip")
    assert (finding.category, finding.stage) == ("violence", "image")
    assert finding.score >= finding.threshold == 0.8
    assert torch.allclose(out.images, blur(plain), atol=1e-5)
    assert not torch.allclose(out.images, plain, atol=1e-2)


def test_strict_withholds_the_blocked_image(scene):
    pipe, _, encoder = scene
    guarded = safeguard.protect(pipe, preset="strict", image_model=encoder)
    out = _run(guarded)
    assert out.images == [None]
    assert out.verdicts[0].blocked and "violence" in out.verdicts[0].categories
    arrays = _run(guarded, output_type="np").images
    assert not arrays.any()


def test_research_flags_and_returns_the_image_untouched(scene):
    pipe, plain, encoder = scene
    guarded = safeguard.protect(pipe, preset="research", image_model=encoder)
    out = _run(guarded, output_type="pt")
    assert out.verdicts[0].blocked
    assert torch.equal(out.images, plain)


def test_per_category_redaction_in_a_call(scene):
    pipe, plain, encoder = scene
    config = {"output": {"category_redaction": {"violence": "pixelate"}}}
    out = _run(safeguard.protect(pipe, image_model=encoder, config=config, disclosure=False), output_type="np")
    expected = pixelate(plain).permute(0, 2, 3, 1).numpy()
    assert np.allclose(out.images, expected, atol=1e-5)


def test_pipe_to_moves_the_checker_with_the_pipeline(scene):
    pipe, _, encoder = scene
    guarded = safeguard.protect(pipe, image_model=encoder)
    guarded.to("cpu")
    stage = guarded.guard.image_stages[-1]
    assert next(stage.encoder.module.parameters()).device.type == "cpu"
    assert next(stage.encoder.module.parameters()).dtype == torch.float32
