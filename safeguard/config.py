"""Presets and settings: how strictly a policy is enforced.

Layers, lowest first: built-in defaults < preset (``configs/presets/<name>.yaml``) < user file < keyword
overrides. Every layer is checked against the schema of the built-in defaults; an unknown key is a
:class:`~safeguard.errors.ConfigError` naming the key and the file it came from.

Example:
    >>> from safeguard.config import resolve_settings
    >>> s = resolve_settings(preset="research", output=False)
    >>> s.preset, s.output.enabled, s.prompt.enabled
    ('research', False, True)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from safeguard._files import bundled, bundled_names, check_keys, read_yaml
from safeguard.errors import ConfigError

__all__ = [
    "DEFAULT_PRESET",
    "ON_BLOCK",
    "OVERRIDES",
    "REDACTIONS",
    "STEERING_STRENGTHS",
    "ClipSettings",
    "OpenClipSettings",
    "OutputSettings",
    "PromptSettings",
    "Settings",
    "SteeringSettings",
    "Thresholds",
    "available_presets",
    "resolve_settings",
]

DEFAULT_PRESET = "balanced"
ON_BLOCK = ("raise", "return")
REDACTIONS = ("withhold", "blur", "pixelate", "black", "flag", "raise")
STEERING_STRENGTHS = ("weak", "medium", "strong", "max")
#: Keyword overrides accepted by protect() and the check_* functions, next to ``preset`` and ``config``.
OVERRIDES = ("prompt", "steering", "output", "on_block", "redaction", "image_model")

# The schema of every layer: a layer may set any of these keys and no other.
_DEFAULTS: dict[str, Any] = {
    "description": "",
    "allow_toggles": True,
    "on_block": "raise",
    "accept_prompt_embeds": True,
    "prompt": {
        "enabled": True,
        "max_chars": 20_000,
        "thresholds": {"default": {"steer": 0.5, "block": 0.5}},
    },
    "steering": {"enabled": False, "strength": "medium"},
    "output": {
        "enabled": True,
        "backends": ["opennsfw"],
        "redaction": "blur",
        "thresholds": {"default": {"block": 0.8}},
        # Per-category redaction overriding ``redaction`` (category id -> withhold|blur|pixelate|black|flag).
        "category_redaction": {},
        # An image conjunction (a minor with sexual content) fires when each part scores at least this.
        "conjunction_threshold": 0.5,
        "clip": {
            "weights": None,
            "templates": ["{}", "a photo of {}", "an image of {}", "a drawing of {}"],
            "neutral_concepts": [
                "a photo",
                "a landscape",
                "a portrait of a person",
                "a group of people",
                "an animal",
                "a building",
                "food",
                "an object",
                "a vehicle",
                "a drawing",
                "a painting",
                "a page of text",
                "a logo",
                "an abstract pattern",
                "a diagram",
                "a scientific image",
                "a microscope image",
            ],
            "minor_concepts": ["a child", "a young girl", "a young boy", "a toddler", "a baby", "a schoolchild"],
        },
        "openclip": {"model": "ViT-L-14", "weights": None},
        "compvis": {"weights": None},
        "nudenet": {"min_score": 0.5, "min_skin": 0.1},
    },
}
_THRESHOLD_KEYS = ("steer", "block")
_CATEGORY_REDACTIONS = ("withhold", "blur", "pixelate", "black", "flag")
_USER_FILE_KEYS = ("preset",)


@dataclass(frozen=True)
class Thresholds:
    """Per-category thresholds of one stage: ``steer`` (may be None: no steer band) and ``block``.

    A layer may set ``block: null``: the stage never blocks that category, so a score at or above ``steer``
    is steered instead (``block`` is then ``math.inf``).
    """

    default_steer: float | None
    default_block: float
    per_category: Mapping[str, tuple[float | None, float]] = field(default_factory=dict)

    def for_category(self, category: str) -> tuple[float | None, float]:
        """(steer, block) thresholds for ``category``."""
        return self.per_category.get(category, (self.default_steer, self.default_block))


@dataclass(frozen=True)
class PromptSettings:
    enabled: bool
    max_chars: int
    thresholds: Thresholds


@dataclass(frozen=True)
class SteeringSettings:
    enabled: bool
    strength: str


@dataclass(frozen=True)
class ClipSettings:
    """The zero-shot CLIP checker: weights (a path, a loaded model or None), prompt templates, concept sets."""

    weights: Any = None
    templates: tuple[str, ...] = ("{}",)
    neutral_concepts: tuple[str, ...] = ()
    minor_concepts: tuple[str, ...] = ()


@dataclass(frozen=True)
class OpenClipSettings:
    """The open_clip checker: architecture name and weights (a checkpoint file or a cached pretrained tag)."""

    model: str = "ViT-L-14"
    weights: Any = None


@dataclass(frozen=True)
class OutputSettings:
    enabled: bool
    backends: tuple[str, ...]
    redaction: str
    thresholds: Thresholds
    category_redaction: Mapping[str, str] = field(default_factory=dict)
    conjunction_threshold: float = 0.5
    clip: ClipSettings = field(default_factory=ClipSettings)
    openclip: OpenClipSettings = field(default_factory=OpenClipSettings)
    #: Folder of a diffusers checkpoint (or its ``safety_checker`` subfolder) for the ``compvis`` backend.
    compvis_weights: Any = None
    #: NudeNet: lowest detection confidence, and lowest skin-tone fraction inside a box, that count.
    nudenet_min_score: float = 0.5
    nudenet_min_skin: float = 0.1


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one protected pipeline or check call.

    ``layers`` names every layer that contributed, lowest first, for audit records.
    """

    preset: str
    description: str
    allow_toggles: bool
    on_block: str
    accept_prompt_embeds: bool
    prompt: PromptSettings
    steering: SteeringSettings
    output: OutputSettings
    layers: tuple[str, ...]

    @property
    def stages(self) -> tuple[str, ...]:
        """Names of the enabled stages."""
        flags = (("prompt", self.prompt.enabled), ("steering", self.steering.enabled), ("output", self.output.enabled))
        return tuple(name for name, on in flags if on)


