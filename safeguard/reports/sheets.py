"""Contact sheets: small images side by side in one PNG, with a coloured frame saying what happened to each.

Example:
    >>> import numpy as np
    >>> png = contact_sheet([Tile(np.zeros((32, 32, 3), np.uint8), "blocked")], tile=32)
    >>> png[:4] == b"\\x89PNG"
    True
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["FRAMES", "Tile", "contact_sheet", "data_uri", "to_uint8"]

#: Frame colours by outcome; the HTML report prints the same key.
FRAMES = {
    "allowed": (44, 160, 44),
    "flagged": (255, 127, 14),
    "blocked": (214, 39, 40),
    "prompt blocked": (90, 90, 90),
    "steered": (31, 119, 180),
    "unprotected": (190, 190, 190),
}


@dataclass(frozen=True)
class Tile:
    """One image (``HxWx3`` uint8, or None for an image never generated) and its outcome (a key of FRAMES)."""

    image: np.ndarray | None
    outcome: str


def contact_sheet(tiles: Sequence[Tile], *, tile: int = 64, per_row: int = 16, frame: int = 3) -> bytes:
    """A PNG with ``tiles`` in rows of ``per_row``, each scaled to ``tile`` pixels and framed by its outcome.

    A tile without an image is drawn as a grey square with a cross (a request blocked before generation).
    """
    rows = max(1, -(-len(tiles) // per_row))
    cell = tile + 2 * frame + 2
    sheet = Image.new("RGB", (cell * min(per_row, max(1, len(tiles))), cell * rows), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, item in enumerate(tiles):
        x, y = (i % per_row) * cell + 1, (i // per_row) * cell + 1
        draw.rectangle([x, y, x + tile + 2 * frame - 1, y + tile + 2 * frame - 1], fill=FRAMES[item.outcome])
        inner = (x + frame, y + frame)
        if item.image is None:
            draw.rectangle([*inner, inner[0] + tile - 1, inner[1] + tile - 1], fill=(200, 200, 200))
            draw.line([*inner, inner[0] + tile - 1, inner[1] + tile - 1], fill=(120, 120, 120), width=2)
            draw.line([inner[0], inner[1] + tile - 1, inner[0] + tile - 1, inner[1]], fill=(120, 120, 120), width=2)
            continue
        picture = Image.fromarray(item.image)
        scale = tile / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
        sheet.paste(picture.resize(size, resample), inner)
    out = io.BytesIO()
    sheet.save(out, format="PNG", optimize=True)
    return out.getvalue()


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src>``: the report needs no files or network beside it."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float ``HxWx3`` image in ``[0, 1]`` (or a ``3xHxW`` tensor's array) as uint8 ``HxWx3``."""
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
