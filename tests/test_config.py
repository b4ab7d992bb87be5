"""Preset layering, unknown keys and categories, toggles, locks."""

from __future__ import annotations

import math
import re

import pytest
import yaml

import safeguard
from safeguard.config import LOCKABLE, resolve_settings
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


def test_a_config_file_that_is_not_utf8_is_a_config_error_naming_it(tmp_path):
    from safeguard.testing import tiny

    user = tmp_path / "utf16.yaml"
    user.write_bytes("preset: strict\n".encode("utf-16"))  # starts with the byte-order mark b"\xff\xfe"
    with pytest.raises(ConfigError, match=rf"{re.escape(str(user))}: not UTF-8 text"):
        resolve_settings(config=user)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(user))}: not UTF-8 text"):
        safeguard.protect(tiny.sd_pipeline(), config=user)


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


def test_thresholds_for_categories_the_policy_lacks_are_an_error():
    with pytest.raises(ConfigError, match=r"output\.thresholds\.not_a_category: 'not_a_category' is not a category"):
        resolve_settings(
            config={"output": {"thresholds": {"not_a_category": {"block": 0.1}}}}, policy_categories=("red",)
        )


def test_toggles_follow_the_preset():
    research = resolve_settings("research", prompt=False, output=False, steering=False)
    assert research.stages == ()
    for override in ({"prompt": False}, {"output": False}, {"on_block": "return"}, {"redaction": "flag"}):
        with pytest.raises(ConfigError, match="weakens what preset 'strict' locks"):
            resolve_settings("strict", **override)
    # Overrides that do not weaken strict are fine.
    assert resolve_settings("strict", prompt=True, redaction="raise").output.redaction == "raise"


def test_steering_strengths_build_the_steering_stage():
    # Checking a prompt does not steer anything, but the stage (and its preset file) must build.
    assert not safeguard.check_prompt("a cat", preset="research", steering="strong").flagged
    with pytest.raises(ConfigError, match=r"steering\.strength"):
        resolve_settings("research", steering="gentle")


# -- locks -----------------------------------------------------------------------------------------------
STRICT = resolve_settings("strict")
NEUTRAL = list(STRICT.output.clip.neutral_concepts)
MINOR = list(STRICT.output.clip.minor_concepts)

# (a user layer that weakens strict, the setting the error must name)
WEAKENINGS = [
    ({"prompt": {"enabled": False}}, "prompt.enabled"),
    ({"output": {"enabled": False}}, "output.enabled"),
    ({"steering": {"enabled": True}}, "steering.enabled"),
    ({"prompt": {"thresholds": {"default": {"block": 0.6}}}}, "prompt.thresholds.default.block"),
    ({"prompt": {"thresholds": {"default": {"block": None}}}}, "prompt.thresholds.default.block"),
    ({"prompt": {"thresholds": {"default": {"steer": 0.6, "block": 0.6}}}}, "prompt.thresholds.default.steer"),
    ({"prompt": {"thresholds": {"default": {"steer": None}}}}, "prompt.thresholds.default.steer"),
    ({"prompt": {"thresholds": {"sexual": {"block": 0.9}}}}, "prompt.thresholds.sexual.block"),
    ({"prompt": {"thresholds": {"sexual": {"block": None}}}}, "prompt.thresholds.sexual.block"),
    ({"prompt": {"thresholds": {"sexual": {"steer": 0.6, "block": 0.6}}}}, "prompt.thresholds.sexual.steer"),
    ({"prompt": {"strictness": "balanced"}}, "prompt.strictness"),
    ({"prompt": {"thresholds": {"sexual": {"steer": None}}}}, "prompt.thresholds.sexual.steer"),
    # a category without an entry of its own inherits the default: a new entry above it weakens it
    ({"prompt": {"thresholds": {"hate": {"block": 0.9}}}}, "prompt.thresholds.hate.block"),
    ({"output": {"thresholds": {"default": {"block": 0.7}}}}, "output.thresholds.default.block"),
    ({"output": {"thresholds": {"default": {"block": None}}}}, "output.thresholds.default.block"),
    ({"output": {"thresholds": {"sexual": {"block": 0.61}}}}, "output.thresholds.sexual.block"),
    ({"output": {"thresholds": {"sexual": {"block": None}}}}, "output.thresholds.sexual.block"),
    ({"output": {"redaction": "black"}}, "output.redaction"),
    ({"output": {"redaction": "blur"}}, "output.redaction"),
    ({"output": {"redaction": "pixelate"}}, "output.redaction"),
    ({"output": {"redaction": "flag"}}, "output.redaction"),
    ({"output": {"category_redaction": {"sexual": "black"}}}, "output.category_redaction.sexual"),
    ({"output": {"category_redaction": {"gore": "flag"}}}, "output.category_redaction.gore"),
    ({"output": {"backends": ["nudenet"]}}, "output.backends"),
    ({"output": {"backends": ["opennsfw", "clip"]}}, "output.backends"),
    ({"output": {"backends": []}}, "output.backends"),
    ({"accept_prompt_embeds": True}, "accept_prompt_embeds"),
    ({"on_block": "return"}, "on_block"),
    ({"prompt": {"max_chars": 20_001}}, "prompt.max_chars"),
    ({"prompt": {"deadline_s": 30}}, "prompt.deadline_s"),
    ({"prompt": {"deadline_s": None}}, "prompt.deadline_s"),
    ({"output": {"conjunction_threshold": 0.6}}, "output.conjunction_threshold"),
    ({"output": {"nudenet": {"min_score": 0.6}}}, "output.nudenet.min_score"),
    ({"output": {"nudenet": {"min_skin": 0.2}}}, "output.nudenet.min_skin"),
    ({"output": {"clip": {"templates": ["{}"]}}}, "output.clip.templates"),
    ({"output": {"clip": {"neutral_concepts": [*NEUTRAL, "a nude person"]}}}, "output.clip.neutral_concepts"),
    ({"output": {"clip": {"minor_concepts": MINOR[1:]}}}, "output.clip.minor_concepts"),
]


