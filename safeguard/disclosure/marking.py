"""Watermarking what a protected call returns: a PIL list, a numpy batch or a tensor batch, as the pipeline gave it.

Every image is marked with :func:`safeguard.disclosure.watermark.embed` after the output check and redaction, and
each gets a record of what was done, which the call puts in the image's verdict (``Verdict.disclosure``):
``{"watermark": <the 64-bit word in hex>, "generator_id": ...}`` when it was marked, or ``{"watermark": None,
"reason": ...}`` when it was not. Withheld images (``None`` in a list, all zeros in an array or tensor) stay as they
are: there is nothing in them to disclose, and callers rely on their being empty. An image under 64 x 64 pixels
cannot carry the 64-bit payload (see :func:`~safeguard.disclosure.watermark.can_mark`); it is returned unmarked and
its record says so, since no generated image of a real model is that small and refusing the call would only push
hosts to turn disclosure off. A mark is kept only when it reads back from the image rounded to 8 bits; where it does
not (flat, fully saturated colours leave the transform no room), the image is returned unmarked and its record says
so: a record never claims a mark that is not there.

Example:
    >>> import numpy as np
    >>> from safeguard.config import DisclosureSettings
    >>> batch = np.random.default_rng(0).random((2, 64, 64, 3)).astype(np.float32)
    >>> batch[1] = 0.0  # a withheld image
    >>> marked, records = mark_images(batch, DisclosureSettings(enabled=True, generator_id=9))
    >>> marked.dtype, detect_image(marked[0]).payload.generator_id, records[1]
    (dtype('float32'), 9, {'watermark': None, 'reason': 'not marked: the image is all black (withheld or blacked out)'})
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from safeguard.config import DisclosureSettings
from safeguard.disclosure.watermark import Detection, Payload, can_mark, content_tag, detect, embed, reads_back
from safeguard.errors import InputError

__all__ = ["Record", "detect_image", "mark_images", "mark_rgb", "rgb_array"]

#: What was done about one returned image's disclosure; see the module docstring.
Record = dict[str, Any]
_WITHHELD: Record = {"watermark": None, "reason": "not marked: the image is all black (withheld or blacked out)"}


def mark_rgb(rgb: np.ndarray, generator_id: int) -> tuple[np.ndarray, Record]:
    """Mark one ``(H, W, 3)`` RGB array in ``[0, 255]`` (the content tag comes from its unmarked pixels); an image
    too small for the payload comes back as it is. Returns the image and its record."""
    height, width = rgb.shape[:2]
    if not can_mark(height, width):
        reason = f"not marked: a {width}x{height} image is too small to carry the watermark (64x64 or larger)"
        return rgb, {"watermark": None, "reason": reason}
    payload = Payload(generator_id, content_tag(rgb))
    marked = embed(rgb, payload)
    if not reads_back(marked, payload):
        return rgb, {"watermark": None, "reason": "not marked: the mark does not read back from this image's colours"}
    return marked, {"watermark": payload.hex(), "generator_id": generator_id}


def rgb_array(image: Any) -> np.ndarray:
    """An image as an ``(H, W, 3)`` float array in ``[0, 255]``: a PIL image (any mode with colour), an ``HWC``
    array (uint8, or float in ``[0, 1]``) or a ``CHW`` tensor in ``[0, 1]``."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    if isinstance(image, torch.Tensor):
        image = image.detach().to("cpu", torch.float64).permute(1, 2, 0).numpy()
        return image * 255.0
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3:
        return image.astype(np.float64) if image.dtype == np.uint8 else image.astype(np.float64) * 255.0
    raise InputError(f"expected a PIL image, an (H, W, 3) array or a (3, H, W) tensor, got {type(image).__name__}")


def detect_image(image: Any) -> Detection:
    """:func:`~safeguard.disclosure.watermark.detect` on any image :func:`rgb_array` accepts."""
    return detect(rgb_array(image))


def mark_images(images: Any, settings: DisclosureSettings) -> tuple[Any, list[Record]]:
    """``images`` as a protected call returns them, each marked (the container type, dtype and device stay),
    and one record per image.

    Raises:
        InputError: an image that is not RGB, or a container of a type the call cannot return.
    """
    generator_id = settings.generator_id
    records: list[Record] = []
    if isinstance(images, list | tuple):
        marked = []
        for image in images:
            image, record = (None, dict(_WITHHELD)) if image is None else _mark_pil(image, generator_id)
            marked.append(image)
            records.append(record)
        return (marked if isinstance(images, list) else tuple(marked)), records
    if isinstance(images, np.ndarray):
        out = images.copy()
        for i, image in enumerate(images):
            if not np.any(image):
                records.append(dict(_WITHHELD))
                continue
            rgb, record = mark_rgb(rgb_array(image), generator_id)
            if record["watermark"]:
                out[i] = _like(rgb, images.dtype)
            records.append(record)
        return out, records
    if isinstance(images, torch.Tensor):
        out = images.clone()
        for i, image in enumerate(images):
            if not torch.any(image):
                records.append(dict(_WITHHELD))
                continue
            rgb, record = mark_rgb(rgb_array(image), generator_id)
            if record["watermark"]:
                out[i] = torch.from_numpy(rgb / 255.0).permute(2, 0, 1).to(images.device, images.dtype)
            records.append(record)
        return out, records
    raise InputError(f"cannot watermark returned images of type {type(images).__name__}")


def _like(rgb: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A marked ``[0, 255]`` image in the array's own convention: 8-bit values for uint8, ``[0, 1]`` for floats."""
    if dtype == np.uint8:
        return np.round(rgb).clip(0, 255).astype(np.uint8)
    return (rgb / 255.0).astype(dtype)


def _mark_pil(image: Any, generator_id: int) -> tuple[Image.Image, Record]:
    if not isinstance(image, Image.Image):
        raise InputError(f"cannot watermark a returned {type(image).__name__} in a list; expected PIL images")
    if image.mode != "RGB":
        raise InputError(f"cannot watermark a returned PIL image of mode {image.mode!r}; expected RGB")
    rgb = rgb_array(image)
    if not np.any(rgb):
        return image, dict(_WITHHELD)
    marked, record = mark_rgb(rgb, generator_id)
    if not record["watermark"]:
        return image, record
    return Image.fromarray(np.round(marked).astype(np.uint8)), record
