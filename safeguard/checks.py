"""Checking prompts and images directly, without a pipeline: the entry points for hosts and researchers.

They take the same ``policy=``, ``preset=``, ``config=`` and keyword overrides as :func:`safeguard.protect`
and go through the same :class:`~safeguard.guard.Guard`.

Example:
    >>> import safeguard
    >>> safeguard.check_prompt("a watercolor painting of a lighthouse at dawn").flagged
    False
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safeguard.guard import Guard
from safeguard.images import to_unit_tensors
from safeguard.policy import DEFAULT_POLICY, Policy
from safeguard.verdict import Verdict

__all__ = ["check_images", "check_prompt", "check_prompts"]


@functools.lru_cache(maxsize=16)
def _cached_guard(policy: str | Path, preset: str | Path | None, config: str | Path | None, overrides: tuple) -> Guard:
    return Guard.create(policy, preset, config, **dict(overrides))


def _guard(policy: Any, preset: Any, config: Any, overrides: dict[str, Any]) -> Guard:
    # Guards for bundled or file policies are reused: building stages costs more than checking a prompt.
    if isinstance(policy, str | Path) and not isinstance(config, dict):
        return _cached_guard(policy, preset, config, tuple(sorted(overrides.items())))
    return Guard.create(policy, preset, config, **overrides)


def check_prompt(
    text: str,
    policy: Policy | str | Path = DEFAULT_POLICY,
    preset: str | Path | None = None,
    *,
    config: str | Path | dict[str, Any] | None = None,
    **overrides: Any,
) -> Verdict:
    """Check one prompt; returns its :class:`Verdict`.

    Raises:
        InputError: ``text`` is not a string, is empty or too long.
        ConfigError: bad policy, preset, config or override.

    Example:
        >>> import safeguard
        >>> safeguard.check_prompt("a nude portrait").blocked
        True
    """
    return check_prompts([text], policy, preset, config=config, **overrides)[0]


def check_prompts(
    texts: Sequence[str],
    policy: Policy | str | Path = DEFAULT_POLICY,
    preset: str | Path | None = None,
    *,
    config: str | Path | dict[str, Any] | None = None,
    **overrides: Any,
) -> list[Verdict]:
    """Check a batch of prompts; one :class:`Verdict` per prompt, in order. An empty batch gives ``[]``.

    Raises:
        InputError: ``texts`` is not a list of strings, or a prompt is empty or too long.
        ConfigError: bad policy, preset, config or override (also for an empty batch).

    Example:
        >>> import safeguard
        >>> [v.action.value for v in safeguard.check_prompts(["a red bicycle", "a pipe bomb"])]
        ['allow', 'block']
    """
    return _guard(policy, preset, config, overrides).check_prompts(texts)


def check_images(
    images: Any,
    policy: Policy | str | Path = DEFAULT_POLICY,
    preset: str | Path | None = None,
    *,
    config: str | Path | dict[str, Any] | None = None,
    **overrides: Any,
) -> list[Verdict]:
    """Check images: a PIL image, numpy array or tensor, or a list of them; one :class:`Verdict` each.

    Images of the same size are checked together as one batch. An empty list (or an ``NHWC`` array or ``NCHW``
    tensor with no images) gives ``[]``, as :func:`check_prompts` does for no prompts.

    Raises:
        InputError: unsupported type, shape or value range.
        ConfigError: bad policy, preset, config or override (also for no images).

    Example:
        >>> import numpy as np, safeguard
        >>> safeguard.check_images(np.full((64, 64, 3), 200, dtype=np.uint8))[0].blocked
        False
    """
    guard = _guard(policy, preset, config, overrides)  # first: a bad setting is an error even with no images
    if _no_images(images):
        return []
    tensors = to_unit_tensors(images)
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, tensor in enumerate(tensors):
        by_size[tuple(tensor.shape[-2:])].append(i)
    verdicts: dict[int, Verdict] = {}
    for indices in by_size.values():
        batch = torch.stack([tensors[i] for i in indices])
        verdicts.update(zip(indices, guard.check_images(batch), strict=True))
    return [verdicts[i] for i in range(len(tensors))]


def _no_images(images: Any) -> bool:
    if isinstance(images, list | tuple):
        return not images
    return isinstance(images, np.ndarray | torch.Tensor) and images.ndim == 4 and images.shape[0] == 0
