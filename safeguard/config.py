"""Presets and settings: how strictly a policy is enforced.

Layers, lowest first: built-in defaults < preset (``configs/presets/<name>.yaml``) < user file or mapping
(``config=``) < keyword overrides. Every layer is checked against the schema of the built-in defaults; an unknown key
is a :class:`~safeguard.errors.ConfigError` naming the key and the file it came from, and so is a category id the
policy does not have (with the closest ids as suggestions).

A preset may lock settings with a ``locks:`` list of dotted setting names (:data:`LOCKABLE`). A later layer may make
a locked setting stricter but never weaker; one that tries is a ConfigError naming the setting, the preset and the
layer. How each setting gets stricter is fixed here, not in the preset: thresholds and limits may be lowered but not
raised or set to null, redaction may only get more severe, backends may be added but not removed, and a stage that is
on stays on. The resolved :class:`Settings` list what is locked, with the preset's values, in ``locks``.

Example:
    >>> from safeguard.config import resolve_settings
    >>> s = resolve_settings(preset="research", output=False)
    >>> s.preset, s.output.enabled, s.prompt.enabled
    ('research', False, True)
    >>> resolve_settings("strict").locks["output.redaction"].bound["default"]
    'withhold'
"""

from __future__ import annotations

import copy
import difflib
import functools
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from safeguard._files import bundled, bundled_names, check_keys, read_yaml
from safeguard.errors import ConfigError
from safeguard.policy import DEFAULT_POLICY, available_policies, load_policy

