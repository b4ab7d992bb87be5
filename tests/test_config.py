"""Preset layering, unknown keys, toggles."""

from __future__ import annotations

import pytest
import yaml

import safeguard
from safeguard.config import resolve_settings
from safeguard.errors import ConfigError


def test_bundled_presets():
    assert safeguard.available_presets() == ["balanced", "research", "strict"]
    assert resolve_settings().preset == "balanced"
    for name in safeguard.available_presets():
        settings = resolve_settings(name)
        assert settings.on_block == "raise", "the shipped presets raise on a blocked prompt"
        assert settings.prompt.enabled and settings.output.enabled


def test_layers_apply_lowest_first(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text(
        yaml.safe_dump(
            {
                "preset": "research",
                "output": {"redaction": "pixelate", "thresholds": {"sexual": {"block": 0.7}}},
                "prompt": {"max_chars": 500},
            }
        ),
        encoding="utf-8",
    )
    settings = resolve_settings(config=user, redaction="blur", policy_categories=("sexual",))
    assert settings.preset == "research"  # taken from the user file
    assert settings.prompt.max_chars == 500  # user file over preset
    assert settings.output.redaction == "blur"  # keyword over user file
    assert settings.output.thresholds.for_category("sexual") == (None, 0.7)
    assert settings.output.thresholds.for_category("gore") == (None, 0.8)  # preset default
    assert settings.layers[0] == "defaults" and settings.layers[-1].startswith("overrides")


def test_unknown_key_names_key_and_file(tmp_path):
    user = tmp_path / "typo.yaml"
    user.write_text("output:\n  redactoin: blur\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"typo\.yaml: output: unknown key 'redactoin'"):
        resolve_settings(config=user)
    preset = tmp_path / "custom.yaml"
    preset.write_text("prompt:\n  enabled: true\nfilters: []\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"custom\.yaml: unknown key 'filters'"):
        resolve_settings(preset=preset)
    with pytest.raises(ConfigError, match=r"unknown keyword override\(s\) \['outptu'\]"):
        resolve_settings(outptu=False)


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match="unknown preset 'lenient'"):
        resolve_settings("lenient")
    with pytest.raises(ConfigError, match="redaction must be one of"):
        resolve_settings(redaction="smudge")
    with pytest.raises(ConfigError, match=r"thresholds\.sexual\.block: expected a number in \[0, 1\]"):
        resolve_settings(config={"output": {"thresholds": {"sexual": {"block": 2}}}})
    with pytest.raises(ConfigError, match=r"steer threshold 0\.9 is above block threshold 0\.5"):
        resolve_settings(config={"prompt": {"thresholds": {"default": {"steer": 0.9, "block": 0.5}}}})
    with pytest.raises(ConfigError, match="must be True or False"):
        resolve_settings(prompt="no")


def test_thresholds_for_categories_the_policy_lacks_are_ignored():
    settings = resolve_settings(
        config={"output": {"thresholds": {"not_a_category": {"block": 0.1}}}}, policy_categories=("red",)
    )
    assert "not_a_category" not in settings.output.thresholds.per_category


def test_toggles_follow_the_preset():
    research = resolve_settings("research", prompt=False, output=False, steering=False)
    assert research.stages == ()
    for override in ({"prompt": False}, {"output": False}, {"on_block": "return"}, {"redaction": "flag"}):
        with pytest.raises(ConfigError, match="does not allow the override"):
            resolve_settings("strict", **override)
    # Overrides that do not weaken strict are fine.
    assert resolve_settings("strict", prompt=True, redaction="blur").output.redaction == "blur"


def test_steering_strengths_build_the_steering_stage():
    # Checking a prompt does not steer anything, but the stage (and its preset file) must build.
    assert not safeguard.check_prompt("a cat", preset="research", steering="strong").flagged
    with pytest.raises(ConfigError, match=r"steering\.strength"):
        resolve_settings("research", steering="gentle")
