"""Prompt scores from the protected pipeline's own text encoder, where the policy has a calibration for it.

A category's score is the concept score of :mod:`safeguard.steering.projection`: in ``[0, 1]``, computed with
the pipeline's own text encoder(s) from the category's concept phrases and their neutral phrases. No extra
model is loaded, and a call that passes ``prompt_embeds`` instead of text is scored on those embeddings.

What such a score means depends on the encoder, so it drives decisions only when the policy lists a
calibration recorded for this very encoder (``encoder_calibrations`` in the policy file): thresholds per
category, chosen on labelled prompts by :func:`calibrate_encoder` (``scripts/calibrate_encoder.py``).
A calibration names its encoder by behaviour, not by name: it stores a *probe*, the summary embeddings of a
few fixed texts under a fixed random projection, and an encoder matches when its own probe agrees with cosine
similarity of at least :data:`PROBE_MATCH` for every text. That holds across float16 and devices and fails for
any other encoder, a tiny random test encoder included; an encoder without a matching calibration gets no
stage at all.

Example:
    >>> from safeguard.policy import load_policy
    >>> from safeguard.testing import tiny
    >>> EncoderPromptStage.for_pipeline(tiny.sd_pipeline(), load_policy()) is None
    True
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from safeguard._files import check_keys, read_yaml
from safeguard.errors import ConfigError
from safeguard.normalize import normalize
from safeguard.pipelines import registered_family
from safeguard.policy import Policy
from safeguard.steering.adapters import Encoded, FamilyAdapter, adapter_for
from safeguard.steering.concepts import concept_scores
from safeguard.steering.projection import concept_pairs
from safeguard.verdict import Action, Finding, Verdict

__all__ = ["PROBE_MATCH", "EncoderCalibration", "EncoderPromptStage", "calibrate_encoder", "encoder_probe"]

#: The fixed texts whose embeddings identify an encoder.
PROBE_TEXTS = (
    "a photo of a cat sitting on a windowsill",
    "an oil painting of a harbour city at night",
    "a red circle on a white background",
    "diagram",
)
PROBE_DIM = 16
#: The cosine similarity every probe text must reach for an encoder to match a calibration.
PROBE_MATCH = 0.999
# Prompts are encoded this many at a time, so a 10,000-prompt batch never builds one huge tensor.
_CHUNK = 64


def encoder_probe(pipeline: Any) -> np.ndarray:
    """The probe of a pipeline's text encoder(s): ``(len(PROBE_TEXTS), PROBE_DIM)`` unit rows.

    Example:
        >>> from safeguard.testing import tiny
        >>> encoder_probe(tiny.sd_pipeline()).shape
        (4, 16)
    """
    summaries = adapter_for(type(pipeline)).encode(pipeline, list(PROBE_TEXTS)).summary().cpu().double().numpy()
    # A fixed projection keeps the stored probe short whatever the encoder's width.
    projection = np.random.default_rng(0).standard_normal((summaries.shape[1], PROBE_DIM))
    probe = summaries @ projection
    return probe / np.linalg.norm(probe, axis=1, keepdims=True).clip(min=1e-12)


@dataclass(frozen=True)
class EncoderCalibration:
    """Thresholds for one policy's concept scores under one text encoder, with how they were chosen."""

    policy_id: str
    policy_version: str
    family: str
    probe: np.ndarray
    #: Per category: ``(steer, block)``; ``steer`` is None where there is no steering band.
    thresholds: Mapping[str, tuple[float | None, float]]
    provenance: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def matches(self, family: str, probe: np.ndarray) -> bool:
        """Whether an encoder of ``family`` with this ``probe`` is the calibrated one."""
        if family != self.family or probe.shape != self.probe.shape:
            return False
        return bool(((probe * self.probe).sum(axis=1) >= PROBE_MATCH).all())

    @classmethod
    def load(cls, path: str | Path, policy: Policy) -> EncoderCalibration:
        """Read a calibration file written by :meth:`save` and check it belongs to ``policy``.

        Raises:
            ConfigError: unreadable file, unknown keys, another policy, unknown categories, bad numbers.
        """
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"policy {policy.id!r} lists an encoder calibration at {path}, not found")
        data = read_yaml(path)
        check_keys(
            data,
            ("policy", "family", "probe", "thresholds", "provenance"),
            where,
            ("policy", "family", "probe", "thresholds"),
        )
        policy_id, _, version = str(data["policy"]).partition("@")
        if (policy_id, version) != (policy.id, policy.version):
            raise ConfigError(f"{where}: calibrated for policy {data['policy']}, not {policy.id}@{policy.version}")
        try:
            probe = np.asarray(data["probe"], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: probe must be a list of number lists: {err}") from err
        if probe.shape != (len(PROBE_TEXTS), PROBE_DIM):
            raise ConfigError(f"{where}: probe must be {len(PROBE_TEXTS)} rows of {PROBE_DIM} numbers")
        thresholds: dict[str, tuple[float | None, float]] = {}
        for category, spec in (data["thresholds"] or {}).items():
            if category not in policy:
                raise ConfigError(f"{where}: thresholds name {category!r}, not a category of policy {policy.id!r}")
            check_keys(spec, ("steer", "block"), f"{where}: thresholds.{category}", ("block",))
            steer, block = spec.get("steer"), spec["block"]
            if not _unit(block) or (steer is not None and not (_unit(steer) and steer <= block)):
                raise ConfigError(f"{where}: thresholds.{category} needs 0 <= steer <= block <= 1, got {spec}")
            thresholds[category] = (None if steer is None else float(steer), float(block))
        return cls(
            policy.id, policy.version, str(data["family"]), probe, thresholds, data.get("provenance") or {}, path
        )

    def save(self, path: str | Path) -> Path:
        """Write the calibration as YAML (the format :meth:`load` reads)."""
        path = Path(path)
        data = {
            "policy": f"{self.policy_id}@{self.policy_version}",
            "family": self.family,
            "thresholds": {
                c: ({"steer": round(s, 4)} if s is not None else {}) | {"block": round(b, 4)}
                for c, (s, b) in self.thresholds.items()
            },
            "provenance": dict(self.provenance),
            "probe": [[round(float(v), 6) for v in row] for row in self.probe],
        }
        header = (
            "# Written by scripts/calibrate_encoder.py (safeguard.stages.encoder.calibrate_encoder); do not edit.\n"
        )
        path.write_text(
            header + yaml.safe_dump(data, sort_keys=False, width=120, default_flow_style=None), encoding="utf-8"
        )
        return path


def _unit(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0


class _Scores:
    """Concept scores of a policy's categories with one pipeline's encoder (:mod:`safeguard.steering.concepts`)."""

    def __init__(self, pipeline: Any, policy: Policy, categories: Sequence[str]) -> None:
        self.pipeline = pipeline
        self.adapter: FamilyAdapter = adapter_for(type(pipeline))
        self.policy = policy
        self.categories = tuple(categories)

    def summaries(self, texts: Sequence[str]) -> torch.Tensor:
        chunks = [
            self.adapter.encode(self.pipeline, list(texts[i : i + _CHUNK])).summary().cpu()
            for i in range(0, len(texts), _CHUNK)
        ]
        return torch.cat(chunks)

    def scores(self, summaries: torch.Tensor) -> dict[str, np.ndarray]:
        scores = concept_scores(self.pipeline, [self.policy[c] for c in self.categories], summaries)
        return {c: s.numpy() for c, s in scores.items()}


class EncoderPromptStage:
    """Scores prompts, or ``prompt_embeds``, with the pipeline's own text encoder under a matching calibration.

    Create it with :meth:`for_pipeline`. A score at or above a category's ``block`` threshold blocks, one at or
    above ``steer`` steers.
    """

    name = "encoder"

    def __init__(self, pipeline: Any, policy: Policy, calibration: EncoderCalibration) -> None:
        self.policy = policy
        self.calibration = calibration
        self._scores = _Scores(pipeline, policy, tuple(calibration.thresholds))

    @classmethod
    def for_pipeline(cls, pipeline: Any, policy: Policy) -> EncoderPromptStage | None:
        """The stage for ``pipeline`` when one of the policy's encoder calibrations matches its encoder."""
        if not policy.encoder_calibrations:
            return None
        calibrations = [EncoderCalibration.load(p, policy) for p in policy.encoder_calibrations]
        record = registered_family(type(pipeline))
        if record is None or not record.steerable:  # no registered text encoding: nothing to score with
            return None
        family = record.family
        calibrations = [c for c in calibrations if c.family == family]
        if not calibrations:
            return None
        probe = encoder_probe(pipeline)
        match = next((c for c in calibrations if c.matches(family, probe)), None)
        return None if match is None else cls(pipeline, policy, match)

    def check(self, prompts: Sequence[str]) -> list[Verdict]:
        """One verdict per prompt, scored on its normalised text (obfuscation undone, as for the other stages)."""
        texts = [normalize(p).text or p for p in prompts]
        return self._verdicts(self._scores.summaries(texts))

    def check_embeds(
        self, prompt_embeds: torch.Tensor, pooled_prompt_embeds: torch.Tensor | None = None
    ) -> list[Verdict]:
        """One verdict per row of ``prompt_embeds`` (and ``pooled_prompt_embeds`` where the family has one)."""
        return self._verdicts(Encoded(prompt_embeds, pooled_prompt_embeds).summary().detach().cpu())

    def _verdicts(self, summaries: torch.Tensor) -> list[Verdict]:
        scores = self._scores.scores(summaries)
        source = self.calibration.path.name if self.calibration.path else "in memory"
        verdicts = []
        for i in range(summaries.shape[0]):
            per_category = {c: float(s[i]) for c, s in scores.items()}
            findings = []
            for category, score in per_category.items():
                steer, block = self.calibration.thresholds[category]
                if score >= block:
                    action, threshold = Action.BLOCK, block
                elif steer is not None and score >= steer:
                    action, threshold = Action.STEER, steer
                else:
                    continue
                detail = f"{self._scores.adapter.family} text encoder concept score (calibration {source})"
                findings.append(Finding(category, score, threshold, "prompt", action, self.name, detail))
            verdicts.append(Verdict.for_stage(findings, per_category, self.policy, "prompt"))
        return verdicts


def calibrate_encoder(
    pipeline: Any,
    policy: Policy,
    prompts: Sequence[str],
    labels: Sequence[Sequence[str]],
    *,
    block_false_positives: float = 0.005,
    steer_false_positives: float = 0.02,
    provenance: Mapping[str, Any] | None = None,
) -> EncoderCalibration:
    """Choose per-category thresholds for ``pipeline``'s encoder on labelled prompts.

    ``labels[i]`` lists the categories prompt ``i`` belongs to (empty for a benign prompt). For each category with
    concept phrases and labelled prompts, ``block`` is the lowest threshold that flags at most
    ``block_false_positives`` of the benign prompts and ``steer`` the lowest that flags at most
    ``steer_false_positives`` of them. A category whose benign scores saturate (no threshold up to 1 keeps
    them under ``block_false_positives``) is left out: the encoder cannot tell it apart. The detection and
    false-positive rates reached, or why a category was left out, are recorded in the provenance, with the
    date.

    Example:
        >>> from safeguard.policy import load_policy
        >>> from safeguard.toy import toy_world
        >>> w = toy_world()
        >>> cal = calibrate_encoder(w.pipeline, w.policy, ["a red circle", "a blue square"], [["red"], []])
        >>> 0.0 <= cal.thresholds["red"][1] <= 1.0
        True
    """
    if len(prompts) != len(labels):
        raise ValueError(f"{len(prompts)} prompts but {len(labels)} label lists")
    benign = np.array([not label for label in labels])
    if not benign.any():
        raise ValueError("calibration needs benign prompts (an empty label list)")
    wanted = [c.id for c in policy.categories if c.enforced and any(c.id in label for label in labels)]
    wanted = [c for c in wanted if concept_pairs(policy[c])[0]]
    scores_for = _Scores(pipeline, policy, wanted)
    texts = [normalize(p).text or p for p in prompts]
    scores = scores_for.scores(scores_for.summaries(texts))
    thresholds: dict[str, tuple[float | None, float]] = {}
    figures: dict[str, Any] = {}
    for category in wanted:
        values = scores[category]
        positive = np.array([category in label for label in labels])
        block = _threshold(values[benign], block_false_positives)
        if block is None:
            # Scores saturate at 1 for too many benign prompts: this encoder cannot tell the category apart.
            figures[category] = {"left_out": f"more than {block_false_positives:.2%} of benign prompts score 1"}
            continue
        steer = min(block, _threshold(values[benign], steer_false_positives) or block)
        thresholds[category] = (steer, block)
        figures[category] = {
            "unsafe_prompts": int(positive.sum()),
            "benign_prompts": int(benign.sum()),
            "blocked": round(float((values[positive] >= block).mean()), 4),
            "flagged": round(float((values[positive] >= steer).mean()), 4),
            "benign_blocked": round(float((values[benign] >= block).mean()), 4),
            "benign_flagged": round(float((values[benign] >= steer).mean()), 4),
        }
    record = {"date": datetime.date.today().isoformat(), **dict(provenance or {}), "figures": figures}
    family = scores_for.adapter.family
    return EncoderCalibration(policy.id, policy.version, family, encoder_probe(pipeline), thresholds, record)


def _threshold(benign_scores: np.ndarray, share: float) -> float | None:
    """The lowest threshold (on a 1e-4 grid) that at most ``share`` of ``benign_scores`` reach; None if above 1."""
    allowed = int(np.floor(share * len(benign_scores)))
    ordered = np.sort(benign_scores)[::-1]
    # Just above the (allowed + 1)-th highest benign score: that one and all below it stay unflagged.
    above = ordered[allowed] if allowed < len(ordered) else 0.0
    threshold = float(np.ceil((above + 1e-6) * 1e4) / 1e4)
    return threshold if threshold <= 1.0 else None
