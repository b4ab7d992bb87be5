"""Prompt scores from the pipeline's own text encoder: calibration files, encoder matching, prompt_embeds."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import safeguard
from safeguard.errors import ConfigError
from safeguard.policy import load_policy
from safeguard.stages.encoder import EncoderCalibration, EncoderPromptStage, calibrate_encoder, encoder_probe
from safeguard.testing import tiny
from safeguard.toy import POLICY_PATH, labelled_prompts


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the toy policy with a calibration for the tiny SD pipeline's (random) text encoder.

    A random encoder's scores mean nothing, so the thresholds are set by hand: these tests are about the
    mechanism (matching, loading, deciding); the toy world's tests cover a real calibration.
    """
    folder = tmp_path_factory.mktemp("policy")
    policy_path = folder / "policy.yaml"
    shutil.copy(POLICY_PATH, policy_path)
    probe = encoder_probe(tiny.sd_pipeline())
    calibration = EncoderCalibration("toy-colours", "1", "sd", probe, {"red": (0.4, 0.7)}, {"data": "test"})
    calibration.save(folder / "encoder_calibration.yaml")
    return policy_path


def _reseeded_text_encoder(pipe: object, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in pipe.text_encoder.parameters():  # type: ignore[attr-defined]
            param.copy_(torch.randn(param.shape, generator=generator) * 0.02)


def test_calibration_round_trips(calibrated: Path) -> None:
    policy = load_policy(calibrated)
    loaded = EncoderCalibration.load(calibrated.parent / "encoder_calibration.yaml", policy)
    assert loaded.thresholds == {"red": (0.4, 0.7)}
    assert loaded.family == "sd"
    assert loaded.provenance == {"data": "test"}
    assert np.allclose(loaded.probe, encoder_probe(tiny.sd_pipeline()), atol=1e-5)


def test_calibration_thresholds_keep_benign_prompts_under_the_target() -> None:
    policy = load_policy(POLICY_PATH)
    prompts, labels = labelled_prompts(200, seed=3)
    # The tiny random encoder saturates (score 1) on about a quarter of benign prompts.
    loose = calibrate_encoder(tiny.sd_pipeline(), policy, prompts, labels, block_false_positives=0.3)
    steer, block = loose.thresholds["red"]
    figures = loose.provenance["figures"]["red"]
    assert steer is not None and steer <= block <= 1.0
    assert figures["benign_blocked"] <= 0.3
    assert figures["benign_flagged"] <= 0.3
    # Under a 0.5% target no threshold up to 1 is enough: the category is left out, with the reason.
    strict = calibrate_encoder(tiny.sd_pipeline(), policy, prompts, labels)
    assert "red" not in strict.thresholds
    assert "score 1" in strict.provenance["figures"]["red"]["left_out"]
    with pytest.raises(ValueError, match="benign"):
        calibrate_encoder(tiny.sd_pipeline(), policy, ["a red circle"], [["red"]])


def test_the_calibrated_encoder_matches_and_others_do_not(calibrated: Path) -> None:
    policy = load_policy(calibrated)
    assert EncoderPromptStage.for_pipeline(tiny.sd_pipeline(), policy) is not None
    other = tiny.sd_pipeline()
    _reseeded_text_encoder(other, seed=1)
    assert EncoderPromptStage.for_pipeline(other, policy) is None
    # Another family never matches, even before its probe is compared.
    assert EncoderPromptStage.for_pipeline(tiny.sdxl_pipeline(), policy) is None


def test_half_precision_encoder_still_matches() -> None:
    pipe = tiny.sd_pipeline()
    full = encoder_probe(pipe)
    pipe.text_encoder.to(torch.bfloat16)
    low = encoder_probe(pipe)
    assert ((full * low).sum(axis=1) >= 0.999).all()


def test_protect_adds_the_encoder_stage_and_scores_prompt_embeds_like_text(calibrated: Path) -> None:
    pipe = tiny.sd_pipeline()
    guarded = safeguard.protect(pipe, policy=calibrated, preset="research", output=False)
    stage = guarded.guard.encoder_stage
    assert stage is not None and stage in guarded.guard.prompt_stages
    texts = ["a red circle", "a blue square on a grey background"]
    by_text = stage.check(texts)
    embeds, _ = pipe.encode_prompt(texts, pipe.device, 1, False)
    by_embeds = guarded.guard.check_prompt_embeds(embeds)
    for a, b in zip(by_text, by_embeds, strict=True):
        assert a.category_scores.keys() == b.category_scores.keys() == {"red"}
        assert a.category_scores["red"] == pytest.approx(b.category_scores["red"], abs=1e-5)


def test_without_a_calibration_prompt_embeds_are_not_scored() -> None:
    guarded = safeguard.protect(tiny.sd_pipeline(), policy=POLICY_PATH, preset="research", output=False)
    assert guarded.guard.encoder_stage is None
    embeds = torch.zeros(2, 77, 32)
    verdicts = guarded.guard.check_prompt_embeds(embeds)
    assert [v.action.value for v in verdicts] == ["allow", "allow"]
    assert all(not v.category_scores for v in verdicts)


def test_prompt_stage_off_adds_no_encoder_stage(calibrated: Path) -> None:
    guarded = safeguard.protect(tiny.sd_pipeline(), policy=calibrated, preset="research", prompt=False, output=False)
    assert guarded.guard.encoder_stage is None


def test_thresholds_decide_block_and_steer(calibrated: Path) -> None:
    policy = load_policy(calibrated)
    stage = EncoderPromptStage.for_pipeline(tiny.sd_pipeline(), policy)
    assert stage is not None
    prompts, _ = labelled_prompts(60, seed=9)
    steer, block = stage.calibration.thresholds["red"]
    for verdict in stage.check(prompts):
        score = verdict.category_scores["red"]
        expected = "block" if score >= block else "steer" if steer is not None and score >= steer else "allow"
        assert verdict.action.value == expected
        for finding in verdict.findings:
            assert finding.source == "encoder" and finding.threshold in (steer, block)
            assert "encoder_calibration.yaml" in finding.detail


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d.update(policy="other@1"), "other@1"),
        (lambda d: d["thresholds"]["red"].update(steer=0.9, block=0.2), "steer <= block"),
        (lambda d: d["thresholds"].update(blue={"block": 0.5}), "'blue'"),
        (lambda d: d.update(probe=[[1.0, 2.0]]), "probe"),
    ],
)
def test_bad_calibration_files_are_config_errors(calibrated: Path, tmp_path: Path, change, message: str) -> None:
    shutil.copy(calibrated, tmp_path / "policy.yaml")
    data = yaml.safe_load((calibrated.parent / "encoder_calibration.yaml").read_text(encoding="utf-8"))
    change(data)
    (tmp_path / "encoder_calibration.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        safeguard.protect(tiny.sd_pipeline(), policy=tmp_path / "policy.yaml", preset="research", output=False)


def test_a_missing_calibration_file_is_a_config_error(tmp_path: Path) -> None:
    shutil.copy(POLICY_PATH, tmp_path / "policy.yaml")
    with pytest.raises(ConfigError, match=r"encoder_calibration\.yaml"):
        safeguard.protect(tiny.sd_pipeline(), policy=tmp_path / "policy.yaml", preset="research", output=False)


def test_probe_is_unit_rows_of_fixed_shape() -> None:
    probe = encoder_probe(tiny.flux_pipeline())
    assert probe.shape == (4, 16)
    assert np.allclose(np.linalg.norm(probe, axis=1), 1.0)
