"""The semantic prompt stage: per-category scores from MiniLM sentence embeddings and calibrated heads.

Each category the calibration covered has a logistic head over the embedding of the normalised prompt; its
output in ``[0, 1]`` is compared with the preset's ``prompt.thresholds`` (``steer`` and ``block``). Prompts are
first scored with the static MiniLM encoder (tens of microseconds); only those whose static score reaches the
calibrated ``settle`` score for some category are scored again with the full tier (a two-layer student
distilled from MiniLM, run by ONNX Runtime, ~2 ms a prompt on two cores), whose score then decides.

The heads live in ``configs/semantic/<policy id>.npz``, written with their provenance by
``scripts/calibrate_prompts.py``. A policy without such a file gets no semantic stage.

Example:
    >>> from safeguard.policy import load_policy
    >>> from safeguard.config import resolve_settings
    >>> stage = SemanticPromptStage.for_policy(load_policy(), resolve_settings().prompt)
    >>> stage.check(["a watercolor painting of a lighthouse at dawn"])[0].flagged
    False
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from safeguard._files import bundled_file
from safeguard.config import PromptSettings
from safeguard.errors import ConfigError
from safeguard.normalize import normalize
from safeguard.policy import Policy
from safeguard.semantic import OnnxMiniLMEncoder, StaticMiniLMEncoder
from safeguard.stages.keywords import PhraseMatcher, stem
from safeguard.verdict import Action, Finding, Verdict

__all__ = ["SemanticHeads", "SemanticPromptStage"]


class SemanticHeads:
    """Calibrated per-category logistic heads for the static and the full encoder."""

    def __init__(self, path: Path) -> None:
        data = np.load(path)
        self.path = path
        # Heads fit to one encoder's embeddings score another's wrongly, without any error to show for it.
        encoder = str(data["full_encoder"]) if "full_encoder" in data else "(not recorded)"
        expected = OnnxMiniLMEncoder.load_student().name
        if encoder != expected:
            raise ConfigError(
                f"{path}: heads calibrated for encoder {encoder!r}, not {expected!r}; run scripts/calibrate_prompts.py"
            )
        self.categories = tuple(str(c) for c in data["categories"])
        self.static_weights, self.static_bias = data["static_weights"], data["static_bias"]
        self.full_weights, self.full_bias = data["full_weights"], data["full_bias"]
        self.settle = data["settle"]
        self.idf = data["idf"]
        self.center = data["center"]
        self.provenance = json.loads(str(data["provenance"]))

    @staticmethod
    def score(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-np.clip(x @ weights.T + bias, -30, 30)))


@functools.lru_cache(maxsize=4)
def _heads(path: Path) -> SemanticHeads:
    return SemanticHeads(path)


@functools.lru_cache(maxsize=4)
def _static_encoder(path: Path) -> StaticMiniLMEncoder:
    heads = _heads(path)
    table = StaticMiniLMEncoder.load().table
    return StaticMiniLMEncoder(table - heads.center, heads.idf)


class SemanticPromptStage:
    """Scores prompts by semantic similarity to each category's calibrated examples."""

    name = "semantic"

    def __init__(self, policy: Policy, settings: PromptSettings, heads_path: Path) -> None:
        self.policy = policy
        self.settings = settings
        self.heads = _heads(heads_path)
        self._heads_path = heads_path
        unknown = [c for c in self.heads.categories if c not in policy]
        if unknown:
            raise ConfigError(f"{heads_path}: heads for categories {unknown} that policy {policy.id!r} lacks")
        # Allow-phrases name benign readings of words a category watches ("al gore"); they are taken out of the
        # text before embedding, so the name does not pull the prompt towards the category either.
        self._allowed = PhraseMatcher(("allow", phrase) for c in policy for phrase in c.allow_phrases)
        #: Prompts the student (second tier) has scored since construction: their share sets the throughput.
        self.full_scored = 0

    @classmethod
    def for_policy(cls, policy: Policy, settings: PromptSettings) -> SemanticPromptStage | None:
        """The stage for ``policy`` if a calibration for it is bundled, else None."""
        path = bundled_file("semantic", f"{policy.id}.npz")
        return cls(policy, settings, path) if path is not None else None

    def check(self, prompts: Sequence[str]) -> list[Verdict]:
        texts = [self._without_allow_phrases(p) for p in prompts]
        heads = self.heads
        scores = heads.score(_static_encoder(self._heads_path).encode(texts), heads.static_weights, heads.static_bias)
        unsettled = np.flatnonzero((scores >= heads.settle).any(axis=1))
        if len(unsettled):
            full = OnnxMiniLMEncoder.load_student().encode([texts[i] for i in unsettled])
            scores[unsettled] = heads.score(full, heads.full_weights, heads.full_bias)
            self.full_scored += len(unsettled)
        full_scored = set(unsettled.tolist())
        return [self._verdict(row, i in full_scored) for i, row in enumerate(scores)]

    def _without_allow_phrases(self, prompt: str) -> str:
        normalized = normalize(prompt)
        words = normalized.tokens
        matches = self._allowed.find([stem(w) for w in words])
        if not matches:
            return normalized.text
        drop = {i for m in matches for i in range(m.start, m.end)}
        return " ".join(w for i, w in enumerate(words) if i not in drop)

    def _verdict(self, row: np.ndarray, full: bool) -> Verdict:
        findings = []
        source = "minilm-student" if full else "minilm-static"
        for category, score in zip(self.heads.categories, row.tolist(), strict=True):
            steer, block = self.settings.thresholds.for_category(category)
            if score >= block:
                findings.append(Finding(category, score, block, "prompt", Action.BLOCK, source))
            elif steer is not None and score >= steer:
                findings.append(Finding(category, score, steer, "prompt", Action.STEER, source))
        return Verdict.for_stage(
            findings, dict(zip(self.heads.categories, row.tolist(), strict=True)), self.policy, "prompt"
        )
