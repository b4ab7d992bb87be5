"""Shared fixtures: offline mode, the tiny real pipelines of every supported family, and a denoiser call counter."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers or transformers are imported anywhere

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from safeguard.testing import tiny

# Two pytest workers share two cores; more threads per worker only adds contention for these tiny models.
torch.set_num_threads(1)

FAMILIES: dict[str, Callable[[], Any]] = {
    "sd": tiny.sd_pipeline,
    "sdxl": tiny.sdxl_pipeline,
    "sd3": tiny.sd3_pipeline,
    "flux": tiny.flux_pipeline,
}


@pytest.fixture(params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_pipeline(family: str) -> Callable[[], Any]:
    """A builder of fresh tiny pipelines of the parametrised family."""
    return FAMILIES[family]


@contextmanager
def count_denoiser_calls(pipe: Any) -> Iterator[list[int]]:
    """Count forward calls of the pipeline's denoiser (unet or transformer) while the block runs."""
    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    calls = [0]
    handle = denoiser.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        handle.remove()


def hook_count(module: torch.nn.Module) -> int:
    """All forward hooks, pre-hooks and diffusers hook registries on a module tree."""
    total = 0
    for sub in module.modules():
        total += len(sub._forward_hooks) + len(sub._forward_pre_hooks)
        registry = getattr(sub, "_diffusers_hook", None)
        total += len(registry.hooks) if registry is not None else 0
    return total
