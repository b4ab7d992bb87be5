"""The output stage on a CUDA device: it follows ``pipe.to("cuda")`` and works under model CPU offload.

Run with ``scripts/test.sh -m gpu`` on a machine with a CUDA device; skipped elsewhere (CI has none, so the CPU
suite covers the same paths with the offload hooks executing on the CPU).
"""

from __future__ import annotations

import pytest
import torch

import safeguard
from safeguard.toy import dominant_colour, toy_world

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CALL = {"num_images_per_prompt": 8, "num_inference_steps": 20, "output_type": "np"}


def _clip_module(guarded: safeguard.ProtectedPipeline) -> torch.nn.Module:
    (stage,) = guarded.guard.image_stages
    return stage.encoder.module


def _check_red_flagged_blue_passed(guarded: safeguard.ProtectedPipeline) -> None:
    red = guarded("a red circle", generator=torch.Generator().manual_seed(2), **CALL)
    is_red = [dominant_colour(img) == "red" for img in red.images]
    assert sum(is_red) >= 6
    assert all(v.flagged for v, r in zip(red.verdicts, is_red, strict=True) if r)
    blue = guarded("a blue circle", generator=torch.Generator().manual_seed(2), **CALL)
    assert not any(v.flagged for v in blue.verdicts)


def test_the_checker_follows_the_pipeline_to_cuda_in_half_precision() -> None:
    world = toy_world()
    guarded = safeguard.protect(world.pipeline, policy=world.policy, preset="research", prompt=False, steering=False)
    guarded.to("cuda")
    parameter = next(_clip_module(guarded).parameters())
    assert parameter.device.type == "cuda" and parameter.dtype == torch.float16
    _check_red_flagged_blue_passed(guarded)


def test_the_checker_works_under_model_cpu_offload() -> None:
    world = toy_world()
    world.pipeline.enable_model_cpu_offload()
    guarded = safeguard.protect(world.pipeline, policy=world.policy, preset="research", prompt=False, steering=False)
    _check_red_flagged_blue_passed(guarded)
    # Between calls the checker is back on the CPU with the offloaded modules.
    assert next(_clip_module(guarded).parameters()).device.type == "cpu"
