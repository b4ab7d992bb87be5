"""C2PA content credentials: sign a manifest into PNG or JPEG bytes with c2pa-python, and read one back.

The manifest has two assertions:

- ``c2pa.actions``: one ``c2pa.created`` action with the IPTC digital source type ``trainedAlgorithmicMedia`` and
  ``diffusers-safeguard`` as the software agent;
- ``org.safeguard.disclosure`` (:data:`ASSERTION_LABEL`): the policy id and version, a summary of the verdict
  (action, flagged categories, stages, and each finding's category, score, threshold, stage and source), and the
  watermark payload read from the pixels, so that an image whose metadata was stripped can be matched to its
  credentials through its watermark.

Reading classifies the manifest as ``absent``, ``trusted`` (valid, and the signer chains to a given trust
anchor), ``valid`` (intact, signer not trusted), ``tampered`` (a hash no longer matches: the pixels or the
manifest changed after signing) or ``invalid`` (any other failure).

Example:
    >>> import io, tempfile
    >>> from PIL import Image
    >>> from safeguard.disclosure.credentials import Credentials, create_test_credentials
    >>> from safeguard.disclosure.metadata import encode_image
    >>> from safeguard.verdict import Verdict
    >>> folder = create_test_credentials(tempfile.mkdtemp())
    >>> png = encode_image(Image.new("RGB", (64, 64), (90, 120, 200)), "png")
    >>> signed = sign_png_bytes(png, Verdict.allow("p", "1"), Credentials.load(folder))
    >>> read_manifest(signed, "image/png", (folder / "ca.pem").read_bytes()).state
    'trusted'
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from safeguard.disclosure.credentials import Credentials
from safeguard.disclosure.metadata import TRAINED_ALGORITHMIC_MEDIA
from safeguard.disclosure.watermark import Detection
from safeguard.errors import ConfigError, InputError
from safeguard.verdict import Verdict

__all__ = ["ASSERTION_LABEL", "C2PA_MISSING", "MANIFEST_STATES", "ManifestCheck", "c2pa_available",
           "disclosure_assertion", "load_c2pa", "read_manifest", "sign_image_bytes", "sign_png_bytes"]  # fmt: skip

ASSERTION_LABEL = "org.safeguard.disclosure"
#: ``unchecked``: c2pa-python (the ``disclosure`` extra) is not installed, so a manifest could not be read.
MANIFEST_STATES = ("absent", "trusted", "valid", "tampered", "invalid", "unchecked")
#: The failure recorded with an ``unchecked`` state.
C2PA_MISSING = "c2pa-python is not installed: pip install 'diffusers-safeguard[disclosure]'"
_GENERATOR = "diffusers-safeguard"
_MIME_TYPES = ("image/png", "image/jpeg")


@dataclass(frozen=True)
class ManifestCheck:
    """What reading a file's C2PA manifest found.

    Attributes:
        state: one of :data:`MANIFEST_STATES`.
        failures: the C2PA validation failure codes (e.g. ``assertion.dataHash.mismatch``).
        signer: the signing certificate's common name and issuer, when there is a manifest.
        assertion: the ``org.safeguard.disclosure`` assertion's data, when the manifest has one.
        digital_source_type: the source type of the manifest's ``c2pa.created`` action.
    """

    state: str
    failures: tuple[str, ...] = ()
    signer: str | None = None
    assertion: Mapping[str, Any] | None = field(default=None)
    digital_source_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "failures": list(self.failures),
            "signer": self.signer,
            "assertion": None if self.assertion is None else dict(self.assertion),
            "digital_source_type": self.digital_source_type,
        }


def c2pa_available() -> bool:
    """Whether c2pa-python can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("c2pa") is not None


def load_c2pa() -> Any:
    """The c2pa module; ConfigError naming the extra to install when c2pa-python is missing."""
    try:
        import c2pa
    except ImportError as err:
        raise ConfigError(
            "content credentials need c2pa-python: pip install 'diffusers-safeguard[disclosure]'"
        ) from err
    return c2pa


def disclosure_assertion(verdict: Verdict, detection: Detection) -> dict[str, Any]:
    """The data of the ``org.safeguard.disclosure`` assertion for an image with this verdict and watermark.

    Example:
        >>> from safeguard.disclosure.watermark import Detection
        >>> disclosure_assertion(Verdict.allow("p", "1"), Detection(False, None, 0.0, None, None))["policy"]
        {'id': 'p', 'version': '1'}
    """
    from safeguard import __version__

    return {
        "generator": {"name": _GENERATOR, "version": __version__},
        "policy": {"id": verdict.policy_id, "version": verdict.policy_version},
        "verdict": {
            "action": verdict.action.value,
            "flagged": verdict.flagged,
            "flagged_categories": sorted(c for c, hit in verdict.categories.items() if hit),
            "stages": list(verdict.stages),
            "findings": [
                {
                    "category": f.category,
                    "score": _number(f.score),
                    "threshold": _number(f.threshold),
                    "stage": f.stage,
                    "source": f.source,
                    "action": f.action.value,
                }
                for f in verdict.findings
            ],
        },
        "watermark": detection.to_dict(),
    }


