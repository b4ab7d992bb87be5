"""Disclosure: every generated image says that it was generated (AUP deception-3).

- :mod:`~safeguard.disclosure.watermark`: the invisible watermark and its detector;
- :mod:`~safeguard.disclosure.marking`: marking what a protected call returns;
- :mod:`~safeguard.disclosure.metadata`: the IPTC digital source type in PNG and JPEG metadata;
- :mod:`~safeguard.disclosure.credentials`: signing keys and a local test CA;
- :mod:`~safeguard.disclosure.manifest`: C2PA content credentials, signed and read with c2pa-python;
- :mod:`~safeguard.disclosure.save` and :mod:`~safeguard.disclosure.verify`: ``safeguard.save`` and
  ``safeguard.verify``.

Example:
    >>> import numpy as np
    >>> from safeguard.disclosure import Payload, detect, embed
    >>> image = np.random.default_rng(1).integers(0, 256, (128, 128, 3)).astype(np.uint8)
    >>> detect(embed(image, Payload(5, 0)).round()).payload
    Payload(generator_id=5, content_tag=0)
"""

from safeguard.disclosure.credentials import Credentials, create_test_credentials
from safeguard.disclosure.manifest import ManifestCheck, read_manifest, sign_image_bytes, sign_png_bytes
from safeguard.disclosure.save import SavedImage, save
from safeguard.disclosure.verify import Verification, verify
from safeguard.disclosure.watermark import Detection, Payload, detect, embed

__all__ = [
    "Credentials",
    "Detection",
    "ManifestCheck",
    "Payload",
    "SavedImage",
    "Verification",
    "create_test_credentials",
    "detect",
    "embed",
    "read_manifest",
    "save",
    "sign_image_bytes",
    "sign_png_bytes",
    "verify",
]
