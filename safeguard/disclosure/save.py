"""``safeguard.save``: write a generated image as PNG or JPEG with its disclosure metadata and content credentials.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> import safeguard
    >>> from safeguard.testing import tiny
    >>> out = safeguard.protect(tiny.sd_pipeline())("a lighthouse at dawn", num_inference_steps=2)
    >>> folder = Path(tempfile.mkdtemp())
    >>> credentials = safeguard.disclosure.create_test_credentials(folder / "creds")
    >>> saved = safeguard.save(out.images[0], folder / "out.png", verdict=out.verdicts[0], credentials=credentials)
    >>> saved.signed, safeguard.verify(saved.path, trust_anchors=credentials / "ca.pem").manifest.state
    (True, 'trusted')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from safeguard.disclosure.credentials import Credentials
from safeguard.disclosure.manifest import sign_image_bytes
from safeguard.disclosure.marking import rgb_array
from safeguard.disclosure.metadata import FORMATS, encode_image
from safeguard.errors import InputError
from safeguard.verdict import Verdict

__all__ = ["SavedImage", "save"]

_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}


@dataclass(frozen=True)
class SavedImage:
    """Where :func:`save` wrote the image, and whether it signed content credentials into it."""

    path: Path
    signed: bool


def save(
    image: Any,
    path: str | Path,
    *,
    verdict: Verdict,
    credentials: Credentials | str | Path | None = None,
    quality: int = 95,
) -> SavedImage:
    """Write ``image`` to ``path`` (``.png``, ``.jpg`` or ``.jpeg``) with the IPTC digital source type in its XMP
    and, given ``credentials`` (a :class:`Credentials` or a credentials folder), a signed C2PA manifest that
    carries ``verdict``'s summary and the watermark read from the pixels. Without credentials nothing is signed.

    ``image`` is a PIL image, an ``HWC`` array (uint8 or float in ``[0, 1]``) or a ``CHW`` tensor in ``[0, 1]``,
    for example one of a protected call's ``images`` with its ``verdicts`` entry.

    Raises:
        InputError: an unknown suffix, a withheld (``None``) image or one that is not RGB.
        ConfigError: unreadable credentials, or c2pa-python missing or refusing them.

    Example: see the module docstring.
    """
    path = Path(path)
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"save writes {', '.join(_SUFFIXES)} files, not {path.name!r}")
    if image is None:
        raise InputError("this image was withheld by the output check; there is nothing to save")
    if not isinstance(verdict, Verdict):
        raise InputError(f"verdict must be the image's Verdict, got {type(verdict).__name__}")
    pil = Image.fromarray(np.round(rgb_array(image)).clip(0, 255).astype(np.uint8))
    data = encode_image(pil, fmt, quality)
    if credentials is not None:
        if not isinstance(credentials, Credentials):
            credentials = Credentials.load(credentials)
        data = sign_image_bytes(data, FORMATS[fmt], verdict, credentials)
    path.write_bytes(data)
    return SavedImage(path, credentials is not None)