def _number(value: float) -> float | str:
    # JSON has no infinity: a threshold of inf (block: null, never blocks) is written as the string "inf".
    return value if math.isfinite(value) else str(value)


def _manifest(assertion: Mapping[str, Any]) -> dict[str, Any]:
    from safeguard import __version__

    agent = {"name": _GENERATOR, "version": __version__}
    created = {"action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA, "softwareAgent": agent}
    return {
        "claim_generator_info": [agent],
        "title": "image generated under a safeguard policy",
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [created]}},
            {"label": ASSERTION_LABEL, "data": dict(assertion)},
        ],
    }


def sign_image_bytes(data: bytes, mime: str, verdict: Verdict, credentials: Credentials) -> bytes:
    """``data`` (a PNG or JPEG file's bytes) with a signed C2PA manifest embedded; the watermark is read from it.

    Raises:
        InputError: ``mime`` is not image/png or image/jpeg, ``data`` is not an image of that type, or its
            watermark is not the one ``verdict`` records (the verdict of another image).
        ConfigError: c2pa-python is missing or rejects the credentials.
    """
    from PIL import Image

    from safeguard.disclosure.marking import detect_image

    if mime not in _MIME_TYPES:
        raise InputError(f"content credentials are written into {' or '.join(_MIME_TYPES)}, not {mime!r}")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except OSError as err:
        raise InputError(f"not a readable {mime} image: {err}") from err
    detection = detect_image(image)
    recorded = (verdict.disclosure or {}).get("watermark")
    if recorded and detection.payload is not None and detection.payload.hex() != recorded:
        # The credentials would tie this image to another image's decision.
        raise InputError(
            f"the image carries watermark {detection.payload.hex()} but the verdict records {recorded}: "
            "pass the verdict of this image"
        )
    assertion = disclosure_assertion(verdict, detection)
    c2pa = load_c2pa()
    settings = {"builder": {"thumbnail": {"enabled": False}}, "verify": {"remote_manifest_fetch": False}}
    try:
        signer = c2pa.Signer.from_info(
            c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, credentials.chain_pem, credentials.key_pem, None)
        )
        with signer, c2pa.Builder(_manifest(assertion), context=c2pa.Context.from_dict(settings)) as builder:
            out = io.BytesIO()
            builder.sign(signer, mime, io.BytesIO(data), out)
    except c2pa.C2paError as err:
        raise ConfigError(f"C2PA signing failed (check the credentials): {err}") from err
    return out.getvalue()


def sign_png_bytes(png: bytes, verdict: Verdict, credentials: Credentials) -> bytes:
    """PNG bytes with signed content credentials for ``verdict``: :func:`sign_image_bytes` for ``image/png``.

    Example: see the module docstring.
    """
    return sign_image_bytes(png, "image/png", verdict, credentials)


def read_manifest(data: bytes, mime: str, trust_anchors: bytes | None = None) -> ManifestCheck:
    """Read and validate the C2PA manifest in ``data``; ``trust_anchors`` are PEM root certificates to trust."""
    c2pa = load_c2pa()
    settings: dict[str, Any] = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
    if trust_anchors is not None:
        settings["trust"] = {"user_anchors": trust_anchors.decode("utf-8")}
    try:
        reader = c2pa.Reader.try_create(mime, io.BytesIO(data), context=c2pa.Context.from_dict(settings))
    except c2pa.C2paError as err:
        return ManifestCheck("invalid", (f"unreadable: {err}",))
    if reader is None:
        return ManifestCheck("absent")
    with reader:
        state = reader.get_validation_state()
        results = reader.get_validation_results() or {}
        active = reader.get_active_manifest() or {}
    codes = [str(item.get("code")) for item in (results.get("activeManifest") or {}).get("failure", [])]
    failures = tuple(dict.fromkeys(codes))
    info = active.get("signature_info") or {}
    signer = f"{info.get('common_name')} (issuer {info.get('issuer')})" if info else None
    assertion, source_type = None, None
    for entry in active.get("assertions", []):
        if entry.get("label") == ASSERTION_LABEL:
            assertion = entry.get("data")
        elif str(entry.get("label", "")).startswith("c2pa.actions"):
            for action in entry.get("data", {}).get("actions", []):
                if action.get("action") == "c2pa.created":
                    source_type = action.get("digitalSourceType")
    if state == "Trusted":
        verdict = "trusted"
    elif state == "Valid":
        verdict = "valid"
    elif any("mismatch" in code for code in failures):
        verdict = "tampered"
    else:
        verdict = "invalid"
    return ManifestCheck(verdict, failures, signer, assertion, source_type)
