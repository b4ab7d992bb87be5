"""The CompVis ``StableDiffusionSafetyChecker`` as an image backend, with its margins instead of a bare bool.

diffusers' checker compares CLIP ViT-L/14 image embeddings with 17 concept embeddings and 3 "special care"
embeddings, each with its own cosine threshold; an image is NSFW when any concept's rounded margin
``cos - threshold (+ 0.01 once a special-care concept fired)`` is above zero. This backend computes the same
margins, vectorised over the batch, from the ``(B, 3, H, W)`` tensor on the pipeline's device (CLIP
preprocessing in torch, no PIL), and reports them as scores of the policy's ``sexual`` category:

    score = clamp(0.5 + max_margin, 0, 1), blocked exactly when max_margin > 0 (score above 0.5)

so its decisions are the checker's own. The weights come from a local checkpoint's ``safety_checker`` folder
(``output.compvis.weights``: the checkpoint root or the folder itself).

Example:
    >>> from safeguard.config import resolve_settings
    >>> from safeguard.policy import load_policy
    >>> s = resolve_settings(config={"output": {"backends": ["compvis"], "compvis": {"weights": "/ckpt/sd15"}}})
    >>> CompVisStage(load_policy(), s.output)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from safeguard._quiet import no_loading_bars
from safeguard.config import OutputSettings
from safeguard.errors import ConfigError
from safeguard.policy import Policy
from safeguard.stages.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, _move, preprocess
from safeguard.verdict import Action, Finding, Verdict

__all__ = ["CompVisStage", "compvis_margins", "load_safety_checker"]

#: The score at which a zero margin lands; the checker blocks strictly above it.
THRESHOLD = 0.5


@functools.lru_cache(maxsize=2)
def load_safety_checker(path: str) -> tuple[Any, int, tuple[float, ...], tuple[float, ...]]:
    """Load ``StableDiffusionSafetyChecker`` from a checkpoint root or its ``safety_checker`` folder.

    Returns the model and its preprocessing (size, mean, std), read from the checkpoint's
    ``feature_extractor`` folder when there is one.

    Raises:
        ConfigError: no checker weights at ``path``.
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    root = Path(path).expanduser()
    folder = root / "safety_checker" if (root / "safety_checker").is_dir() else root
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"no CompVis safety checker at {root} (expected a checkpoint with a safety_checker folder, or that "
            "folder itself); give output.compvis.weights or remove compvis from output.backends"
        )
    try:
        with no_loading_bars():
            model = StableDiffusionSafetyChecker.from_pretrained(folder).eval()
    except Exception as err:
        raise ConfigError(f"could not load the safety checker from {folder}: {type(err).__name__}: {err}") from err
    size = int(model.config.vision_config.image_size)
    mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    pre = folder.parent / "feature_extractor" / "preprocessor_config.json"
    if pre.is_file():
        data = json.loads(pre.read_text())
        crop = data.get("crop_size", size)
        size = int(crop["height"] if isinstance(crop, dict) else crop)
        mean = tuple(float(v) for v in data.get("image_mean", mean))
        std = tuple(float(v) for v in data.get("image_std", std))
    return model, size, mean, std


def compvis_margins(checker: Any, clip_input: torch.Tensor) -> torch.Tensor:
    """Per image, the largest rounded concept margin of the checker, as its ``forward`` computes them.

    ``clip_input`` is the preprocessed ``(B, 3, 224, 224)`` batch. An image is NSFW for diffusers exactly
    when its margin is above zero. The margins come back on the host.

    Example:
        >>> compvis_margins(checker, clip_input)  # doctest: +SKIP
        tensor([-0.0420, 0.0130], dtype=torch.float64)
    """
    with torch.inference_mode():
        pooled = checker.vision_model(clip_input)[1]
        embeds = F.normalize(checker.visual_projection(pooled).float(), dim=-1)
        special = embeds @ F.normalize(checker.special_care_embeds.float(), dim=-1).T
        concepts = embeds @ F.normalize(checker.concept_embeds.float(), dim=-1).T
        # One transfer for the batch. The reference works in float32 on the host (numpy float32 minus a Python
        # float stays float32) and rounds each margin to 3 decimals; so do we, in the same order.
        special = special.cpu() - checker.special_care_embeds_weights.detach().cpu().float()
        concepts = concepts.cpu() - checker.concept_embeds_weights.detach().cpu().float()
    special = torch.round(special, decimals=3)
    adjustment = torch.where((special > 0).any(dim=1, keepdim=True), 0.01, 0.0).float()
    return torch.round(concepts + adjustment, decimals=3).max(dim=1).values.double()


class CompVisStage:
    """Scores ``sexual`` with the CompVis safety checker's margins (see the module docstring)."""

    name = "compvis"
    categories = ("sexual",)

    def __init__(self, policy: Policy, settings: OutputSettings) -> None:
        self.policy = policy
        self.settings = settings
        weights = settings.compvis_weights
        if weights is None:
            raise ConfigError(
                "the compvis backend needs output.compvis.weights: a local checkpoint folder with a "
                "safety_checker subfolder"
            )
        if isinstance(weights, str | Path):
            self.model, self.size, self.mean, self.std = load_safety_checker(str(weights))
        else:  # an already loaded StableDiffusionSafetyChecker
            self.model = weights
            self.size, self.mean, self.std = (
                int(weights.config.vision_config.image_size),
                OPENAI_CLIP_MEAN,
                OPENAI_CLIP_STD,
            )

    def to(self, device: torch.device | str) -> CompVisStage:
        _move(self.model, torch.device(device))
        return self

    def margins(self, images: torch.Tensor) -> torch.Tensor:
        """The checker's largest margin per image of a ``(B, 3, H, W)`` batch in ``[0, 1]``."""
        home = next(self.model.parameters()).device
        visiting = home != images.device
        if visiting:  # model CPU offload: visit the images' device for this call, as the pipeline's modules do
            _move(self.model, images.device)
        try:
            dtype = next(self.model.parameters()).dtype
            return compvis_margins(self.model, preprocess(images, self.size, self.mean, self.std, dtype))
        finally:
            if visiting:
                _move(self.model, home)

    def check(self, images: torch.Tensor) -> list[Verdict]:
        verdicts = []
        for margin in self.margins(images).tolist():
            score = min(1.0, max(0.0, THRESHOLD + margin))
            findings = []
            if margin > 0:
                findings.append(
                    Finding(
                        "sexual", score, THRESHOLD, "image", Action.BLOCK, self.name, f"CompVis margin {margin:+.3f}"
                    )
                )
            verdicts.append(Verdict.for_stage(findings, {"sexual": score}, self.policy, "output"))
        return verdicts