def available_presets() -> list[str]:
    """Names of the bundled presets.

    Example:
        >>> available_presets()
        ['balanced', 'research', 'strict']
    """
    return bundled_names("presets")


def resolve_settings(
    preset: str | Path | None = None,
    config: str | Path | Mapping[str, Any] | None = None,
    *,
    policy_categories: tuple[str, ...] | None = None,
    **overrides: Any,
) -> Settings:
    """Resolve defaults < preset < user ``config`` file < keyword ``overrides`` into :class:`Settings`.

    ``preset`` is a bundled preset name or a path to a preset file; ``None`` means the user file's
    ``preset:`` key or, failing that, ``balanced``. Threshold entries for categories not in
    ``policy_categories`` are ignored. Overrides: ``prompt``/``output`` (bool), ``steering`` (bool or a
    strength name), ``on_block``, ``redaction`` and ``image_model`` (CLIP weights for the output stage:
    a folder, a cached hub id or a loaded model; never copied); a preset with ``allow_toggles: false`` rejects any
    override that weakens it.

    Raises:
        ConfigError: unknown preset, unknown key in any layer, bad value, or a forbidden override.
    """
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ConfigError(f"unknown keyword override(s) {unknown}; allowed: {', '.join(OVERRIDES)}, preset, config")

    merged = copy.deepcopy(_DEFAULTS)
    layers = ["defaults"]

    user: dict[str, Any] = {}
    user_where = ""
    if config is not None:
        if isinstance(config, Mapping):
            user, user_where = dict(config), "config mapping"
        else:
            user, user_where = read_yaml(config), str(config)
        if preset is None and "preset" in user:
            preset = user["preset"]

    preset_name, preset_path = _find_preset(preset if preset is not None else DEFAULT_PRESET)
    preset_data = read_yaml(preset_path)
    _validate_layer(preset_data, str(preset_path))
    _merge(merged, preset_data)
    layers.append(str(preset_path))

    if config is not None:
        user = {k: v for k, v in user.items() if k not in _USER_FILE_KEYS}
        _validate_layer(user, user_where)
        _merge(merged, user)
        layers.append(user_where)

    if overrides:
        _apply_overrides(merged, overrides, preset_name)
        layers.append("overrides: " + ", ".join(f"{k}={v!r}" for k, v in overrides.items()))

    return _build(merged, preset_name, tuple(layers), policy_categories)


