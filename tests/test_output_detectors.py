"""The bundled detectors (open_nsfw, NudeNet) on real photographs and graphics, label mapping and regions."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch

import safeguard
from safeguard.config import resolve_settings
from safeguard.guard import Guard
from safeguard.policy import load_policy
from safeguard.redact import pixelate
from safeguard.stages import nudenet
from safeguard.stages.nudenet import Detection, NudeNetStage, skin_fraction
from safeguard.verdict import Action, Finding, Verdict

POLICY = load_policy()

# Every image that ships inside the scikit-image wheel (no download): photographs and graphics.
SKIMAGE_BUNDLED = [
    "astronaut", "coffee", "chelsea", "rocket", "horse", "camera", "moon", "coins", "clock", "grass", "gravel",
    "brick", "hubble_deep_field", "colorwheel", "logo", "page", "text", "retina", "cell", "immunohistochemistry",
    "microaneurysms", "shepp_logan_phantom", "checkerboard",
]  # fmt: skip


def _load(name: str) -> np.ndarray:
    image = getattr(skimage.data, name)()
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.dtype != np.uint8:
        image = (np.clip(image / image.max(), 0, 1) * 255).astype(np.uint8)
    return image


def test_bundled_detectors_run_by_default():
    assert [s.name for s in Guard.create().image_stages] == ["opennsfw", "nudenet"]


def test_balanced_blocks_none_of_the_scikit_image_pictures():
    images = [_load(n) for n in SKIMAGE_BUNDLED]
    verdicts = safeguard.check_images(images, preset="balanced")
    blocked = {n: str(v) for n, v in zip(SKIMAGE_BUNDLED, verdicts, strict=True) if v.blocked}
    assert blocked == {}
    assert all(v.stages == ("output",) for v in verdicts)


def test_nudenet_sees_body_parts_on_graphics_but_they_do_not_count():
    """NudeNet reports BUTTOCKS_EXPOSED on the colour wheel with high confidence: not a policy label."""
    wheel = torch.from_numpy(_load("colorwheel")).permute(2, 0, 1).float()[None] / 255
    found = nudenet.detect(wheel)[0]
    assert any(d.label == "BUTTOCKS_EXPOSED" and d.score > 0.5 for d in found)
    verdict = NudeNetStage(POLICY, resolve_settings().output).check(wheel)[0]
    assert not verdict.blocked and verdict.category_scores["sexual"] == 0.0


def _skin_and_blue() -> torch.Tensor:
    skin = torch.tensor([0.85, 0.64, 0.52]).view(3, 1, 1)
    blue = torch.tensor([0.1, 0.2, 0.9]).view(3, 1, 1)
    return torch.stack([skin.expand(3, 64, 64), blue.expand(3, 64, 64)]).clone()


def _fake_detect(label: str, score: float):
    return lambda images: [[Detection(label, score, (8, 8, 40, 40))] for _ in range(images.shape[0])]


def test_exposed_labels_on_skin_block_with_their_box(monkeypatch):
    monkeypatch.setattr(nudenet, "detect", _fake_detect("FEMALE_BREAST_EXPOSED", 0.7))
    on_skin, on_blue = NudeNetStage(POLICY, resolve_settings().output).check(_skin_and_blue())
    assert on_skin.blocked
    finding = on_skin.findings[0]
    assert (finding.category, finding.source, finding.score, finding.threshold) == ("sexual", "nudenet", 0.7, 0.5)
    assert finding.regions == ((8, 8, 40, 40),)
    assert not on_blue.blocked, "a detection on a surface without skin tones is an artefact"


@pytest.mark.parametrize(
    ("label", "score", "blocked"),
    [
        ("MALE_GENITALIA_EXPOSED", 0.6, True),
        ("ANUS_EXPOSED", 0.6, True),
        ("FEMALE_GENITALIA_EXPOSED", 0.45, False),  # below the score floor
        ("MALE_BREAST_EXPOSED", 0.95, False),
        ("BUTTOCKS_EXPOSED", 0.95, False),
        ("FEMALE_BREAST_COVERED", 0.95, False),
        ("BELLY_EXPOSED", 0.95, False),
    ],
)
def test_label_mapping(monkeypatch, label, score, blocked):
    monkeypatch.setattr(nudenet, "detect", _fake_detect(label, score))
    verdict = NudeNetStage(POLICY, resolve_settings().output).check(_skin_and_blue()[:1])[0]
    assert verdict.blocked is blocked


def test_skin_fraction():
    images = _skin_and_blue()
    assert skin_fraction(images[0], (0, 0, 64, 64)) == 1.0
    assert skin_fraction(images[1], (0, 0, 64, 64)) == 0.0
    assert skin_fraction(images[0], (10, 10, 10, 20)) == 0.0  # empty box


def test_pixelate_redaction_covers_only_the_detector_boxes():
    guard = Guard.create(preset="research", redaction="pixelate")
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    finding = Finding("sexual", 0.9, 0.5, "image", Action.BLOCK, "nudenet", regions=((8, 8, 40, 40),))
    verdict = Verdict.from_findings([finding], {"sexual": 0.9}, policy_id=POLICY.id, policy_version=POLICY.version)
    redacted, withheld = guard.apply_redaction(images, [verdict])
    assert withheld == []
    outside = torch.ones(64, 64, dtype=torch.bool)
    outside[8:40, 8:40] = False
    assert torch.equal(redacted[0][:, outside], images[0][:, outside])
    assert torch.allclose(redacted[0][:, 8:40, 8:40], pixelate(images[:, :, 8:40, 8:40], cells=8)[0])


def test_pixelate_covers_the_whole_image_when_a_finding_has_no_box():
    guard = Guard.create(preset="research", redaction="pixelate")
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    boxed = Finding("sexual", 0.9, 0.5, "image", Action.BLOCK, "nudenet", regions=((8, 8, 40, 40),))
    whole = Finding("violence", 0.9, 0.8, "image", Action.BLOCK, "clip")
    verdict = Verdict.from_findings([boxed, whole], {}, policy_id=POLICY.id, policy_version=POLICY.version)
    redacted, _ = guard.apply_redaction(images, [verdict])
    assert torch.equal(redacted, pixelate(images))


@pytest.mark.parametrize(
    ("per_category", "expected"),
    [({"violence": "withhold"}, "withhold"), ({"violence": "flag"}, "flag"), ({}, "blur")],
)
def test_per_category_redaction(per_category, expected):
    from safeguard.stages.combine import redaction_plan

    settings = resolve_settings(config={"output": {"category_redaction": per_category}}).output
    finding = Finding("violence", 0.9, 0.8, "image", Action.BLOCK, "clip")
    verdict = Verdict.from_findings([finding], {}, policy_id=POLICY.id, policy_version=POLICY.version)
    assert redaction_plan(verdict, settings) == (expected, ())