def _user_layer(via, layer, tmp_path):
    """The layer as a config mapping or a YAML file, and the name an error gives it."""
    if via == "mapping":
        return layer, "config mapping"
    path = tmp_path / "weaker.yaml"
    path.write_text(yaml.safe_dump(layer), encoding="utf-8")
    return path, str(path)


@pytest.mark.parametrize("via", ["file", "mapping"])
@pytest.mark.parametrize(("layer", "setting"), WEAKENINGS, ids=[s for _, s in WEAKENINGS])
def test_a_user_layer_cannot_weaken_strict(via, layer, setting, tmp_path):
    config, where = _user_layer(via, layer, tmp_path)
    expected = rf"^{re.escape(where)} weakens what preset 'strict' locks: .*{re.escape(setting)} "
    with pytest.raises(ConfigError, match=expected):
        resolve_settings("strict", config=config)


@pytest.mark.parametrize(
    ("override", "setting"),
    [
        ({"prompt": False}, "prompt.enabled"),
        ({"output": False}, "output.enabled"),
        ({"steering": True}, "steering.enabled"),
        ({"steering": "weak"}, "steering.enabled"),
        ({"on_block": "return"}, "on_block"),
        ({"redaction": "black"}, "output.redaction"),
        ({"redaction": "blur"}, "output.redaction"),
        ({"redaction": "pixelate"}, "output.redaction"),
        ({"redaction": "flag"}, "output.redaction"),
    ],
)
def test_a_keyword_override_cannot_weaken_strict(override, setting):
    ((name, value),) = override.items()
    expected = rf"^overrides: {name}={re.escape(repr(value))} weakens what preset 'strict' locks: {re.escape(setting)} "
    with pytest.raises(ConfigError, match=expected):
        resolve_settings("strict", **override)


def test_a_keyword_override_cannot_accept_prompt_embeds():
    with pytest.raises(ConfigError, match=r"unknown keyword override\(s\) \['accept_prompt_embeds'\]"):
        resolve_settings(accept_prompt_embeds=True)


def test_the_error_names_every_weakened_setting_and_the_lock_rule():
    config = {"output": {"redaction": "blur", "thresholds": {"sexual": {"block": None}}}}
    with pytest.raises(ConfigError) as caught:
        resolve_settings("strict", config=config)
    message = str(caught.value)
    assert "output.redaction is 'blur', weaker than the locked 'withhold'" in message
    assert "output.thresholds.sexual.block is null, above the locked 0.6" in message
    assert "may be lowered, not raised or set to null" in message


