"""Semantic prompt scoring with the bundled MiniLM model and the calibrated heads."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

import safeguard
import safeguard.semantic as semantic
from safeguard.config import resolve_settings
from safeguard.errors import ConfigError
from safeguard.policy import load_policy
from safeguard.semantic import MiniLMEncoder, OnnxMiniLMEncoder, StaticMiniLMEncoder, student_model
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
    for strictness in ("balanced", "strict"):
        settings = resolve_settings(strictness).prompt
        assert settings.strictness == strictness
        for category in stage.heads.categories:
            steer, block = stage.heads.thresholds_for(category, settings)
            assert 0 < steer <= block < 1
            strict_steer, strict_block = stage.heads.thresholds["strict"][category]
            assert strict_steer <= steer and strict_block <= block


def test_static_and_full_encoders_agree_on_nearest_neighbours():
    texts = ["a naked woman lying on a bed", "a nude lady in a bedroom", "a bowl of oranges on a table"]
    encoders = (StaticMiniLMEncoder.load(), MiniLMEncoder.load(), OnnxMiniLMEncoder.load())
    for encoder in (*encoders, OnnxMiniLMEncoder.load_student()):
        x = encoder.encode(texts)
        assert x.shape == (3, 384) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-4)
        assert x[0] @ x[1] > x[0] @ x[2]


def test_implicit_unsafe_prompt_is_flagged_by_the_full_model(stage):
    verdict = stage.check(["two lovers tangled in the sheets, moaning, explicit"])[0]
    assert verdict.flagged
    finding = max(verdict.findings, key=lambda f: f.score)
    assert finding.source == "minilm-student" and finding.score >= finding.threshold and finding.stage == "prompt"


def test_benign_prompts_are_settled_without_the_full_model(stage, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("the full model ran for a prompt the static pass should settle")

    monkeypatch.setattr(OnnxMiniLMEncoder, "encode_tokens", refuse)  # what encode() runs too
    verdicts = stage.check(["a watercolor painting of a lighthouse at dawn", "a red bicycle leaning on a wall"])
    assert not any(v.flagged for v in verdicts)


def test_onnx_encoder_matches_the_torch_model():
    # Mixed lengths in one batch: padding must not leak into the pooled embedding.
    texts = ["a red bicycle", "a bloody mutilated corpse lying in the rain, highly detailed, trending on artstation"]
    onnx, reference = OnnxMiniLMEncoder.load().encode(texts, batch_size=2), MiniLMEncoder.load().encode(texts)
    assert np.abs(onnx - reference).max() < 1e-4


def test_student_onnx_matches_its_torch_model_and_stays_near_the_teacher():
    from safetensors.torch import load_file

    texts = ["a red bicycle", "a bloody mutilated corpse lying in the rain, highly detailed, trending on artstation"]
    student = OnnxMiniLMEncoder.load_student()
    assert student.name.startswith(f"minilm-student{semantic.STUDENT_LAYERS}-")
    weights = load_file(str(semantic.STUDENT_PATH))
    torch_student = MiniLMEncoder(student_model(MiniLMEncoder.load().model, weights), semantic.STUDENT_MAX_TOKENS)
    reference = torch_student.encode(texts)
    got = student.encode(texts, batch_size=2)
    assert np.abs(got - reference).max() < 1e-4
    # The distillation pulls the student towards the teacher: its embeddings sit much closer than chance.
    assert (got * OnnxMiniLMEncoder.load().encode(texts)).sum(axis=1).min() > 0.7


def test_student_weights_of_another_shape_are_refused():
    with pytest.raises(ValueError, match="do not fit"):
        student_model(MiniLMEncoder.load().model, {"encoder.layer.0.attention.self.query.weight": np.zeros(1)})


def test_a_missing_student_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setattr(semantic, "STUDENT_PATH", tmp_path / "absent.safetensors")
    OnnxMiniLMEncoder.load_student.cache_clear()
    try:
        with pytest.raises(ConfigError, match="distil_minilm"):
            OnnxMiniLMEncoder.load_student()
    finally:
        OnnxMiniLMEncoder.load_student.cache_clear()


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
    del data["semantic_heads"]  # a policy names its heads; this one names none
    path = tmp_path / "my-policy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert SemanticPromptStage.for_policy(load_policy(path), resolve_settings().prompt) is None
    guard_stages = safeguard.guard.Guard.create(path).prompt_stages
    assert [s.name for s in guard_stages] == ["keywords"]


def test_first_use_is_said_and_an_unwritable_cache_folder_falls_back(tmp_path, monkeypatch, caplog):
    from safeguard import semantic

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))  # nothing can be created under a file
    semantic._writable_cache_dir.cache_clear()
    semantic._announce_first_use.cache_clear()
    built = []

    def build(path):
        path.write_bytes(b"built")
        built.append(path)

    with caplog.at_level("WARNING", logger="safeguard"):
        first = semantic._cached_file("thing.bin", "a thing", build)
        again = semantic._cached_file("thing.bin", "a thing", build)
    assert first == again and first.read_bytes() == b"built" and len(built) == 1
    assert not str(first).startswith(str(blocker))
    said = " ".join(caplog.messages)
    assert f"cannot write the cache folder {blocker / 'cache' / 'safeguard'}" in said and "XDG_CACHE_HOME" in said
    assert said.count("preparing the prompt stage's models on first use") == 1
    # A cache folder that already holds the file is read as it is, writable or not, and nothing is said.
    ready = tmp_path / "ready" / "safeguard"
    ready.mkdir(parents=True)
    (ready / "thing.bin").write_bytes(b"shipped")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "ready"))
    caplog.clear()
    assert semantic._cached_file("thing.bin", "a thing", build).read_bytes() == b"shipped"
    assert len(built) == 1 and not caplog.messages
