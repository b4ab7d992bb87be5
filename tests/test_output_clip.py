"""The zero-shot CLIP checker on a tiny real CLIPModel whose concept and image embeddings are planted.

Planting: the concept phrases of each image category get one direction of an orthonormal basis (in the
checker's text-embedding cache), the neutral phrases others; the vision projection is solved so that chosen
test images land exactly on chosen directions. Scoring, thresholds, the minor signal and the image
conjunction then run through the real classes and the real tensor path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from transformers import CLIPConfig, CLIPModel

import safeguard
from safeguard.config import resolve_settings
from safeguard.errors import ConfigError
from safeguard.guard import Guard
from safeguard.policy import load_policy
from safeguard.stages.clip import (
    _TEXT_CACHE,
    MINOR_SIGNAL,
    ClipImageStage,
    OpenClipImageStage,
    TransformersClipEncoder,
    preprocess,
)
from safeguard.testing.tiny import clip_tokenizer
from safeguard.verdict import Action

POLICY = load_policy()


def tiny_clip(seed: int = 0) -> CLIPModel:
    """A real transformers CLIPModel at tiny size (32-d everywhere, 32x32 images)."""
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    return CLIPModel(config).eval()


def tiny_encoder(seed: int = 0) -> TransformersClipEncoder:
    return TransformersClipEncoder(tiny_clip(seed), clip_tokenizer(), 32)


def noise_images(count: int, seed: int, size: tuple[int, int] = (48, 64)) -> torch.Tensor:
    return torch.rand(count, 3, *size, generator=torch.Generator().manual_seed(seed))


def plant(stage: ClipImageStage, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Plant concept directions and make ``images`` embed exactly onto ``targets``; return the basis.

    Basis rows: one per name in ``stage.concepts.names`` (categories, then the minor signal), then one per
    neutral phrase.
    """
    encoder = stage.encoder
    names, neutral = stage.concepts.names, stage.concepts.neutral
    dim = encoder.model.config.projection_dim
    assert len(names) + len(neutral) <= dim
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(1)))[0].T
    concept_rows = basis[torch.tensor(stage.concepts.owner)]
    neutral_rows = basis[len(names) : len(names) + len(neutral)]
    _TEXT_CACHE.setdefault(encoder.module, {})[stage.text_cache_key()] = torch.cat([concept_rows, neutral_rows])
    # Solve the vision projection W so that W h_i = t_i for the pooled outputs h_i of the test images.
    with torch.no_grad():
        pixels = preprocess(images, encoder.image_size, encoder.mean, encoder.std)
        pooled = encoder.model.vision_model(pixel_values=pixels).pooler_output  # (m, hidden)
        weight = targets.T @ torch.linalg.pinv(pooled.T)
        encoder.model.visual_projection.weight.copy_(weight)
        assert torch.allclose(encoder.encode_images(pixels), torch.nn.functional.normalize(targets, dim=-1), atol=1e-3)
    return basis


def direction(stage: ClipImageStage, basis: torch.Tensor, *names: str) -> torch.Tensor:
    rows = [basis[stage.concepts.names.index(n)] for n in names]
    return torch.nn.functional.normalize(torch.stack(rows).sum(0), dim=0)


@pytest.fixture(scope="module")
def planted():
    """A balanced-preset Guard with the CLIP backend, and images planted on every category."""
    encoder = tiny_encoder()
    guard = Guard.create(preset="balanced", image_model=encoder)
    stage = next(s for s in guard.image_stages if s.name == "clip")
    names = stage.concepts.names
    neutral_index = len(names)  # first neutral direction
    cases = [*[(n,) for n in names], (), (MINOR_SIGNAL, "sexual")]
    images = noise_images(len(cases), seed=3)
    basis = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(1)))[0].T
    targets = torch.stack([direction(stage, basis, *c) if c else basis[neutral_index] for c in cases])
    plant(stage, images, targets)
    return guard, stage, dict(zip(cases, images, strict=True))


def _image_categories() -> list[str]:
    return [c.id for c in POLICY.enforced("image") if c.concepts]


def test_every_image_category_with_concepts_is_scored():
    stage = ClipImageStage(POLICY, resolve_settings(image_model=tiny_encoder()).output)
    assert stage.categories == tuple(_image_categories())
    assert stage.signals == (MINOR_SIGNAL,)
    assert len(stage.categories) >= 10  # far beyond the sexual-only bundled detectors


