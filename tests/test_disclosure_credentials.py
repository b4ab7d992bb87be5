"""Content credentials: safeguard.save, safeguard.verify, sign_png_bytes and the verify / credentials commands."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image

import safeguard
from safeguard.cli import EXIT_ALLOWED, EXIT_BLOCKED, EXIT_ERROR, main
from safeguard.disclosure import Credentials, create_test_credentials, read_manifest, sign_png_bytes
from safeguard.disclosure.manifest import ASSERTION_LABEL
from safeguard.disclosure.metadata import TRAINED_ALGORITHMIC_MEDIA
from safeguard.errors import ConfigError, InputError

pytest.importorskip("c2pa")


@pytest.fixture(scope="module")
def generated():
    """One protected tiny SD call at 256 px (balanced: the watermark is on)."""
    from safeguard.testing import tiny

    guarded = safeguard.protect(tiny.sd_pipeline())
    out = guarded(
        "a lighthouse at dawn", num_inference_steps=2, height=256, width=256, generator=torch.Generator().manual_seed(0)
    )
    return out.images[0], out.verdicts[0]


@pytest.fixture(scope="module")
def credentials(tmp_path_factory):
    return create_test_credentials(tmp_path_factory.mktemp("credentials"))


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        chunks.append((data[at + 4 : at + 8], data[at : at + 12 + length]))
        at += 12 + length
    return chunks


def _edit_pixels_keep_manifest(signed: bytes) -> bytes:
    """The signed PNG with a patch of pixels inverted, re-encoded, and its C2PA chunk put back."""
    manifest = b"".join(chunk for kind, chunk in _png_chunks(signed) if kind == b"caBX")
    assert manifest, "the signed PNG has no caBX chunk"
    pixels = np.array(Image.open(io.BytesIO(signed)).convert("RGB"))
    pixels[40:80, 40:80] = 255 - pixels[40:80, 40:80]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    edited = buffer.getvalue()
    end = edited.rindex(b"IEND") - 4
    return edited[:end] + manifest + edited[end:]


def test_saved_png_is_trusted_with_the_test_ca_and_carries_the_verdict(generated, credentials, tmp_path):
    image, verdict = generated
    saved = safeguard.save(image, tmp_path / "out.png", verdict=verdict, credentials=credentials)
    assert saved.signed and saved.path.is_file()
    report = safeguard.verify(saved.path, trust_anchors=credentials / "ca.pem")
    assert report.manifest.state == "trusted" and report.disclosed
    assert report.watermark.found and report.watermark_matches_manifest is True
    assert report.digital_source_type == TRAINED_ALGORITHMIC_MEDIA == report.manifest.digital_source_type
    assertion = report.manifest.assertion
    assert assertion["policy"] == {"id": verdict.policy_id, "version": verdict.policy_version}
    assert assertion["verdict"]["action"] == "allow" and assertion["verdict"]["stages"] == list(verdict.stages)
    assert assertion["watermark"]["found"] and assertion["watermark"]["payload"]["marker"] == "5347"
    # Without the anchor the signature is intact but the signer is not trusted.
    untrusted = safeguard.verify(saved.path)
    assert untrusted.manifest.state == "valid" and "signingCredential.untrusted" in untrusted.manifest.failures


def test_edited_pixels_read_as_tampered(generated, credentials, tmp_path):
    image, verdict = generated
    signed = safeguard.save(image, tmp_path / "out.png", verdict=verdict, credentials=credentials).path.read_bytes()
    edited = tmp_path / "edited.png"
    edited.write_bytes(_edit_pixels_keep_manifest(signed))
    report = safeguard.verify(edited, trust_anchors=credentials / "ca.pem")
    assert report.manifest.state == "tampered" and "assertion.dataHash.mismatch" in report.manifest.failures
    assert not report.disclosed


def test_a_stripped_jpeg_re_encode_still_carries_the_watermark(generated, credentials, tmp_path):
    image, verdict = generated
    saved = safeguard.save(image, tmp_path / "out.png", verdict=verdict, credentials=credentials)
    stripped = tmp_path / "shared.jpg"
    # A new image from the pixels alone: no XMP, no manifest.
    Image.fromarray(np.asarray(Image.open(saved.path).convert("RGB"))).save(stripped, "JPEG", quality=90)
    report = safeguard.verify(stripped, trust_anchors=credentials / "ca.pem")
    assert report.manifest.state == "absent" and report.digital_source_type is None
    original = safeguard.verify(saved.path).watermark
    assert report.watermark.found and report.watermark.payload == original.payload
    assert report.disclosed


def test_signed_jpeg(generated, credentials, tmp_path):
    image, verdict = generated
    saved = safeguard.save(image, tmp_path / "out.jpg", verdict=verdict, credentials=credentials)
    report = safeguard.verify(saved.path, trust_anchors=(credentials / "ca.pem").read_bytes())
    assert report.manifest.state == "trusted" and report.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert report.watermark.found


def test_unsigned_save_writes_only_the_metadata(generated, tmp_path):
    image, verdict = generated
    saved = safeguard.save(np.asarray(image), tmp_path / "plain.png", verdict=verdict)
    assert not saved.signed
    report = safeguard.verify(saved.path)
    assert report.manifest.state == "absent" and report.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert report.watermark.found


def test_sign_png_bytes_for_the_host_service(generated, credentials):
    image, verdict = generated
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    signed = sign_png_bytes(buffer.getvalue(), verdict, Credentials.load(credentials))
    check = read_manifest(signed, "image/png", (credentials / "ca.pem").read_bytes())
    assert check.state == "trusted" and check.assertion["watermark"]["found"]
    assert ASSERTION_LABEL == "org.safeguard.disclosure"


def test_bad_input_is_named(generated, credentials, tmp_path):
    image, verdict = generated
    with pytest.raises(InputError, match="withheld"):
        safeguard.save(None, tmp_path / "x.png", verdict=verdict)
    with pytest.raises(InputError, match=r"not 'x\.gif'"):
        safeguard.save(image, tmp_path / "x.gif", verdict=verdict)
    with pytest.raises(InputError, match="verdict must be"):
        safeguard.save(image, tmp_path / "x.png", verdict={"action": "allow"})
    with pytest.raises(ConfigError, match=r"signer-chain\.pem is missing"):
        safeguard.save(image, tmp_path / "x.png", verdict=verdict, credentials=tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="already holds"):
        create_test_credentials(credentials)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="not a readable image"):
        safeguard.verify(tmp_path / "junk.png")


def test_cli_init_and_verify(generated, tmp_path, capsys):
    image, verdict = generated
    folder = tmp_path / "creds"
    assert main(["credentials", "init", str(folder)]) == EXIT_ALLOWED
    assert main(["credentials", "init", str(folder)]) == EXIT_ERROR
    assert main(["credentials", "init", "--force", str(folder)]) == EXIT_ALLOWED
    signed = safeguard.save(image, tmp_path / "signed.png", verdict=verdict, credentials=folder).path
    edited = tmp_path / "edited.png"
    edited.write_bytes(_edit_pixels_keep_manifest(signed.read_bytes()))
    capsys.readouterr()
    assert main(["verify", "--trust-anchor", str(folder / "ca.pem"), str(signed)]) == EXIT_ALLOWED
    text = capsys.readouterr().out
    assert "c2pa        trusted" in text and "watermark   found" in text
    assert main(["verify", "--json", "--trust-anchor", str(folder / "ca.pem"), str(signed), str(edited)]) == (
        EXIT_BLOCKED
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["manifest"]["state"] for r in rows] == ["trusted", "tampered"]
    assert [r["disclosed"] for r in rows] == [True, False]
    assert main(["verify", str(tmp_path / "missing.png")]) == EXIT_ERROR


def test_the_host_service_signs_what_it_returns(credentials, tmp_path):
    import base64

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from safeguard.server.app import create_app
    from safeguard.server.keys import KeyStore
    from safeguard.server.settings import server_settings_from_mapping

    _, token = KeyStore(tmp_path / "keys.json").add("host", "balanced", rate_per_minute=1000)
    base = {"keys": str(tmp_path / "keys.json"), "audit": {"path": str(tmp_path / "audit.jsonl")}}
    body = {"prompt": "a blue square", "steps": 2, "width": 64, "height": 64}
    replies = {}
    for name, extra in (("signed", {"credentials": str(credentials)}), ("plain", {})):
        with TestClient(create_app(server_settings_from_mapping({**base, **extra}))) as client:
            response = client.post("/v1/images/generations", json=body, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200, response.text
            replies[name] = response.json()["data"][0]
    for name, item in replies.items():
        png = tmp_path / f"{name}.png"
        png.write_bytes(base64.b64decode(item["b64_json"]))
        report = safeguard.verify(png, trust_anchors=credentials / "ca.pem")
        assert report.watermark.found and report.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
        assert item["verdict"]["disclosure"]["watermark"] == report.watermark.payload.hex()
        if name == "signed":
            assert report.manifest.state == "trusted" and report.watermark_matches_manifest is True
            assert report.manifest.assertion["policy"]["id"] == "toy-colours"
        else:
            assert report.manifest.state == "absent"
    # Credentials that cannot be read stop the service at start-up, not at the first image.
    with pytest.raises(ConfigError, match=r"signer-chain\.pem is missing"):
        create_app(server_settings_from_mapping({**base, "credentials": str(tmp_path)}))


def test_without_the_disclosure_extra_verify_still_reads_the_watermark(generated, tmp_path, monkeypatch, capsys):
    import importlib

    # The package exports the function verify under the submodule's name; the module itself is in sys.modules.
    verify_module = importlib.import_module("safeguard.disclosure.verify")
    image, verdict = generated
    saved = safeguard.save(image, tmp_path / "plain.png", verdict=verdict)
    monkeypatch.setattr(verify_module, "c2pa_available", lambda: False)
    report = safeguard.verify(saved.path)
    assert report.manifest.state == "unchecked" and "diffusers-safeguard[disclosure]" in report.manifest.failures[0]
    assert report.watermark.found and report.disclosed
    assert main(["verify", str(saved.path)]) == EXIT_ALLOWED
    assert "unchecked" in capsys.readouterr().out
    # Making test credentials without cryptography is a clear error naming the extra, not a traceback.
    monkeypatch.setitem(__import__("sys").modules, "cryptography", None)
    assert main(["credentials", "init", str(tmp_path / "creds")]) == EXIT_ERROR
    assert "pip install 'diffusers-safeguard[disclosure]'" in capsys.readouterr().err


def test_signing_refuses_the_verdict_of_another_image(credentials, tmp_path):
    from safeguard.testing import tiny

    guarded = safeguard.protect(tiny.sd_pipeline())
    out = guarded(
        ["a lighthouse at dawn", "a red bicycle"],
        num_inference_steps=2,
        height=256,
        width=256,
        generator=torch.Generator().manual_seed(0),
    )
    with pytest.raises(InputError, match="pass the verdict of this image"):
        safeguard.save(out.images[0], tmp_path / "x.png", verdict=out.verdicts[1], credentials=credentials)
    assert safeguard.save(out.images[0], tmp_path / "x.png", verdict=out.verdicts[0], credentials=credentials).signed
