"""The policy as data: categories with their clauses, concepts and keywords.

A policy file maps every clause of a usage policy to a category (or lists it as out of scope with a reason).
The default is the Stability AI Acceptable Use Policy, ``stability-aup-2025-07-31``.

Example:
    >>> import safeguard
    >>> policy = safeguard.load_policy()
    >>> policy.id, policy["sexual"].applies_to
    ('stability-aup-2025-07-31', ('prompt', 'image'))
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safeguard._files import bundled, bundled_names, check_keys, read_yaml, string_list
from safeguard.errors import ConfigError

__all__ = [
    "DEFAULT_POLICY",
    "Category",
    "Clause",
    "Conjunction",
    "ImageModel",
    "Policy",
    "Signal",
    "available_policies",
    "load_policy",
]

DEFAULT_POLICY = "stability-aup-2025-07-31"
APPLIES_TO = ("prompt", "image", "disclosure", "process")


@dataclass(frozen=True)
class Clause:
    """One bullet of the policy text, quoted verbatim, with a short reference such as ``child-1``."""

    ref: str
    text: str


@dataclass(frozen=True)
class Category:
    """A group of policy clauses enforced together.

    ``applies_to`` says where it is enforced (prompt, image, disclosure, process); an out-of-scope category
    applies nowhere and says why in ``out_of_scope``. A ``locked`` category's rules run under every preset
    with every stage off.
    """

    id: str
    name: str
    section: str
    clauses: tuple[Clause, ...]
    applies_to: tuple[str, ...]
    concepts: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    allow_phrases: tuple[str, ...] = ()
    locked: bool = False
    out_of_scope: str | None = None

    @property
    def enforced(self) -> bool:
        return self.out_of_scope is None


@dataclass(frozen=True)
class Signal:
    """A keyword group that is not prohibited alone but takes part in conjunctions (a minor, suggestive words).

    ``include_categories`` adds those categories' keywords; ``age_below`` makes "N year old" with N below it
    a match.
    """

    id: str
    name: str
    keywords: tuple[str, ...] = ()
    include_categories: tuple[str, ...] = ()
    age_below: int | None = None


@dataclass(frozen=True)
class Conjunction:
    """A rule that fires ``category`` when every signal or category in ``all_of`` is present."""

    id: str
    category: str
    all_of: tuple[str, ...]
    locked: bool = False


@dataclass(frozen=True)
class ImageModel:
    """An image model the policy names for its output stage (e.g. the toy world's CLIP).

    A model trained on a narrow world knows only that world's everyday content: ``neutral_concepts`` and
    ``templates``, when given, replace the preset's ``output.clip`` lists whenever this model is the one in use.
    """

    backend: str
    path: Path
    neutral_concepts: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    """A versioned policy: categories, signals and conjunctions, loaded from YAML.

    Index it by category id: ``policy["sexual"]``.
    """

    id: str
    version: str
    title: str
    categories: tuple[Category, ...]
    signals: tuple[Signal, ...] = ()
    conjunctions: tuple[Conjunction, ...] = ()
    image_model: ImageModel | None = None
    #: Calibrations of text encoders for prompt scoring (:mod:`safeguard.stages.encoder`), resolved paths.
    encoder_calibrations: tuple[Path, ...] = ()
    source: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        ids = [c.id for c in self.categories]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ConfigError(f"{self._where}: duplicate category ids {duplicates}")
        known = set(ids) | {s.id for s in self.signals}
        for signal in self.signals:
            for name in signal.include_categories:
                if name not in ids:
                    raise ConfigError(f"{self._where}: signal {signal.id!r} includes unknown category {name!r}")
        for rule in self.conjunctions:
            if rule.category not in ids:
                raise ConfigError(f"{self._where}: conjunction {rule.id!r} names unknown category {rule.category!r}")
            for name in rule.all_of:
                if name not in known:
                    raise ConfigError(f"{self._where}: conjunction {rule.id!r} uses unknown signal {name!r}")

    @property
    def _where(self) -> str:
        return str(self.path) if self.path else f"policy {self.id!r}"

    def __getitem__(self, category_id: str) -> Category:
        for category in self.categories:
            if category.id == category_id:
                return category
        raise KeyError(category_id)

    def __contains__(self, category_id: object) -> bool:
        return any(c.id == category_id for c in self.categories)

    def __iter__(self) -> Iterator[Category]:
        return iter(self.categories)

    def enforced(self, where: str) -> tuple[Category, ...]:
        """Categories enforced at ``where`` (``"prompt"``, ``"image"``, ...)."""
        if where not in APPLIES_TO:
            raise ValueError(f"unknown enforcement point {where!r}; expected one of {APPLIES_TO}")
        return tuple(c for c in self.categories if where in c.applies_to)

    def signal(self, signal_id: str) -> Signal:
        for signal in self.signals:
            if signal.id == signal_id:
                return signal
        raise KeyError(signal_id)

    @property
    def locked_categories(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.categories if c.locked)


def available_policies() -> list[str]:
    """Ids of the policies bundled with safeguard.

    Example:
        >>> "stability-aup-2025-07-31" in available_policies()
        True
    """
    return bundled_names("policies")


def load_policy(policy: Policy | str | Path = DEFAULT_POLICY) -> Policy:
    """Load a policy from a bundled id or a YAML path; a ``Policy`` is returned as is.

    Raises:
        ConfigError: unknown id, unreadable file, unknown key or inconsistent references.

    Example:
        >>> load_policy("stability-aup-2025-07-31").version
        '2025-07-31.1'
    """
    if isinstance(policy, Policy):
        return policy
    if not isinstance(policy, str | Path):
        raise ConfigError(f"policy must be a Policy, a policy id or a path, not {type(policy).__name__}")
    path = Path(policy)
    if not path.suffix:
        found = bundled("policies", str(policy))
        if found is None:
            raise ConfigError(f"unknown policy id {str(policy)!r}; bundled: {', '.join(available_policies())}")
        path = found
    return _parse_policy(read_yaml(path), path)


_POLICY_KEYS = (
    "id", "version", "title", "source", "image_model", "encoder_calibrations", "categories", "signals", "conjunctions",
)  # fmt: skip
_CATEGORY_KEYS = (
    "id", "name", "section", "clauses", "applies_to", "concepts", "keywords", "allow_phrases", "locked",
    "out_of_scope",
)  # fmt: skip


def _parse_policy(data: dict[str, Any], path: Path) -> Policy:
    where = str(path)
    check_keys(data, _POLICY_KEYS, where, required=("id", "version", "title", "categories"))
    if not isinstance(data["categories"], list) or not data["categories"]:
        raise ConfigError(f"{where}: categories must be a non-empty list")
    categories = tuple(_parse_category(c, f"{where}: categories[{i}]") for i, c in enumerate(data["categories"]))
    signals = tuple(_parse_signal(s, f"{where}: signals[{i}]") for i, s in enumerate(data.get("signals") or []))
    conjunctions = tuple(
        _parse_conjunction(c, f"{where}: conjunctions[{i}]") for i, c in enumerate(data.get("conjunctions") or [])
    )
    image_model = None
    if data.get("image_model") is not None:
        spec = data["image_model"]
        check_keys(
            spec, ("backend", "path", "neutral_concepts", "templates"), f"{where}: image_model", ("backend", "path")
        )
        lists = {
            name: string_list(spec.get(name), f"{where}: image_model.{name}")
            for name in ("neutral_concepts", "templates")
        }
        if any(t.count("{}") != 1 for t in lists["templates"]):
            raise ConfigError(f"{where}: image_model.templates: each template needs exactly one '{{}}'")
        image_model = ImageModel(
            backend=str(spec["backend"]), path=(path.parent / str(spec["path"])).resolve(), **lists
        )
    calibrations = string_list(data.get("encoder_calibrations") or [], f"{where}: encoder_calibrations")
    source = data.get("source") or {}
    check_keys(source, ("document", "effective", "url"), f"{where}: source")
    return Policy(
        id=str(data["id"]),
        version=str(data["version"]),
        title=str(data["title"]),
        categories=categories,
        signals=signals,
        conjunctions=conjunctions,
        image_model=image_model,
        encoder_calibrations=tuple((path.parent / c).resolve() for c in calibrations),
        source={k: str(v) for k, v in source.items()},
        path=path,
    )


def _parse_category(data: Any, where: str) -> Category:
    check_keys(data, _CATEGORY_KEYS, where, required=("id", "name", "section", "clauses", "applies_to"))
    where = f"{where} ({data['id']})"
    clauses = []
    for i, clause in enumerate(data["clauses"] or []):
        check_keys(clause, ("ref", "clause"), f"{where}: clauses[{i}]", required=("ref", "clause"))
        clauses.append(Clause(ref=str(clause["ref"]), text=str(clause["clause"]).strip()))
    if not clauses:
        raise ConfigError(f"{where}: a category must quote at least one clause")
    applies_to = string_list(data["applies_to"], f"{where}: applies_to")
    unknown = [a for a in applies_to if a not in APPLIES_TO]
    if unknown:
        raise ConfigError(f"{where}: applies_to has unknown values {unknown}; allowed: {list(APPLIES_TO)}")
    out_of_scope = data.get("out_of_scope")
    if bool(applies_to) == bool(out_of_scope):
        raise ConfigError(f"{where}: give either applies_to or an out_of_scope reason, not both or neither")
    return Category(
        id=str(data["id"]),
        name=str(data["name"]),
        section=str(data["section"]),
        clauses=tuple(clauses),
        applies_to=applies_to,
        concepts=string_list(data.get("concepts"), f"{where}: concepts"),
        keywords=string_list(data.get("keywords"), f"{where}: keywords"),
        allow_phrases=string_list(data.get("allow_phrases"), f"{where}: allow_phrases"),
        locked=bool(data.get("locked", False)),
        out_of_scope=str(out_of_scope).strip() if out_of_scope else None,
    )


def _parse_signal(data: Any, where: str) -> Signal:
    check_keys(data, ("id", "name", "keywords", "include_categories", "age_below"), where, required=("id", "name"))
    age_below = data.get("age_below")
    if age_below is not None and (not isinstance(age_below, int) or age_below <= 0):
        raise ConfigError(f"{where}: age_below must be a positive integer")
    return Signal(
        id=str(data["id"]),
        name=str(data["name"]),
        keywords=string_list(data.get("keywords"), f"{where}: keywords"),
        include_categories=string_list(data.get("include_categories"), f"{where}: include_categories"),
        age_below=age_below,
    )


def _parse_conjunction(data: Any, where: str) -> Conjunction:
    check_keys(data, ("id", "category", "all_of", "locked"), where, required=("id", "category", "all_of"))
    all_of = string_list(data["all_of"], f"{where}: all_of")
    if len(all_of) < 2:
        raise ConfigError(f"{where}: all_of needs at least two signals or categories")
    return Conjunction(
        id=str(data["id"]), category=str(data["category"]), all_of=all_of, locked=bool(data.get("locked", False))
    )