@pytest.mark.parametrize("category", _image_categories())
def test_each_category_fires_on_its_image_and_only_there(planted, category):
    guard, _, images = planted
    batch = torch.stack([images[(category,)], images[()]])
    fired, neutral = guard.check_images(batch)
    assert fired.blocked
    clip_findings = [f for f in fired.findings if f.source == "clip"]
    assert [f.category for f in clip_findings] == [category]
    finding = clip_findings[0]
    assert finding.score >= finding.threshold == guard.settings.output.thresholds.for_category(category)[1]
    assert finding.stage == "image" and finding.action is Action.BLOCK
    # Every other category stays below its threshold on this image, and every category on the neutral one.
    others = {k: v for k, v in fired.category_scores.items() if k not in (category, MINOR_SIGNAL)}
    assert max(others.values()) < 0.5
    assert not neutral.flagged and max(neutral.category_scores.values()) < 0.01


def test_minor_alone_is_not_blocked(planted):
    guard, _, images = planted
    verdict = guard.check_images(images[(MINOR_SIGNAL,)][None])[0]
    assert verdict.category_scores[MINOR_SIGNAL] > 0.99
    assert not verdict.blocked


def test_minor_with_sexual_content_fires_the_locked_conjunction(planted):
    guard, _, images = planted
    verdict = guard.check_images(images[(MINOR_SIGNAL, "sexual")][None])[0]
    conj = [f for f in verdict.findings if f.source.startswith("conjunction:")]
    assert [f.category for f in conj] == ["child_sexual_exploitation"]
    assert conj[0].locked and verdict.locked
    # A locked block is withheld whatever the preset's redaction.
    _, withheld = guard.apply_redaction(images[(MINOR_SIGNAL, "sexual")][None], [verdict])
    assert withheld == [0]


def test_conjunction_fires_across_backends():
    """The minor signal from CLIP and a sexual score from another backend together still block."""
    from safeguard.config import resolve_settings as rs
    from safeguard.stages.combine import apply_image_conjunctions
    from safeguard.verdict import Verdict

    clip_view = Verdict.from_findings(
        [], {"minor": 0.9, "sexual": 0.1}, policy_id=POLICY.id, policy_version=POLICY.version
    )
    nudenet_view = Verdict.from_findings([], {"sexual": 0.7}, policy_id=POLICY.id, policy_version=POLICY.version)
    combined = Verdict.combine([clip_view, nudenet_view])
    out = apply_image_conjunctions(POLICY, rs().output, [combined, nudenet_view])
    assert out[0].blocked and out[0].locked
    assert not out[1].blocked  # no backend saw a minor: the conjunction cannot fire


def test_per_category_threshold_from_the_preset_silences_a_category(planted):
    _, stage, images = planted
    settings = resolve_settings(
        config={"output": {"thresholds": {"violence": {"block": 1.0}}}}, image_model=stage.encoder
    )
    quiet = ClipImageStage(POLICY, settings.output)
    verdict = quiet.check(images[("violence",)][None])[0]
    assert not verdict.blocked and verdict.category_scores["violence"] > 0.99


def test_tensor_path_never_touches_pil_or_numpy(planted, monkeypatch):
    _, stage, images = planted

    def boom(*_a, **_k):
        raise AssertionError("left the tensor path")

    monkeypatch.setattr(Image, "fromarray", boom)
    monkeypatch.setattr(torch.Tensor, "numpy", boom)
    monkeypatch.setattr(np, "asarray", boom)
    verdicts = stage.check(torch.stack([images[("gore",)], images[()]]))
    assert [v.blocked for v in verdicts] == [True, False]


def test_text_embeddings_are_computed_once_per_model_and_policy(monkeypatch):
    encoder = tiny_encoder(seed=5)
    settings = resolve_settings(image_model=encoder).output
    calls = []
    original = encoder.encode_texts
    monkeypatch.setattr(encoder, "encode_texts", lambda texts: calls.append(len(texts)) or original(texts))
    first = ClipImageStage(POLICY, settings)
    first.check(noise_images(2, 0))
    ClipImageStage(POLICY, settings).check(noise_images(1, 1))
    templates = len(settings.clip.templates)
    assert calls == [templates * (len(first.concepts.phrases) + len(first.concepts.neutral))]


