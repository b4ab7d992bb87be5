"""Turning the image types users hold (PIL, numpy, torch) into ``[0, 1]`` float batches for the image stages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from safeguard.errors import InputError

__all__ = ["to_unit_tensors"]

#: Smallest side an image may have; below this no checker can see anything.
MIN_SIDE = 8


def to_unit_tensors(images: Any) -> list[torch.Tensor]:
    """Convert images to a list of ``(3, H, W)`` float tensors in ``[0, 1]``.

    Accepts a PIL image, a numpy array or a tensor, or a list of them. Numpy arrays are ``HWC`` (or a
    ``NHWC`` batch), uint8 in ``[0, 255]`` or float in ``[0, 1]``; tensors are ``CHW`` (or ``NCHW``),
    float in ``[0, 1]`` or uint8. Grayscale and RGBA are converted to RGB.

    Raises:
        InputError: an unsupported type, shape, channel count, value range, or an empty list.

    Example:
        >>> import numpy as np
        >>> [t.shape for t in to_unit_tensors(np.zeros((2, 16, 16, 3), dtype=np.uint8))]
        [torch.Size([3, 16, 16]), torch.Size([3, 16, 16])]
    """
    if isinstance(images, np.ndarray) and images.ndim == 4:
        items: Sequence[Any] = list(images)
    elif isinstance(images, torch.Tensor) and images.ndim == 4:
        items = list(images)
    elif isinstance(images, list | tuple):
        items = images
    else:
        items = [images]
    if not items:
        raise InputError("no images given")
    return [_one(item, i) for i, item in enumerate(items)]


def _one(image: Any, index: int) -> torch.Tensor:
    where = f"image {index}"
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGBA") if image.mode in ("P", "LA") else image)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3:
            raise InputError(f"{where}: expected an HxWxC array, got shape {image.shape}")
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # a copy: the input may be read-only
    elif isinstance(image, torch.Tensor):
        tensor = image.detach()
        if tensor.ndim == 2:
            tensor = tensor[None]
        if tensor.ndim != 3:
            raise InputError(f"{where}: expected a CxHxW tensor, got shape {tuple(tensor.shape)}")
    else:
        raise InputError(f"{where}: unsupported type {type(image).__name__}; give PIL images, numpy arrays or tensors")

    channels, height, width = tensor.shape
    if channels not in (1, 3, 4):
        raise InputError(f"{where}: expected 1, 3 or 4 channels, got {channels} (shape {tuple(tensor.shape)})")
    if min(height, width) < MIN_SIDE:
        raise InputError(f"{where}: {height}x{width} is too small; each side needs at least {MIN_SIDE} pixels")
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255
    elif tensor.is_floating_point():
        tensor = tensor.float()
        low, high = float(tensor.min()), float(tensor.max())
        if not (np.isfinite(low) and np.isfinite(high)) or low < -1e-3 or high > 1 + 1e-3:
            raise InputError(f"{where}: float pixels must lie in [0, 1], got [{low:.3g}, {high:.3g}]")
        tensor = tensor.clamp(0, 1)
    else:
        raise InputError(f"{where}: unsupported pixel dtype {tensor.dtype}; use uint8 or float")
    if channels == 1:
        tensor = tensor.expand(3, height, width)
    elif channels == 4:
        tensor = tensor[:3]
    return tensor
