"""Helpers for tests and experiments: tiny real pipelines at random weights (``tiny``).

The trained toy world, which the demo, the host service's default and the evaluations use, is :mod:`safeguard.toy`.

Example:
    >>> from safeguard.testing import tiny
    >>> type(tiny.sd_pipeline()).__name__
    'StableDiffusionPipeline'
"""

from safeguard.testing import tiny

__all__ = ["tiny"]
