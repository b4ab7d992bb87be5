"""Semantic prompt scoring with the bundled MiniLM model and the calibrated heads."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

import safeguard
from safeguard.config import resolve_settings
from safeguard.errors import ConfigError
from safeguard.policy import load_policy
from safeguard.semantic import MiniLMEncoder, OnnxMiniLMEncoder, StaticMiniLMEncoder
from safeguard.stages.semantic import SemanticHeads, SemanticPromptStage


@pytest.fixture(scope="module")
def stage() -> SemanticPromptStage:
    found = SemanticPromptStage.for_policy(load_policy(), resolve_settings().prompt)
    assert found is not None, "the default policy ships a semantic calibration"
    return found


def test_heads_match_the_policy_and_record_their_provenance(stage):
    policy = load_policy()
    assert set(stage.heads.categories) <= {c.id for c in policy.enforced("prompt")}
    assert {"sexual", "violence", "gore"} <= set(stage.heads.categories)
    assert {"date", "data", "command"} <= set(stage.heads.provenance)
    thresholds = resolve_settings().prompt.thresholds
    for category in stage.heads.categories:
        steer, block = thresholds.for_category(category)
        assert category in thresholds.per_category, f"no calibrated threshold for {category}"
        assert 0 < steer <= block < 1


def test_static_and_full_encoders_agree_on_nearest_neighbours():
    texts = ["a naked woman lying on a bed", "a nude lady in a bedroom", "a bowl of oranges on a table"]
    for encoder in (StaticMiniLMEncoder.load(), MiniLMEncoder.load(), OnnxMiniLMEncoder.load()):
        x = encoder.encode(texts)
        assert x.shape == (3, 384) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-4)
        assert x[0] @ x[1] > x[0] @ x[2]


def test_implicit_unsafe_prompt_is_flagged_by_the_full_model(stage):
    verdict = stage.check(["two lovers tangled in the sheets, moaning, explicit"])[0]
    assert verdict.flagged
    finding = max(verdict.findings, key=lambda f: f.score)
    assert finding.source == "minilm" and finding.score >= finding.threshold and finding.stage == "prompt"


def test_benign_prompts_are_settled_without_the_full_model(stage, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("the full model ran for a prompt the static pass should settle")

    monkeypatch.setattr(OnnxMiniLMEncoder, "encode", refuse)
    verdicts = stage.check(["a watercolor painting of a lighthouse at dawn", "a red bicycle leaning on a wall"])
    assert not any(v.flagged for v in verdicts)


def test_onnx_encoder_matches_the_torch_model():
    # Mixed lengths in one batch: padding must not leak into the pooled embedding.
    texts = ["a red bicycle", "a bloody mutilated corpse lying in the rain, highly detailed, trending on artstation"]
    onnx, reference = OnnxMiniLMEncoder.load().encode(texts, batch_size=2), MiniLMEncoder.load().encode(texts)
    assert np.abs(onnx - reference).max() < 1e-4


def test_heads_of_another_encoder_are_refused(stage, tmp_path):
    data = dict(np.load(stage.heads.path))
    data["full_encoder"] = np.array("minilm-torch-fp32")
    np.savez(tmp_path / "heads.npz", **data)
    with pytest.raises(ConfigError, match="calibrated for encoder"):
        SemanticHeads(tmp_path / "heads.npz")


def test_obfuscation_does_not_change_the_scores(stage):
    clean, obfuscated = stage.check(["a bloody mutilated corpse", "a ｂｌｏｏｄｙ m\u200bu\u200bt\u200bilated c0rpse"])
    assert clean.category_scores["gore"] == pytest.approx(obfuscated.category_scores["gore"], abs=1e-6)


def test_a_policy_without_calibration_gets_no_semantic_stage(tmp_path):
    source = load_policy().path
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    data["id"] = "my-policy"
    path = tmp_path / "my-policy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert SemanticPromptStage.for_policy(load_policy(path), resolve_settings().prompt) is None
    guard_stages = safeguard.guard.Guard.create(path).prompt_stages
    assert [s.name for s in guard_stages] == ["keywords"]
