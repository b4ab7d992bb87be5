"""Faults injected into each stage block the content and name the failed stage; nothing passes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import count_denoiser_calls

import safeguard
from safeguard.guard import Guard
from safeguard.stages.keywords import KeywordPromptStage
from safeguard.stages.opennsfw import OpenNSFWStage
from safeguard.testing import tiny
from safeguard.verdict import STAGE_FAILURE, Verdict


def _raise(*_args, **_kwargs):
    raise RuntimeError("checker exploded")


def _nan_prompt(self, prompts):
    return [
        Verdict.from_findings([], {"sexual": math.nan}, policy_id=self.policy.id, policy_version=self.policy.version)
        for _ in prompts
    ]


def _nan_image(self, images):
    return [
        Verdict.from_findings([], {"sexual": math.nan}, policy_id=self.policy.id, policy_version=self.policy.version)
        for _ in range(images.shape[0])
    ]


def _too_few(self, items):
    return []


def _failure(verdict: Verdict, source: str):
    assert verdict.blocked
    finding = next(f for f in verdict.findings if f.category == STAGE_FAILURE)
    assert finding.source == source
    return finding


@pytest.mark.parametrize("fault", [_raise, _nan_prompt, _too_few])
@pytest.mark.parametrize("prompt_stage_on", [True, False])
def test_prompt_stage_fault_blocks(monkeypatch, fault, prompt_stage_on):
    monkeypatch.setattr(KeywordPromptStage, "check", fault)
    guard = Guard.create(preset="research", prompt=prompt_stage_on)
    verdicts = guard.check_prompts(["a lighthouse", "a red bicycle"])
    assert len(verdicts) == 2
    for verdict in verdicts:
        finding = _failure(verdict, "keywords")
        assert finding.stage == "prompt" and finding.score >= finding.threshold


@pytest.mark.parametrize("fault", [_raise, _nan_image, _too_few])
def test_image_stage_fault_blocks(monkeypatch, fault):
    monkeypatch.setattr(OpenNSFWStage, "check", fault)
    verdicts = safeguard.check_images([np.full((32, 32, 3), 128, np.uint8)] * 3, preset="research")
    assert len(verdicts) == 3
    for verdict in verdicts:
        assert _failure(verdict, "opennsfw").stage == "output"


def test_prompt_fault_in_a_pipeline_call_raises_before_denoising(monkeypatch):
    monkeypatch.setattr(KeywordPromptStage, "check", _raise)
    guarded = safeguard.protect(tiny.sd_pipeline(), preset="research", on_block="return")
    with count_denoiser_calls(guarded.pipeline) as calls:
        out = guarded("a lighthouse", num_inference_steps=2)
    assert calls[0] == 0 and out.images == []
    _failure(out.prompt_verdicts[0], "keywords")


def test_image_fault_in_a_pipeline_call_withholds_even_under_flag_only(monkeypatch):
    monkeypatch.setattr(OpenNSFWStage, "check", _raise)
    guarded = safeguard.protect(tiny.sd_pipeline(), preset="research")  # research only flags blocked images
    assert guarded.guard.settings.output.redaction == "flag"
    out = guarded("a lighthouse", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.images == [None]
    _failure(out.verdicts[0], "opennsfw")
    arrays = guarded("a lighthouse", num_inference_steps=2, output_type="np").images
    assert not arrays.any(), "a withheld image in an array output is all zeros"


def test_image_fault_raises_when_the_preset_raises(monkeypatch):
    monkeypatch.setattr(OpenNSFWStage, "check", _raise)
    guarded = safeguard.protect(tiny.sd_pipeline(), config={"output": {"redaction": "raise"}})
    with pytest.raises(safeguard.ImageBlocked) as raised:
        guarded("a lighthouse", num_inference_steps=2)
    _failure(raised.value.verdict, "opennsfw")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("output_type", ["pil", "np", "pt"])
@pytest.mark.parametrize("settings", [{}, {"preset": "research"}, {"preset": "research", "output": False}])
def test_a_non_finite_decoded_image_is_withheld_with_a_stage_failure(bad, output_type, settings):
    pipe = tiny.sd_pipeline()
    guarded = safeguard.protect(pipe, **settings)

    def poison_second(_module, _args, decoded):
        decoded = decoded.clone()
        decoded[1, 0, 0, 0] = bad  # one value of the second image of the batch
        return decoded

    handle = pipe.vae.decoder.register_forward_hook(poison_second)
    try:
        out = guarded(["a lighthouse", "a red bicycle"], num_inference_steps=2, output_type=output_type)
    finally:
        handle.remove()
    assert not out.verdicts[0].blocked and out.images[0] is not None
    failure = _failure(out.verdicts[1], "output-check")
    assert failure.stage == "output" and "non-finite" in failure.detail
    if output_type == "pil":
        assert out.images[1] is None
    else:
        assert not out.images[1].any(), "withheld: all zeros"
        assert bool(np.isfinite(np.asarray(out.images)).all())