def _find_preset(preset: Any) -> tuple[str, Path]:
    if not isinstance(preset, str | Path):
        raise ConfigError(f"preset must be a name or a path, not {type(preset).__name__}")
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        return path.stem, path
    found = bundled("presets", str(preset))
    if found is None:
        raise ConfigError(f"unknown preset {str(preset)!r}; bundled: {', '.join(available_presets())}")
    return str(preset), found


def _validate_layer(
    layer: Mapping[str, Any], where: str, schema: Mapping[str, Any] = _DEFAULTS, path: str = ""
) -> None:
    check_keys(layer, schema, f"{where}: {path}" if path else where)
    for key, value in layer.items():
        here = f"{path}.{key}" if path else key
        if key == "thresholds":
            _validate_thresholds(value, f"{where}: {here}")
        elif key == "category_redaction":
            if not isinstance(value, Mapping) or any(v not in _CATEGORY_REDACTIONS for v in value.values()):
                raise ConfigError(f"{where}: {here}: expected category id -> one of {', '.join(_CATEGORY_REDACTIONS)}")
        elif key == "weights":
            continue  # a path or a loaded model, checked when the backend loads it
        elif isinstance(schema[key], dict):
            _validate_layer(value, where, schema[key], here)


def _validate_thresholds(value: Any, where: str) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping of category id to thresholds")
    for category, entry in value.items():
        check_keys(entry, _THRESHOLD_KEYS, f"{where}.{category}")
        for name, number in entry.items():
            if number is None:  # steer: no steer band; block: never block, only steer
                continue
            if isinstance(number, bool) or not isinstance(number, int | float) or not 0.0 <= number <= 1.0:
                raise ConfigError(f"{where}.{category}.{name}: expected a number in [0, 1], got {number!r}")


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            # Weights may be a loaded model: keep the user's object, never a copy of it.
            base[key] = value if key == "weights" else copy.deepcopy(value)


def _apply_overrides(merged: dict[str, Any], overrides: Mapping[str, Any], preset: str) -> None:
    strict = not merged["allow_toggles"]

    def forbid(name: str, value: Any) -> None:
        raise ConfigError(
            f"preset {preset!r} does not allow the override {name}={value!r} (allow_toggles is false); "
            "use a preset that allows toggles, such as 'research'"
        )

    for name in ("prompt", "output"):
        if name in overrides:
            value = overrides[name]
            if not isinstance(value, bool):
                raise ConfigError(f"override {name}= must be True or False, got {value!r}")
            if strict and merged[name]["enabled"] and not value:
                forbid(name, value)
            merged[name]["enabled"] = value
    if "steering" in overrides:
        value = overrides["steering"]
        if isinstance(value, bool):
            if strict and merged["steering"]["enabled"] and not value:
                forbid("steering", value)
            merged["steering"]["enabled"] = value
        elif isinstance(value, str):
            merged["steering"].update(enabled=True, strength=value)
        else:
            raise ConfigError(f"override steering= must be a bool or one of {STEERING_STRENGTHS}, got {value!r}")
    if "on_block" in overrides:
        if strict and overrides["on_block"] != merged["on_block"]:
            forbid("on_block", overrides["on_block"])
        merged["on_block"] = overrides["on_block"]
    if "image_model" in overrides:
        # CLIP weights for the output stage: a folder, a loaded CLIPModel or an encoder (never copied).
        merged["output"]["clip"]["weights"] = overrides["image_model"]
    if "redaction" in overrides:
        if strict and overrides["redaction"] == "flag":
            forbid("redaction", "flag")
        merged["output"]["redaction"] = overrides["redaction"]