def test_scores_are_probabilities_and_batched():
    stage = ClipImageStage(POLICY, resolve_settings(image_model=tiny_encoder()).output)
    scores = stage.scores(noise_images(5, 2, size=(40, 40)))
    assert scores.shape == (5, len(stage.concepts.names))
    assert bool(((scores >= 0) & (scores <= 1)).all())


def test_preprocess_resizes_the_short_side_and_centre_crops():
    x = torch.zeros(1, 3, 40, 80)
    x[..., :, 20:60] = 1.0  # a white centre band
    out = preprocess(x, 20, (0.0,) * 3, (1.0,) * 3)
    assert out.shape == (1, 3, 20, 20)
    assert out.mean().item() == pytest.approx(1.0, abs=0.02)


def test_clip_listed_without_weights_is_a_config_error():
    with pytest.raises(ConfigError, match="needs CLIP weights"):
        Guard.create(config={"output": {"backends": ["opennsfw", "clip"]}})


def test_missing_weights_folder_is_a_config_error_at_protect(tmp_path):
    from safeguard.testing import tiny

    with pytest.raises(ConfigError, match="CLIP weights not found"):
        safeguard.protect(tiny.sd_pipeline(), image_model=str(tmp_path / "nothing-here"))
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache"):
        Guard.create(image_model="nobody/no-such-clip")


def test_clip_does_not_run_unless_given():
    guard = Guard.create()
    assert [s.name for s in guard.image_stages] == ["opennsfw", "nudenet"]


def test_policy_image_model_loads_a_clip_folder_by_path(tmp_path):
    """The toy world's policy names ``image_model: {backend: clip, path: clip}``; a saved folder loads."""
    model = tiny_clip(seed=7)
    model.save_pretrained(tmp_path / "clip")
    clip_tokenizer().save_pretrained(tmp_path / "clip")
    data = yaml.safe_load(Path(POLICY.path).read_text())
    data["image_model"] = {"backend": "clip", "path": "clip"}
    data["semantic_heads"] = str(POLICY.semantic_heads)  # the copy lies elsewhere; its heads stay where they are
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(data))
    guard = Guard.create(policy=tmp_path / "policy.yaml", preset="research")
    names = [s.name for s in guard.image_stages]
    assert "clip" in names
    verdicts = guard.check_images(noise_images(2, 4))
    assert len(verdicts) == 2 and all("violence" in v.category_scores for v in verdicts)
    broken = dict(data, image_model={"backend": "clip", "path": "missing"})
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(ConfigError, match="not found"):
        Guard.create(policy=tmp_path / "broken.yaml")


def test_a_failing_clip_backend_blocks(planted, monkeypatch):
    guard, stage, images = planted
    monkeypatch.setattr(type(stage.encoder), "encode_images", lambda *_: (_ for _ in ()).throw(RuntimeError("x")))
    verdict = guard.check_images(images[()][None])[0]
    assert verdict.blocked and any(f.source == "clip" and f.category == "stage_failure" for f in verdict.findings)


def test_the_stage_visits_the_images_device_and_returns_home(planted, monkeypatch):
    """Model CPU offload: the checker visits the images' device for the call and goes back afterwards."""
    _, stage, images = planted
    import safeguard.stages.clip as clip_module

    moves = []
    monkeypatch.setattr(clip_module, "_move", lambda module, device: moves.append(device.type))
    stage.check(images[()][None])
    assert moves == []  # already on the images' device: nothing moves
    meta_images = torch.empty(1, 3, 32, 32, device="meta")
    with pytest.raises(Exception):  # noqa: B017 - the moves are stubbed, so the forward itself cannot run
        stage.check(meta_images)
    assert moves == ["meta", "cpu"]  # there and back again, even when the call fails


@pytest.mark.openclip
def test_openclip_backend_scores_with_a_real_open_clip_model():
    open_clip = pytest.importorskip("open_clip")  # needs torchvision: skipped where it cannot import
    from safeguard.stages.clip import OpenClipEncoder

    torch.manual_seed(0)
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
    }
    model = open_clip.CLIP(**cfg).eval()
    encoder = OpenClipEncoder(model, open_clip.get_tokenizer("ViT-B-32"), 32)
    settings = resolve_settings(config={"output": {"openclip": {"weights": encoder}}})
    stage = OpenClipImageStage(POLICY, settings.output)
    verdicts = stage.check(noise_images(2, 0))
    assert len(verdicts) == 2 and "sexual" in verdicts[0].category_scores
    assert "openclip" in [s.name for s in Guard(POLICY, settings).image_stages]
