"""Steering presets as data: ``configs/steering/{weak,medium,strong,max}.yaml``.

Every parameter, its range and what it costs:

=========================  ===========  ==================================================================
parameter                  range        meaning (cost)
=========================  ===========  ==================================================================
projection.enabled         bool         project the flagged prompts' embeddings out of the concept subspace
                                        (no extra denoiser pass; the concept bank costs a few text-encoder
                                        passes once per pipeline and sequence length, then it is cached)
projection.alpha           [0, 2]       how much of the concept component to remove: 1 brings the token to
                                        the empty prompt's level, above 1 pushes it past (anti-concept)
projection.token_threshold [0, 1]       a token is projected when this share of its deviation from the
                                        empty prompt lies in the concept subspace (0: every token)
projection.energy          (0, 1]       the subspace keeps the fewest directions holding this share of the
                                        concept differences' energy
projection.max_rank        [1, 64]      at most this many directions per category
guidance.enabled           bool         SLD-style safety guidance in the denoising loop. Cost: one extra
                                        batch row per flagged image and step for CFG models (SD 1.x/2.x,
                                        SDXL, SD3: 3 rows instead of 2), two for Flux or guidance_scale <= 1
                                        (concept row and empty-prompt row: 3 rows instead of 1)
guidance.scale             [0, 1e5]     s_S: sharpness of the element-wise mask min(1, s_S |e_p - e_S|)
guidance.threshold         [-1, 1]      lambda: the mask is zero where e_p - e_S >= lambda
guidance.weight            [0, 5]       w: the safety term is w * mask * (e_S - e_ref); 1 is SLD, more
                                        pushes past the unconditional prediction, away from the concept
guidance.warmup            [0, 1)       share of the steps before the term is applied (momentum builds)
guidance.momentum          [0, 1]       s_m: momentum scale
guidance.momentum_beta     [0, 1)       beta_m: momentum decay
=========================  ===========  ==================================================================

Example:
    >>> preset = load_steering_preset("medium")
    >>> preset.guidance.enabled, preset.guidance.scale, preset.extra_rows(cfg=True)
    (True, 1000.0, 1)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safeguard._files import bundled, bundled_names, check_keys, read_yaml
from safeguard.errors import ConfigError

__all__ = ["GuidanceParams", "ProjectionParams", "SteeringPreset", "available_steering_presets", "load_steering_preset"]


@dataclass(frozen=True)
class ProjectionParams:
    """Embedding projection parameters; see the module table."""

    enabled: bool = True
    alpha: float = 1.0
    token_threshold: float = 0.2
    energy: float = 0.9
    max_rank: int = 8


@dataclass(frozen=True)
class GuidanceParams:
    """Safety guidance parameters (SLD, Schramowski et al. CVPR 2023, eqs. 3-8); see the module table."""

    enabled: bool = True
    scale: float = 1000.0
    threshold: float = 0.01
    weight: float = 1.0
    warmup: float = 0.2
    momentum: float = 0.3
    momentum_beta: float = 0.4


@dataclass(frozen=True)
class SteeringPreset:
    """A named set of steering parameters."""

    name: str
    description: str
    projection: ProjectionParams
    guidance: GuidanceParams

    def extra_rows(self, cfg: bool) -> int:
        """Extra denoiser batch rows per flagged image and step (0 for projection alone)."""
        if not self.guidance.enabled:
            return 0
        return 1 if cfg else 2


_RANGES: dict[str, dict[str, tuple[float, float, bool]]] = {
    # name: (low, high, high is inclusive)
    "projection": {"alpha": (0, 2, True), "token_threshold": (0, 1, True), "energy": (0, 1, True),
                   "max_rank": (1, 64, True)},
    "guidance": {"scale": (0, 1e5, True), "threshold": (-1, 1, True), "weight": (0, 5, True),
                 "warmup": (0, 1, False), "momentum": (0, 1, True), "momentum_beta": (0, 1, False)},
}  # fmt: skip


def available_steering_presets() -> list[str]:
    """Names of the bundled steering presets.

    Example:
        >>> available_steering_presets()
        ['max', 'medium', 'strong', 'weak']
    """
    return bundled_names("steering")


def load_steering_preset(name: str | Path) -> SteeringPreset:
    """Load a bundled steering preset by name (weak, medium, strong, max) or a YAML file by path.

    Raises:
        ConfigError: unknown name, unknown key or a value out of range.
    """
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        found = bundled("steering", str(name))
        if found is None:
            raise ConfigError(f"unknown steering preset {str(name)!r}; bundled: {available_steering_presets()}")
        path = found
    data = read_yaml(path)
    where = str(path)
    check_keys(data, ("description", "projection", "guidance"), where, required=("projection", "guidance"))
    sections: dict[str, Any] = {}
    for section, cls in (("projection", ProjectionParams), ("guidance", GuidanceParams)):
        raw = data[section]
        check_keys(raw, ("enabled", *_RANGES[section]), f"{where}: {section}")
        values = {}
        for key, value in raw.items():
            here = f"{where}: {section}.{key}"
            if key == "enabled":
                if not isinstance(value, bool):
                    raise ConfigError(f"{here}: expected true or false, got {value!r}")
            else:
                low, high, inclusive = _RANGES[section][key]
                ok = not isinstance(value, bool) and isinstance(value, int | float)
                ok = ok and low <= value and (value <= high if inclusive else value < high)
                if key == "energy":
                    ok = ok and value > 0
                if key == "max_rank":
                    ok = ok and isinstance(value, int)
                if not ok:
                    raise ConfigError(f"{here}: expected a number in [{low}, {high}{']' if inclusive else ')'}")
                value = value if key == "max_rank" else float(value)
            values[key] = value
        sections[section] = cls(**values)
    return SteeringPreset(path.stem, str(data.get("description", "")), sections["projection"], sections["guidance"])
