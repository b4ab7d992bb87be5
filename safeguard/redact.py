"""Redaction of blocked images in tensor form, on the images' own device.

Every function takes a ``(B, 3, H, W)`` tensor in ``[0, 1]`` and returns a new tensor of the same shape,
dtype and device.

Example:
    >>> import torch
    >>> x = torch.rand(2, 3, 32, 32)
    >>> pixelate(x).shape == x.shape, black(x).abs().sum().item()
    (True, 0.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["black", "blur", "pixelate", "redact"]


def _cells(images: torch.Tensor, cells: int) -> tuple[int, int]:
    height, width = images.shape[-2:]
    return max(1, min(cells, height)), max(1, min(cells, width))


def pixelate(images: torch.Tensor, cells: int = 16) -> torch.Tensor:
    """Average the image over a coarse grid of ``cells`` x ``cells`` blocks."""
    small = F.adaptive_avg_pool2d(images, _cells(images, cells))
    return F.interpolate(small, size=images.shape[-2:], mode="nearest")


def blur(images: torch.Tensor, cells: int = 8) -> torch.Tensor:
    """A heavy blur: average over a very coarse grid, then smooth it back up to full size.

    Strong enough that no detail survives at any resolution, cheap at any size.
    """
    small = F.adaptive_avg_pool2d(images, _cells(images, cells))
    return F.interpolate(small, size=images.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)


def black(images: torch.Tensor) -> torch.Tensor:
    """All zeros: the diffusers safety checker's behaviour, kept for compatibility."""
    return torch.zeros_like(images)


def redact(images: torch.Tensor, method: str, regions: Sequence[tuple[int, int, int, int]] = ()) -> torch.Tensor:
    """Apply a redaction by name: ``blur``, ``pixelate`` or ``black``; ``withhold`` also gives black pixels.

    With ``regions`` (boxes ``(x0, y0, x1, y1)`` in pixels, e.g. from a detector), ``blur`` and ``pixelate``
    cover only those boxes; the rest of the image is left as it is.

    Raises:
        ValueError: for any other name.
    """
    if regions and method in ("blur", "pixelate"):
        out = images.clone()
        height, width = images.shape[-2:]
        for x0, y0, x1, y1 in regions:
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
            if x1 > x0 and y1 > y0:
                box = out[..., y0:y1, x0:x1]
                out[..., y0:y1, x0:x1] = blur(box) if method == "blur" else pixelate(box, cells=8)
        return out
    if method == "blur":
        return blur(images)
    if method == "pixelate":
        return pixelate(images)
    if method in ("black", "withhold"):
        return black(images)
    raise ValueError(f"unknown redaction {method!r}")
