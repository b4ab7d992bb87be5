"""``safeguard.verify``: what disclosure an image carries: its watermark, its C2PA manifest and its IPTC metadata.

Example:
    >>> import numpy as np
    >>> import safeguard
    >>> report = safeguard.verify(np.zeros((64, 64, 3), dtype=np.uint8))
    >>> report.watermark.found, report.manifest.state
    (False, 'absent')
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from safeguard.disclosure.manifest import C2PA_MISSING, ManifestCheck, c2pa_available, read_manifest
from safeguard.disclosure.marking import detect_image
from safeguard.disclosure.metadata import read_digital_source_type
from safeguard.disclosure.watermark import Detection
from safeguard.errors import InputError

__all__ = ["Verification", "verify"]

_MIME = {"PNG": "image/png", "JPEG": "image/jpeg"}


@dataclass(frozen=True)
class Verification:
    """The disclosure found on one image.

    Attributes:
        source: the file's path, or ``"<image>"`` for an image object.
        watermark: what the watermark detector read.
        manifest: the C2PA manifest's state (``absent`` for an image object, or a format without one).
        digital_source_type: the IPTC digital source type in the file's XMP, or None.
        watermark_matches_manifest: whether the watermark read now is the one the manifest recorded; None when
            there is no mark or no safeguard assertion to compare.
    """

    source: str
    watermark: Detection
    manifest: ManifestCheck
    digital_source_type: str | None
    watermark_matches_manifest: bool | None

    @property
    def disclosed(self) -> bool:
        """The image says it was generated: a watermark, or a trusted or valid manifest, and nothing tampered."""
        if self.manifest.state in ("tampered", "invalid"):
            return False
        return self.watermark.found or self.manifest.state in ("trusted", "valid")

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "disclosed": self.disclosed,
            "watermark": self.watermark.to_dict(),
            "manifest": self.manifest.to_dict(),
            "digital_source_type": self.digital_source_type,
            "watermark_matches_manifest": self.watermark_matches_manifest,
        }


def verify(source: Any, *, trust_anchors: bytes | str | Path | None = None) -> Verification:
    """Read the watermark, C2PA manifest and IPTC metadata of a file (a path) or an image object.

    ``trust_anchors`` are PEM root certificates (bytes, or a path to a PEM file) that a ``trusted`` manifest's
    signer must chain to; without them a manifest is at best ``valid``.

    Raises:
        InputError: the file cannot be read as an image, or the image is too small for the watermark's blocks.

    Example: see the module docstring.
    """
    anchors = Path(trust_anchors).read_bytes() if isinstance(trust_anchors, str | Path) else trust_anchors
    if not isinstance(source, str | Path):
        return Verification("<image>", detect_image(source), ManifestCheck("absent"), None, None)
    path = Path(source)
    try:
        data = path.read_bytes()
        image = Image.open(io.BytesIO(data))
        image.load()
    except OSError as err:
        raise InputError(f"{path}: not a readable image: {err}") from err
    detection = detect_image(image)
    mime = _MIME.get(str(image.format))
    if mime is None:
        manifest = ManifestCheck("absent")
    elif not c2pa_available():
        # The watermark and the metadata can still be read; the manifest's state is said to be unknown.
        manifest = ManifestCheck("unchecked", (C2PA_MISSING,))
    else:
        manifest = read_manifest(data, mime, anchors)
    recorded = (manifest.assertion or {}).get("watermark") or {}
    matches = None
    if detection.found and recorded:
        matches = (recorded.get("payload") or {}).get("word") == detection.to_dict()["payload"]["word"]
    return Verification(str(path), detection, manifest, read_digital_source_type(image), matches)
