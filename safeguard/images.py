"""Turning the image types users hold (PIL, numpy, torch) into ``[0, 1]`` float batches for the image stages."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageCms

from safeguard.errors import InputError

__all__ = ["to_unit_tensors"]

#: Smallest side an image may have; below this no checker can see anything.
MIN_SIDE = 8

# PIL modes PIL converts to RGB itself, with the modes to pass through first where it has no direct path. Alpha
# is dropped, never composited: the colour channels are scored as they are, because compositing would erase
# whatever a caller put under transparent pixels, and a viewer may still show it. P goes through RGBA so that a
# palette's transparency needs no special case (the colours stay); La (premultiplied) through LA. LAB is not
# here: see _lab_to_srgb.
_PIL_VIA = {
    "1": (),
    "L": (),
    "LA": (),
    "La": ("LA",),
    "P": ("RGBA",),
    "PA": (),
    "RGB": (),
    "RGBA": (),
    "RGBa": (),
    "RGBX": (),
    "CMYK": (),
    "YCbCr": (),
    "HSV": (),
}
_PIL_UINT16 = ("I;16", "I;16B", "I;16L", "I;16N")
# I and F carry no range of their own. White is the smallest of these full scales that holds every value: 255
# for what PIL's own conversions write (L to I or F), 65535 for 16-bit data (I;16 to I), 2**31 - 1 for full
# 32-bit integers, 1.0 for float arrays.
_PIL_FULL_SCALES = {"I": (255, 65535, 2**31 - 1), "F": (1.0, 255, 65535)}


def to_unit_tensors(images: Any) -> list[torch.Tensor]:
    """Convert images to a list of ``(3, H, W)`` float tensors in ``[0, 1]``.

    Accepts a PIL image, a numpy array or a tensor, or a list of them. Numpy arrays are ``HWC`` (or a
    ``NHWC`` batch), uint8 in ``[0, 255]`` or float in ``[0, 1]``; tensors are ``CHW`` (or ``NCHW``),
    float in ``[0, 1]`` or uint8. Grayscale is repeated into three channels and a fourth channel is dropped.

    PIL images of every mode are converted to RGB first: CMYK, YCbCr and HSV by PIL, LAB through an ICC
    transform (D50 Lab to sRGB), palette modes through their palette. Alpha is dropped without compositing, so
    the colour under a transparent pixel is scored like any other. The 16-bit modes (``I;16`` and its byte
    orders) scale 65535 to 1; ``I`` scales by 255, 65535 or 2**31 - 1, and ``F`` by 1, 255 or 65535, whichever
    is the smallest that holds every value.

    Raises:
        InputError: an unsupported type, PIL mode, shape, channel count, value range, or an empty list.

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
        image = _from_pil(image, where)
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


def _from_pil(image: Image.Image, where: str) -> np.ndarray:
    """An ``HxWx3`` uint8 RGB array, or for the integer and float modes an ``HxW`` float32 array in ``[0, 1]``."""
    mode = image.mode
    if mode in _PIL_VIA:
        for step in (*_PIL_VIA[mode], "RGB"):
            image = image.convert(step)
        return np.asarray(image)
    if mode == "LAB":
        return np.asarray(ImageCms.applyTransform(image, _lab_to_srgb()))
    if mode in _PIL_UINT16:
        return np.asarray(image, dtype=np.float32) / 65535
    if mode in _PIL_FULL_SCALES:
        values = np.asarray(image, dtype=np.float64)
        if not values.size:
            return values.astype(np.float32)  # on to the size check, which names the problem
        low, high = float(values.min()), float(values.max())
        scales = [scale for scale in _PIL_FULL_SCALES[mode] if high <= scale]
        if not np.isfinite(low) or low < 0 or not scales:
            top = _PIL_FULL_SCALES[mode][-1]
            raise InputError(f"{where}: mode {mode} pixels must lie in [0, {top}], got [{low:.6g}, {high:.6g}]")
        return (values / scales[0]).astype(np.float32)
    supported = ", ".join([*_PIL_VIA, "LAB", *_PIL_UINT16, *_PIL_FULL_SCALES])
    raise InputError(f"{where}: PIL mode {mode!r} cannot be converted to RGB; supported modes: {supported}")


# lcms2 flags (lcms2.h). Pillow's own LAB conversion lets lcms replace the Lab formulas by an 8-bit lookup table,
# which is off by up to 40 levels next to a dark channel of a bright colour; NOOPTIMIZE keeps the formulas (within
# one level). NOCACHE makes the shared transform safe to use from several threads.
_LCMS_NOOPTIMIZE = 0x0100
_LCMS_NOCACHE = 0x0040


@functools.cache
def _lab_to_srgb() -> ImageCms.ImageCmsTransform:
    """The ICC transform from PIL's LAB (8-bit CIE L*a*b*, D50 as in ICC) to sRGB; built-in profiles, no files."""
    lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
    return ImageCms.buildTransform(lab, srgb, "LAB", "RGB", flags=_LCMS_NOOPTIMIZE | _LCMS_NOCACHE)
