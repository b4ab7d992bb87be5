"""The interfaces every stage implements, so new stages plug in without touching the wrapper.

- A prompt stage turns a batch of prompts into one :class:`~safeguard.verdict.Verdict` per prompt.
- An image stage turns a batch of images, a ``(B, 3, H, W)`` float tensor in ``[0, 1]`` on the pipeline's
  device, into one Verdict per image.
- A steering stage is applied to a pipeline for one call and removed after it, also when the call raises; it
  reports what it did to each prompt's images as verdicts.

Stages may raise or return invalid scores: :class:`safeguard.guard.Guard` turns that into a block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import torch

from safeguard.verdict import Verdict

__all__ = ["ImageStage", "PromptStage", "SteeringOutcome", "SteeringStage"]


@runtime_checkable
class PromptStage(Protocol):
    """Scores prompts. ``name`` appears in findings and failure verdicts."""

    name: str

    def check(self, prompts: Sequence[str]) -> list[Verdict]: ...


@runtime_checkable
class ImageStage(Protocol):
    """Scores a batch of images given as a ``(B, 3, H, W)`` tensor in ``[0, 1]``."""

    name: str

    def check(self, images: torch.Tensor) -> list[Verdict]: ...

    def to(self, device: torch.device | str) -> ImageStage: ...


@runtime_checkable
class SteeringOutcome(Protocol):
    """What a steering stage did in one call, read after the call returned."""

    def verdicts(self) -> list[Verdict]:
        """One verdict per prompt, joined to each of its images: ``steer`` findings for what changed its
        generation, a ``stage_failure`` block for a prompt meant to be steered that nothing steered."""
        ...


@runtime_checkable
class SteeringStage(Protocol):
    """Changes how a pipeline generates, for one call only.

    ``apply`` returns a context manager; entering it installs hooks or edits the call's keyword arguments
    in place and yields a :class:`SteeringOutcome` (None when it steers nothing), leaving it removes every
    hook, even when the pipeline call raised. ``arguments`` holds every argument of the call by name
    (positional ones and defaults included), read-only.
    """

    name: str

    def apply(
        self,
        pipeline: Any,
        call_kwargs: dict[str, Any],
        prompt_verdicts: Sequence[Verdict],
        arguments: Mapping[str, Any] | None = None,
    ) -> AbstractContextManager[SteeringOutcome | None]: ...