@pytest.mark.parametrize("via", ["file", "mapping"])
def test_stricter_user_layers_pass_strict(via, tmp_path):
    stricter = {
        "on_block": "raise",
        "accept_prompt_embeds": False,
        "prompt": {
            "max_chars": 500,
            "deadline_s": 2.5,
            "thresholds": {
                "default": {"steer": 0.4, "block": 0.45},
                "sexual": {"steer": 0.4},
                "hate": {"steer": 0.2, "block": 0.3},
            },
        },
        "steering": {"enabled": False, "strength": "weak"},  # strength does not matter with steering locked off
        "output": {
            "backends": ["opennsfw", "nudenet", "clip"],
            "redaction": "raise",
            "category_redaction": {"sexual": "withhold"},
            "thresholds": {"default": {"block": 0.5}, "sexual": {"steer": 0.2, "block": 0.3}},
            "conjunction_threshold": 0.3,
            "nudenet": {"min_score": 0.4, "min_skin": 0.05},
            "clip": {"neutral_concepts": NEUTRAL[:3], "minor_concepts": [*MINOR, "a teenager"]},
        },
    }
    config, where = _user_layer(via, stricter, tmp_path)
    settings = resolve_settings("strict", config=config, prompt=True, output=True, steering=False, redaction="raise")
    assert settings.preset == "strict" and settings.layers[2] == where
    assert settings.prompt.thresholds.for_category("sexual") == (0.4, 0.45)
    assert settings.prompt.thresholds.for_category("hate") == (0.2, 0.3)
    assert settings.prompt.deadline_s == 2.5 and settings.prompt.max_chars == 500
    assert settings.output.backends == ("opennsfw", "nudenet", "clip")
    assert settings.output.thresholds.for_category("sexual") == (0.2, 0.3)
    assert settings.output.redaction == "raise" and settings.output.nudenet_min_score == 0.4
    assert settings.locks == STRICT.locks  # the bounds are the preset's, not the stricter layer's


def test_strict_locks_what_it_promises_and_says_so():
    assert set(STRICT.locks) == set(LOCKABLE) - {"steering.strength"}  # steering itself is locked off
    assert all(name == lock.setting and lock.rule for name, lock in STRICT.locks.items())
    assert STRICT.locks["output.redaction"].bound == {"default": "withhold"}
    assert STRICT.locks["output.backends"].bound == ("opennsfw", "nudenet")
    assert STRICT.locks["prompt.thresholds"].bound.for_category("sexual") == (0.5, 0.5)  # the keyword rules'
    assert STRICT.locks["prompt.strictness"].bound == "strict"  # the semantic heads' own thresholds
    assert STRICT.locks["accept_prompt_embeds"].bound is False
    assert STRICT.locks["steering.enabled"].bound is False
    for name in ("balanced", "research"):
        assert dict(resolve_settings(name).locks) == {}


