"""Helpers for tests and experiments: tiny real pipelines (``tiny``) and the trained toy world (``toy_world``).

Example:
    >>> from safeguard.testing import tiny
    >>> type(tiny.sd_pipeline()).__name__
    'StableDiffusionPipeline'
"""

from safeguard.testing import tiny
from safeguard.testing.toy import ToyWorld, toy_world

__all__ = ["ToyWorld", "tiny", "toy_world"]
