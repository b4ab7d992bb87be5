"""Steering: the stage, its presets, per-family adapters, concept scores, concept projection and safety guidance.

The stage is :class:`safeguard.steering.stage.ConceptSteeringStage`, built by
:func:`safeguard.steering.stage.build_steering_stage`; concept encodings and scores, shared with the encoder
prompt stage, are made in :mod:`safeguard.steering.concepts`.
"""

from safeguard.steering.adapters import FamilyAdapter, adapter_for
from safeguard.steering.guidance import sld_term
from safeguard.steering.presets import SteeringPreset, available_steering_presets, load_steering_preset
from safeguard.steering.projection import ConceptScorer, neutral_phrase, orthonormal_basis, project

__all__ = [
    "ConceptScorer",
    "FamilyAdapter",
    "SteeringPreset",
    "adapter_for",
    "available_steering_presets",
    "load_steering_preset",
    "neutral_phrase",
    "orthonormal_basis",
    "project",
    "sld_term",
]