def test_a_preset_file_declares_its_locks(tmp_path):
    preset = tmp_path / "host.yaml"
    preset.write_text("locks: [steering.strength]\nsteering: {enabled: true, strength: strong}\n", encoding="utf-8")
    assert resolve_settings(preset, steering="max").steering.strength == "max"
    with pytest.raises(
        ConfigError, match=r"steering='medium' weakens what preset '[^']*host\.yaml' locks: steering\.strength"
    ):
        resolve_settings(preset, steering="medium")
    assert not resolve_settings(preset, steering=False).steering.enabled  # only the strength is locked here

    preset.write_text("locks: [output.redactoin]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'output\.redactoin' cannot be locked; did you mean 'output\.redaction'"):
        resolve_settings(preset)
    preset.write_text("locks: output.redaction\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="locks: expected a list of setting names"):
        resolve_settings(preset)
    with pytest.raises(ConfigError, match="config mapping: locks: only a preset can lock settings"):
        resolve_settings("balanced", config={"locks": ["output.redaction"]})


def test_allow_toggles_is_gone_in_favour_of_locks():
    with pytest.raises(ConfigError, match="unknown key 'allow_toggles'"):
        resolve_settings("research", config={"allow_toggles": True})


def test_a_lock_keeps_the_toy_world_working():
    # Strict's per-category thresholds are written for the default policy; under the toy policy they are skipped.
    settings = resolve_settings("strict", config={"output": {"thresholds": {"red": {"block": 0.5}}}},
                                policy_categories=("red",))  # fmt: skip
    assert dict(settings.prompt.thresholds.per_category) == {}
    assert settings.output.thresholds.for_category("red") == (None, 0.5)
    with pytest.raises(ConfigError, match=r"output\.thresholds\.red\.block is 0\.7, above the locked 0\.6"):
        resolve_settings(
            "strict", config={"output": {"thresholds": {"red": {"block": 0.7}}}}, policy_categories=("red",)
        )


# -- category ids --------------------------------------------------------------------------------------
CATEGORY_PLACES = [
    ({"prompt": {"thresholds": {"sexaul": {"block": 0.5}}}}, "prompt.thresholds.sexaul"),
    ({"output": {"thresholds": {"sexaul": {"block": 0.5}}}}, "output.thresholds.sexaul"),
    ({"output": {"category_redaction": {"sexaul": "withhold"}}}, "output.category_redaction.sexaul"),
]


@pytest.mark.parametrize("via", ["file", "mapping"])
@pytest.mark.parametrize(("layer", "where"), CATEGORY_PLACES, ids=[w for _, w in CATEGORY_PLACES])
def test_unknown_categories_in_user_layers_are_named_with_a_suggestion(via, layer, where, tmp_path):
    config, name = _user_layer(via, layer, tmp_path)
    expected = rf"^{re.escape(name)}: {re.escape(where)}: 'sexaul' is not a category .*did you mean 'sexual'\?"
    with pytest.raises(ConfigError, match=expected):
        resolve_settings(config=config)
    toy = {
        section: {key: {"rde": value["sexaul"]}} for section, entries in layer.items() for key, value in entries.items()
    }
    with pytest.raises(ConfigError, match="'rde' is not a category of the policy in use; did you mean 'red'"):
        resolve_settings(config=toy, policy_categories=("red",))
    # a category of the default policy is still unknown to a policy that lacks it
    with pytest.raises(ConfigError, match="'sexaul' is not a category of the policy in use; known: red"):
        resolve_settings(config=config, policy_categories=("red",))


@pytest.mark.parametrize(("layer", "where"), CATEGORY_PLACES, ids=[w for _, w in CATEGORY_PLACES])
def test_unknown_categories_in_presets_are_named(layer, where, tmp_path):
    preset = tmp_path / "typo.yaml"
    preset.write_text(yaml.safe_dump(layer), encoding="utf-8")
    expected = rf"typo\.yaml: {re.escape(where)}: 'sexaul' is a category of neither .*did you mean 'sexual'\?"
    with pytest.raises(ConfigError, match=expected):
        resolve_settings(preset)
    with pytest.raises(ConfigError, match=expected):
        resolve_settings(preset, policy_categories=("red",))
    # A preset's entry for a bundled policy's category is skipped under a policy without it, kept otherwise.
    preset.write_text(yaml.safe_dump(layer).replace("sexaul", "sexual"), encoding="utf-8")
    section, key = where.split(".")[:2]

    def entries(settings):
        value = getattr(getattr(settings, section), key)
        return value if key == "category_redaction" else value.per_category

    assert "sexual" in entries(resolve_settings(preset))
    assert "sexual" not in entries(resolve_settings(preset, policy_categories=("red",)))


# -- defaults --------------------------------------------------------------------------------------------
def test_prompt_embeds_are_refused_unless_a_user_layer_accepts_them(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert not resolve_settings(empty).accept_prompt_embeds  # the built-in default
    for name in safeguard.available_presets():
        assert not resolve_settings(name).accept_prompt_embeds, name
    for name in ("balanced", "research"):
        assert resolve_settings(name, config={"accept_prompt_embeds": True}).accept_prompt_embeds


def test_protect_refuses_prompt_embeds_under_the_default_preset():
    from safeguard.testing import tiny

    pipe = tiny.sd_pipeline()
    embeds, _ = pipe.encode_prompt("a lighthouse", "cpu", 1, False)
    with pytest.raises(ConfigError, match="requires prompt text"):
        safeguard.protect(pipe)(prompt_embeds=embeds, num_inference_steps=1, output_type="np")
    accepting = safeguard.protect(tiny.sd_pipeline(), config={"accept_prompt_embeds": True})
    out = accepting(prompt_embeds=embeds, num_inference_steps=1, output_type="np")
    assert len(out.prompt_verdicts) == 1 and not out.prompt_verdicts[0].flagged


def test_prompt_deadline():
    for name in safeguard.available_presets():
        assert resolve_settings(name).prompt.deadline_s == 10.0
    assert resolve_settings(config={"prompt": {"deadline_s": 2}}).prompt.deadline_s == 2.0
    assert resolve_settings(config={"prompt": {"deadline_s": None}}).prompt.deadline_s is None
    for bad in (0, -1, True, "fast", math.inf, math.nan):
        with pytest.raises(ConfigError, match=r"prompt\.deadline_s must be a positive number of seconds or null"):
            resolve_settings(config={"prompt": {"deadline_s": bad}})


def test_only_balanced_steers_the_steer_band():
    balanced = resolve_settings("balanced").steering
    assert balanced.enabled and balanced.strength == "weak"
    for name in ("strict", "research"):
        assert not resolve_settings(name).steering.enabled, name


def test_a_preset_file_is_named_by_its_path_not_by_a_bundled_name(tmp_path):
    fake = tmp_path / "strict.yaml"
    fake.write_text("prompt: {enabled: false}\noutput: {redaction: flag}\n", encoding="utf-8")
    settings = resolve_settings(fake)
    assert settings.preset == str(fake) and not settings.locks
