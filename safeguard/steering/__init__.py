"""Steering building blocks: presets, per-family adapters, concept projection and safety guidance.

The stage that uses them is :class:`safeguard.stages.steering.ConceptSteeringStage`.
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