__all__ = [
    "CALL_TOGGLES",
    "DEFAULT_PRESET",
    "LOCKABLE",
    "ON_BLOCK",
    "OVERRIDES",
    "PROMPT_STRICTNESS",
    "REDACTIONS",
    "REDACTION_SEVERITY",
    "STEERING_STRENGTHS",
    "ClipSettings",
    "DisclosureSettings",
    "Lock",
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
#: How strict calibrated scorers are, weakest first: each scorer ships its thresholds for every level.
PROMPT_STRICTNESS = ("balanced", "strict")
#: Values of ``prompt.unjudged_language``, least strict first.
UNJUDGED_LANGUAGE = ("allow", "block")
#: Keyword overrides accepted by protect() and the check_* functions, next to ``preset`` and ``config``.
OVERRIDES = ("prompt", "steering", "output", "on_block", "redaction", "image_model", "disclosure")
#: The overrides a protected call may also take per call, as ``pipe(..., safeguard={...})``, where the preset allows.
CALL_TOGGLES = ("prompt", "steering", "output", "on_block", "redaction", "disclosure")

# The schema of every layer: a layer may set any of these keys and no other.
_DEFAULTS: dict[str, Any] = {
    "description": "",
    "on_block": "raise",
    # Embeddings without text escape the keyword and semantic rules; only a user layer may accept them.
    "accept_prompt_embeds": False,
    "prompt": {
        "enabled": True,
        "max_chars": 20_000,
        # Seconds one prompt-stage check may take; null: no deadline.
        "deadline_s": 10.0,
        # Which of the calibrated scorers' own thresholds apply (PROMPT_STRICTNESS). In ``thresholds`` below,
        # ``default`` is the keyword rules' (a hit scores 1.0); a category entry also replaces the scorers' own.
        "strictness": "balanced",
        "thresholds": {"default": {"steer": 0.5, "block": 0.5}},
        # A prompt in a language the policy does not judge (safeguard.language): allow or block.
        "unjudged_language": "allow",
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
    # Disclosure (safeguard.disclosure): an invisible watermark on every returned image.
    "disclosure": {
        "enabled": False,
        # 0..65535, carried in the watermark next to the fixed marker: which deployment made the image.
        "generator_id": 0,
    },
}
_THRESHOLD_KEYS = ("steer", "block")
_CATEGORY_REDACTIONS = ("withhold", "blur", "pixelate", "black", "flag")
_USER_FILE_KEYS = ("preset",)
# The settings keyed by category id, as (section, key).
_BY_CATEGORY = (("prompt", "thresholds"), ("output", "thresholds"), ("output", "category_redaction"))


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
    #: Seconds one prompt-stage check may take; None: no deadline.
    deadline_s: float | None
    #: The keyword rules' thresholds (a hit scores 1.0); calibrated scorers carry their own, which a category
    #: entry here replaces.
    thresholds: Thresholds
    #: Which of the calibrated scorers' own thresholds apply (:data:`PROMPT_STRICTNESS`).
    strictness: str = "balanced"
    #: What happens to a prompt in a language the policy does not judge: ``allow`` (the keyword rules still
    #: run on it) or ``block`` (a finding naming the language). See :mod:`safeguard.language`.
    unjudged_language: str = "allow"


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
class DisclosureSettings:
    """The watermark on returned images: on or off, and the 16-bit generator id it carries."""

    enabled: bool = False
    generator_id: int = 0


@dataclass(frozen=True)
class Lock:
    """A setting its preset locks: ``bound`` is the preset's value, and later layers may only be stricter.

    ``rule`` says in words how the setting may change. For ``output.redaction`` the bound maps ``default``
    and each category with its own redaction to the method.

    Example:
        >>> lock = resolve_settings("strict").locks["output.backends"]
        >>> lock.bound, lock.rule
        (('opennsfw', 'nudenet'), 'backends may be added, not removed')
    """

    setting: str
    rule: str
    bound: Any


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one protected pipeline or check call.

    ``layers`` names every layer that contributed, lowest first, for audit records; ``locks`` maps each
    setting the preset locks to its :class:`Lock`.
    """

    preset: str
    description: str
    on_block: str
    accept_prompt_embeds: bool
    prompt: PromptSettings
    steering: SteeringSettings
    output: OutputSettings
    layers: tuple[str, ...]
    locks: Mapping[str, Lock] = field(default_factory=dict)
    disclosure: DisclosureSettings = field(default_factory=DisclosureSettings)

    @property
    def stages(self) -> tuple[str, ...]:
        """Names of the enabled stages."""
        flags = (("prompt", self.prompt.enabled), ("steering", self.steering.enabled), ("output", self.output.enabled))
        return tuple(name for name, on in flags if on)


# -- locks ---------------------------------------------------------------------------------------------
# Each check gets (setting, value now, the preset's value) and returns one line per weakening it finds.
_Check = Callable[[str, Any, Any], list[str]]


def _show(value: Any) -> str:
    if value is None or value == math.inf:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return repr(value)


def _ranked(order: tuple[Any, ...]) -> _Check:
    """Weaker means earlier in ``order`` (weakest first) than the preset's value."""

    def check(setting: str, value: Any, bound: Any) -> list[str]:
        if order.index(value) >= order.index(bound):
            return []
        return [f"{setting} is {_show(value)}, weaker than the locked {_show(bound)}"]

    return check


def _same(setting: str, value: Any, bound: Any) -> list[str]:
    return [] if value == bound else [f"{setting} is {_show(value)}, not the locked {_show(bound)}"]


def _ceiling(setting: str, value: float | None, bound: float | None) -> list[str]:
    # None (no limit, no steer band) and inf (block: null) are the weakest values.
    def limit(x: float | None) -> float:
        return math.inf if x is None else x

    if limit(value) <= limit(bound):
        return []
    return [f"{setting} is {_show(value)}, above the locked {_show(bound)}"]


def _superset(setting: str, value: tuple[str, ...], bound: tuple[str, ...]) -> list[str]:
    missing = [x for x in bound if x not in value]
    return [f"{setting} drops {', '.join(map(repr, missing))} from the locked {_show(bound)}"] if missing else []


def _subset(setting: str, value: tuple[str, ...], bound: tuple[str, ...]) -> list[str]:
    added = [x for x in value if x not in bound]
    return [f"{setting} adds {', '.join(map(repr, added))} to the locked {_show(bound)}"] if added else []


def _threshold_ceilings(setting: str, value: Thresholds, bound: Thresholds) -> list[str]:
    found = []
    # "default" is never a per-category key, so for_category("default") reads the default pair.
    for category in ["default", *sorted(set(value.per_category) | set(bound.per_category))]:
        pairs = zip(_THRESHOLD_KEYS, value.for_category(category), bound.for_category(category), strict=True)
        for name, now, locked in pairs:
            found += _ceiling(f"{setting}.{category}.{name}", now, locked)
    return found


# The order redaction_plan (stages/combine.py) ranks redactions by, with raise (no image at all) above withhold.
#: Redactions from least to most severe ("raise" refuses the whole call): locks compare with it, and when
#: several blocked categories of one image ask for different redactions, the most severe wins.
REDACTION_SEVERITY = ("flag", "pixelate", "blur", "black", "withhold", "raise")


def _redactions(output: OutputSettings) -> Mapping[str, str]:
    return MappingProxyType({"default": output.redaction, **output.category_redaction})


def _redaction_floors(setting: str, value: Mapping[str, str], bound: Mapping[str, str]) -> list[str]:
    found = []
    for category in ["default", *sorted((set(value) | set(bound)) - {"default"})]:
        name = setting if category == "default" else f"output.category_redaction.{category}"
        now, locked = value.get(category, value["default"]), bound.get(category, bound["default"])
        found += _ranked(REDACTION_SEVERITY)(name, now, locked)
    return found


@dataclass(frozen=True)
class _Lockable:
    rule: str
    read: Callable[[Settings], Any]
    check: _Check


_LOWER = "may be lowered, not raised or set to null"
_LOCKABLE: dict[str, _Lockable] = {
    "on_block": _Lockable("may become raise, not return", lambda s: s.on_block, _ranked(("return", "raise"))),
    "accept_prompt_embeds": _Lockable(
        "may become false, not true", lambda s: s.accept_prompt_embeds, _ranked((True, False))
    ),
    "prompt.enabled": _Lockable("may be turned on, not off", lambda s: s.prompt.enabled, _ranked((False, True))),
    "prompt.max_chars": _Lockable("may be lowered, not raised", lambda s: s.prompt.max_chars, _ceiling),
    "prompt.deadline_s": _Lockable(_LOWER, lambda s: s.prompt.deadline_s, _ceiling),
    "prompt.strictness": _Lockable(
        "may be raised, not lowered: balanced < strict", lambda s: s.prompt.strictness, _ranked(PROMPT_STRICTNESS)
    ),
    "prompt.unjudged_language": _Lockable(
        "may become block, not allow", lambda s: s.prompt.unjudged_language, _ranked(UNJUDGED_LANGUAGE)
    ),
    "prompt.thresholds": _Lockable(
        f"every steer and block threshold, default and per category, {_LOWER}",
        lambda s: s.prompt.thresholds,
        _threshold_ceilings,
    ),
    # Neither direction is stricter in general: steering on steers what a preset without it blocks.
    "steering.enabled": _Lockable("stays as the preset sets it", lambda s: s.steering.enabled, _same),
    "steering.strength": _Lockable(
        "may be raised, not lowered: weak < medium < strong < max",
        lambda s: s.steering.strength,
        _ranked(STEERING_STRENGTHS),
    ),
    "output.enabled": _Lockable("may be turned on, not off", lambda s: s.output.enabled, _ranked((False, True))),
    "output.backends": _Lockable("backends may be added, not removed", lambda s: s.output.backends, _superset),
    "output.redaction": _Lockable(
        "at least as severe for every category, category_redaction included: "
        "flag < pixelate < blur < black < withhold < raise",
        lambda s: _redactions(s.output),
        _redaction_floors,
    ),
    "output.thresholds": _Lockable(
        f"every steer and block threshold, default and per category, {_LOWER}",
        lambda s: s.output.thresholds,
        _threshold_ceilings,
    ),
    "output.conjunction_threshold": _Lockable(_LOWER, lambda s: s.output.conjunction_threshold, _ceiling),
    "output.nudenet.min_score": _Lockable(_LOWER, lambda s: s.output.nudenet_min_score, _ceiling),
    "output.nudenet.min_skin": _Lockable(_LOWER, lambda s: s.output.nudenet_min_skin, _ceiling),
    # Concept phrases change what CLIP scores can reach; each neutral concept takes probability mass from
    # every category, each minor concept adds a way for the minor signal to fire.
    "output.clip.templates": _Lockable("stays as the preset sets it", lambda s: s.output.clip.templates, _same),
    "output.clip.neutral_concepts": _Lockable(
        "concepts may be removed, not added", lambda s: s.output.clip.neutral_concepts, _subset
    ),
    "disclosure.enabled": _Lockable(
        "may be turned on, not off", lambda s: s.disclosure.enabled, _ranked((False, True))
    ),
    "output.clip.minor_concepts": _Lockable(
        "concepts may be added, not removed", lambda s: s.output.clip.minor_concepts, _superset
    ),
}
#: The settings a preset may name under ``locks:``.
LOCKABLE = tuple(_LOCKABLE)


def _read_locks(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: locks: expected a list of setting names, got {value!r}")
    for name in value:
        if name not in _LOCKABLE:
            raise ConfigError(f"{where}: locks: {name!r} cannot be locked{_suggest(name, LOCKABLE)}")
    return tuple(dict.fromkeys(value))


def _enforce_locks(settings: Settings, layer: str) -> None:
    weaker = [
        f"{line} ({_LOCKABLE[name].rule})"
        for name, lock in settings.locks.items()
        for line in _LOCKABLE[name].check(name, _LOCKABLE[name].read(settings), lock.bound)
    ]
    if weaker:
        raise ConfigError(f"{layer} weakens what preset {settings.preset!r} locks: " + "; ".join(weaker))


# -- categories ----------------------------------------------------------------------------------------
@functools.cache
def _categories_of(policy: str) -> tuple[str, ...]:
    return tuple(c.id for c in load_policy(policy).categories)


def _bundled_categories() -> set[str]:
    return {c for policy in available_policies() for c in _categories_of(policy)}


def _suggest(name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=3)
    if close:
        return "; did you mean " + " or ".join(map(repr, close)) + "?"
    return f"; known: {', '.join(sorted(known))}"


def _category_entries(layer: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(section, key, category id) of every category-keyed entry in a validated layer."""
    return [
        (section, key, category)
        for section, key in _BY_CATEGORY
        for category in layer.get(section, {}).get(key, {})
        if not (key == "thresholds" and category == "default")
    ]


def _check_categories(layer: Mapping[str, Any], where: str, categories: tuple[str, ...]) -> None:
    for section, key, category in _category_entries(layer):
        if category not in categories:
            raise ConfigError(
                f"{where}: {section}.{key}.{category}: {category!r} is not a category of the policy in use"
                + _suggest(category, categories)
            )


def _preset_for_policy(layer: dict[str, Any], where: str, categories: tuple[str, ...]) -> dict[str, Any]:
    """The preset layer without its entries for categories of a bundled policy that the policy in use lacks.

    The bundled presets are written for the bundled policies; an id in none of them, nor in the policy in
    use, is a typo.
    """
    known = set(categories) | _bundled_categories()
    skipped = set()
    for section, key, category in _category_entries(layer):
        if category not in known:
            raise ConfigError(
                f"{where}: {section}.{key}.{category}: {category!r} is a category of neither the policy in use nor "
                "a bundled policy" + _suggest(category, known)
            )
        if category not in categories:
            skipped.add((section, key, category))
    layer = copy.deepcopy(layer)
    for section, key, category in skipped:
        del layer[section][key][category]
    return layer


# -- resolving -----------------------------------------------------------------------------------------
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
    """Resolve defaults < preset < user ``config`` file or mapping < keyword ``overrides`` into :class:`Settings`.

    ``preset`` is a bundled preset name or a path to a preset file; ``None`` means the user file's
    ``preset:`` key or, failing that, ``balanced``. ``policy_categories`` are the category ids of the policy in
    use (``None``: the default policy's). A category id in the user layer outside them is an error; a preset's
    entry for a category of a bundled policy that the policy in use lacks is skipped. Overrides:
    ``prompt``/``output`` (bool), ``steering`` (bool or a strength name), ``on_block``, ``redaction``,
    ``image_model`` (CLIP weights for the output stage: a folder, a cached hub id or a loaded model; never
    copied) and ``disclosure`` (bool: the watermark on returned images). A user layer or override that weakens
    a setting the preset locks is an error.

    Raises:
        ConfigError: unknown preset, unknown key or category in any layer, bad value, or a weakened lock.

    Example:
        >>> resolve_settings("strict", redaction="raise").output.redaction
        'raise'
        >>> resolve_settings("strict", redaction="blur")
        Traceback (most recent call last):
        ...
        safeguard.errors.ConfigError: overrides: redaction='blur' weakens what preset 'strict' locks: ...
    """
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ConfigError(f"unknown keyword override(s) {unknown}; allowed: {', '.join(OVERRIDES)}, preset, config")
    categories = _categories_of(DEFAULT_POLICY) if policy_categories is None else tuple(policy_categories)

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
    lock_names = _read_locks(preset_data.pop("locks", []), str(preset_path))
    _validate_layer(preset_data, str(preset_path))
    merged = copy.deepcopy(_DEFAULTS)
    _merge(merged, _preset_for_policy(preset_data, str(preset_path), categories))
    layers = ["defaults", str(preset_path)]
    settings = _build(merged, preset_name, tuple(layers))
    locks = {name: Lock(name, _LOCKABLE[name].rule, _LOCKABLE[name].read(settings)) for name in lock_names}
    settings = replace(settings, locks=MappingProxyType(locks))

    if config is not None:
        user = {k: v for k, v in user.items() if k not in _USER_FILE_KEYS}
        if "locks" in user:
            raise ConfigError(f"{user_where}: locks: only a preset can lock settings")
        _validate_layer(user, user_where)
        _check_categories(user, user_where, categories)
        _merge(merged, user)
        layers.append(user_where)
        settings = replace(_build(merged, preset_name, tuple(layers)), locks=settings.locks)
        _enforce_locks(settings, user_where)

    if overrides:
        _apply_overrides(merged, overrides)
        layers.append("overrides: " + ", ".join(f"{k}={v!r}" for k, v in overrides.items()))
        settings = replace(_build(merged, preset_name, tuple(layers)), locks=settings.locks)
        _enforce_locks(settings, layers[-1])
    return settings


def _find_preset(preset: Any) -> tuple[str, Path]:
    if not isinstance(preset, str | Path):
        raise ConfigError(f"preset must be a name or a path, not {type(preset).__name__}")
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        # Named by its path, so that a file called strict.yaml never reports itself as the bundled strict.
        return str(path), path
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


def _apply_overrides(merged: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for name in ("prompt", "output"):
        if name in overrides:
            value = overrides[name]
            if not isinstance(value, bool):
                raise ConfigError(f"override {name}= must be True or False, got {value!r}")
            merged[name]["enabled"] = value
    if "steering" in overrides:
        value = overrides["steering"]
        if isinstance(value, bool):
            merged["steering"]["enabled"] = value
        elif isinstance(value, str):
            merged["steering"].update(enabled=True, strength=value)
        else:
            raise ConfigError(f"override steering= must be a bool or one of {STEERING_STRENGTHS}, got {value!r}")
    if "on_block" in overrides:
        merged["on_block"] = overrides["on_block"]
    if "image_model" in overrides:
        # CLIP weights for the output stage: a folder, a loaded CLIPModel or an encoder (never copied).
        merged["output"]["clip"]["weights"] = overrides["image_model"]
    if "redaction" in overrides:
        merged["output"]["redaction"] = overrides["redaction"]
    if "disclosure" in overrides:
        value = overrides["disclosure"]
        if not isinstance(value, bool):
            raise ConfigError(f"override disclosure= must be True or False, got {value!r}")
        merged["disclosure"]["enabled"] = value


def _thresholds(raw: Mapping[str, Any], where: str) -> Thresholds:
    default = raw.get("default", {})
    if "block" not in default:
        raise ConfigError(f"{where}.default: a block threshold is required")
    default_steer = default.get("steer")
    default_block = math.inf if default["block"] is None else default["block"]
    per_category: dict[str, tuple[float | None, float]] = {}
    for category, entry in raw.items():
        if category == "default":
            continue
        block = entry.get("block", default_block)
        per_category[category] = (entry.get("steer", default_steer), math.inf if block is None else block)
    thresholds = Thresholds(default_steer, default_block, MappingProxyType(per_category))
    for category, (steer, block) in [("default", (default_steer, default_block)), *per_category.items()]:
        if steer is not None and steer > block:
            raise ConfigError(f"{where}.{category}: steer threshold {steer} is above block threshold {block}")
    return thresholds


def _build(merged: dict[str, Any], preset: str, layers: tuple[str, ...]) -> Settings:
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
    deadline = prompt["deadline_s"]
    if deadline is not None and (
        isinstance(deadline, bool) or not isinstance(deadline, int | float) or not 0.0 < deadline < math.inf
    ):
        raise ConfigError(f"prompt.deadline_s must be a positive number of seconds or null, got {deadline!r}")
    backends = output["backends"]
    if not isinstance(backends, list) or not all(isinstance(b, str) for b in backends):
        raise ConfigError(f"output.backends must be a list of backend names, got {backends!r}")
    return Settings(
        preset=preset,
        description=str(merged["description"]),
        on_block=choice(merged["on_block"], ON_BLOCK, "on_block"),
        accept_prompt_embeds=flag(merged["accept_prompt_embeds"], "accept_prompt_embeds"),
        prompt=PromptSettings(
            enabled=flag(prompt["enabled"], "prompt.enabled"),
            max_chars=max_chars,
            deadline_s=None if deadline is None else float(deadline),
            thresholds=_thresholds(prompt["thresholds"], "prompt.thresholds"),
            strictness=choice(prompt["strictness"], PROMPT_STRICTNESS, "prompt.strictness"),
            unjudged_language=choice(prompt["unjudged_language"], UNJUDGED_LANGUAGE, "prompt.unjudged_language"),
        ),
        steering=SteeringSettings(
            enabled=flag(steering["enabled"], "steering.enabled"),
            strength=choice(steering["strength"], STEERING_STRENGTHS, "steering.strength"),
        ),
        output=OutputSettings(
            enabled=flag(output["enabled"], "output.enabled"),
            backends=tuple(backends),
            redaction=choice(output["redaction"], REDACTIONS, "output.redaction"),
            thresholds=_thresholds(output["thresholds"], "output.thresholds"),
            category_redaction=MappingProxyType(dict(output["category_redaction"])),
            conjunction_threshold=_unit(output["conjunction_threshold"], "output.conjunction_threshold"),
            clip=_clip_settings(output["clip"]),
            openclip=OpenClipSettings(model=str(output["openclip"]["model"]), weights=output["openclip"]["weights"]),
            compvis_weights=output["compvis"]["weights"],
            nudenet_min_score=_unit(output["nudenet"]["min_score"], "output.nudenet.min_score"),
            nudenet_min_skin=_unit(output["nudenet"]["min_skin"], "output.nudenet.min_skin"),
        ),
        layers=layers,
        disclosure=_disclosure_settings(merged["disclosure"]),
    )


def _disclosure_settings(raw: Mapping[str, Any]) -> DisclosureSettings:
    generator_id = raw["generator_id"]
    if isinstance(generator_id, bool) or not isinstance(generator_id, int) or not 0 <= generator_id <= 0xFFFF:
        raise ConfigError(f"disclosure.generator_id must be an integer in 0..65535, got {generator_id!r}")
    enabled = raw["enabled"]
    if not isinstance(enabled, bool):
        raise ConfigError(f"disclosure.enabled must be true or false, got {enabled!r}")
    return DisclosureSettings(enabled=enabled, generator_id=generator_id)


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