def _thresholds(raw: Mapping[str, Any], where: str, categories: tuple[str, ...] | None) -> Thresholds:
    default = raw.get("default", {})
    if "block" not in default:
        raise ConfigError(f"{where}.default: a block threshold is required")
    default_steer = default.get("steer")
    default_block = math.inf if default["block"] is None else default["block"]
    per_category: dict[str, tuple[float | None, float]] = {}
    for category, entry in raw.items():
        if category == "default" or (categories is not None and category not in categories):
            continue
        block = entry.get("block", default_block)
        per_category[category] = (entry.get("steer", default_steer), math.inf if block is None else block)
    thresholds = Thresholds(default_steer, default_block, MappingProxyType(per_category))
    for category, (steer, block) in [("default", (default_steer, default_block)), *per_category.items()]:
        if steer is not None and steer > block:
            raise ConfigError(f"{where}.{category}: steer threshold {steer} is above block threshold {block}")
    return thresholds


def _build(
    merged: dict[str, Any], preset: str, layers: tuple[str, ...], categories: tuple[str, ...] | None
) -> Settings:
    def choice(value: Any, allowed: tuple[str, ...], name: str) -> str:
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        return value

    def flag(value: Any, name: str) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value

    prompt, steering, output = merged["prompt"], merged["steering"], merged["output"]
    max_chars = prompt["max_chars"]
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars <= 0:
        raise ConfigError(f"prompt.max_chars must be a positive integer, got {max_chars!r}")
    backends = output["backends"]
    if not isinstance(backends, list) or not all(isinstance(b, str) for b in backends):
        raise ConfigError(f"output.backends must be a list of backend names, got {backends!r}")
    return Settings(
        preset=preset,
        description=str(merged["description"]),
        allow_toggles=flag(merged["allow_toggles"], "allow_toggles"),
        on_block=choice(merged["on_block"], ON_BLOCK, "on_block"),
        accept_prompt_embeds=flag(merged["accept_prompt_embeds"], "accept_prompt_embeds"),
        prompt=PromptSettings(
            enabled=flag(prompt["enabled"], "prompt.enabled"),
            max_chars=max_chars,
            thresholds=_thresholds(prompt["thresholds"], "prompt.thresholds", categories),
        ),
        steering=SteeringSettings(
            enabled=flag(steering["enabled"], "steering.enabled"),
            strength=choice(steering["strength"], STEERING_STRENGTHS, "steering.strength"),
        ),
        output=OutputSettings(
            enabled=flag(output["enabled"], "output.enabled"),
            backends=tuple(backends),
            redaction=choice(output["redaction"], REDACTIONS, "output.redaction"),
            thresholds=_thresholds(output["thresholds"], "output.thresholds", categories),
            category_redaction=MappingProxyType(dict(output["category_redaction"])),
            conjunction_threshold=_unit(output["conjunction_threshold"], "output.conjunction_threshold"),
            clip=_clip_settings(output["clip"]),
            openclip=OpenClipSettings(model=str(output["openclip"]["model"]), weights=output["openclip"]["weights"]),
            compvis_weights=output["compvis"]["weights"],
            nudenet_min_score=_unit(output["nudenet"]["min_score"], "output.nudenet.min_score"),
            nudenet_min_skin=_unit(output["nudenet"]["min_skin"], "output.nudenet.min_skin"),
        ),
        layers=layers,
    )


def _unit(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _clip_settings(raw: Mapping[str, Any]) -> ClipSettings:
    lists = {}
    for name in ("templates", "neutral_concepts", "minor_concepts"):
        value = raw[name]
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise ConfigError(f"output.clip.{name} must be a list of non-empty strings, got {value!r}")
        lists[name] = tuple(value)
    bad = [t for t in lists["templates"] if t.count("{}") != 1]
    if bad or not lists["templates"]:
        raise ConfigError(f"output.clip.templates: each template needs exactly one '{{}}', got {bad or '[]'}")
    return ClipSettings(weights=raw["weights"], **lists)
