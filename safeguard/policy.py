"""The policy as data: categories with their clauses, concepts and keywords.

A policy file maps every clause of a usage policy to a category (or lists it as out of scope with a reason).
The default is the Stability AI Acceptable Use Policy, ``stability-aup-2025-07-31``.

Every policy must carry a locked child-safety rule (:data:`CHILD_SAFETY_RULE`): loading one without it is a
``ConfigError``, so no policy file can switch the rule off by leaving it out.

Example:
    >>> import safeguard
    >>> policy = safeguard.load_policy()
    >>> policy.id, policy["sexual"].applies_to
    ('stability-aup-2025-07-31', ('prompt', 'image'))
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safeguard._files import bundled, bundled_names, check_keys, read_yaml, string_list
from safeguard.errors import ConfigError

__all__ = [
    "CHILD_SAFETY_RULE",
    "DEFAULT_POLICY",
    "SEVERITY_LEVELS",
    "AgeLexicon",
    "Category",
    "Clause",
    "Conjunction",
    "ImageModel",
    "Policy",
    "SeverityLevel",
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


#: The levels of a category's severity, from prohibited to permitted (see :class:`SeverityLevel`).
SEVERITY_LEVELS = ("block", "steer", "permitted")


@dataclass(frozen=True)
class SeverityLevel:
    """Where a category's line falls at one level (``block``: prohibited, ``steer``: a borderline depiction,
    ``permitted``), in words and with example prompts. Calibration trains on the ``block`` and ``permitted``
    examples, and the tests check that the scorers decide them so."""

    line: str
    examples: tuple[str, ...]


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
    #: Keywords in other languages, ``(language, keywords)`` pairs, matched like ``keywords``. Only the rule
    #: stage reads them (``keywords`` stays the English seed list that calibration and steering use).
    languages: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: ``(level, SeverityLevel)`` pairs in the order of :data:`SEVERITY_LEVELS`; empty when the policy draws
    #: no lines for the category.
    severity: tuple[tuple[str, SeverityLevel], ...] = ()

    @property
    def enforced(self) -> bool:
        return self.out_of_scope is None

    @property
    def all_keywords(self) -> tuple[str, ...]:
        """``keywords`` and the keywords of every language."""
        return (*self.keywords, *(k for _, words in self.languages for k in words))


@dataclass(frozen=True)
class AgeLexicon:
    """How one language writes ages and school years, for a signal with ``age_below``.

    ``numbers`` and ``ordinals`` are ``(word, value)`` pairs ("twelve" 12, "fifth" 5); digits always count as
    numbers. ``ages`` are patterns where ``{n}`` is a number ("{n} year|years old", "{n}yo", "aged {n}");
    ``grades`` are school-year patterns with ``{n}`` or ``{nth}`` ("{nth} grade|grader"). In a pattern, words
    are separated by spaces and match words of the normalised prompt whatever separated them there ("12-year-old",
    "12_year_old"); ``a|b`` is either word and a trailing ``*`` any ending. ``thing_words``, right after an age,
    make it the age of a thing ("a 12 year old whisky"); an age that overlaps one of the ``allow_phrases``
    (patterns like the others, "{n} years ago") is not an age.
    """

    language: str
    numbers: tuple[tuple[str, int], ...] = ()
    ordinals: tuple[tuple[str, int], ...] = ()
    ages: tuple[str, ...] = ()
    grades: tuple[str, ...] = ()
    thing_words: tuple[str, ...] = ()
    allow_phrases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Signal:
    """A keyword group that is not prohibited alone but takes part in conjunctions (a minor, suggestive words).

    ``include_categories`` adds those categories' keywords (and their allow-phrases); ``languages`` adds keywords
    in other languages; a keyword inside one of ``allow_phrases`` does not count ("kid gloves", "a minor key").
    ``age_below`` makes a stated age below it a match, as the languages of ``ages`` write ages; ``grades_up_to``
    does the same for the school years of their ``grades`` patterns, from 1 up to it.
    """

    id: str
    name: str
    keywords: tuple[str, ...] = ()
    include_categories: tuple[str, ...] = ()
    age_below: int | None = None
    languages: tuple[tuple[str, tuple[str, ...]], ...] = ()
    allow_phrases: tuple[str, ...] = ()
    grades_up_to: int | None = None
    ages: tuple[AgeLexicon, ...] = ()

    @property
    def all_keywords(self) -> tuple[str, ...]:
        """``keywords`` and the keywords of every language."""
        return (*self.keywords, *(k for _, words in self.languages for k in words))


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
    #: The semantic prompt stage's heads and their thresholds (:mod:`safeguard.stages.semantic`), a resolved
    #: path; None: the policy has no semantic stage.
    semantic_heads: Path | None = None
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
        ConfigError: unknown id, unreadable file, unknown key, inconsistent references, or no locked
            child-safety rule (:data:`CHILD_SAFETY_RULE`).

    Example:
        >>> load_policy("stability-aup-2025-07-31").version
        '2025-07-31.2'
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
    "id", "version", "title", "source", "image_model", "encoder_calibrations", "semantic_heads", "categories",
    "signals", "conjunctions",
)  # fmt: skip
_CATEGORY_KEYS = (
    "id", "name", "section", "clauses", "applies_to", "concepts", "keywords", "allow_phrases", "locked",
    "out_of_scope", "languages", "severity",
)  # fmt: skip
_SIGNAL_KEYS = (
    "id", "name", "keywords", "include_categories", "age_below", "languages", "allow_phrases", "grades_up_to", "ages",
)  # fmt: skip
_AGE_LEXICON_KEYS = ("numbers", "ordinals", "ages", "grades", "thing_words", "allow_phrases")
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")


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
    semantic_heads = None
    if data.get("semantic_heads") is not None:
        semantic_heads = (path.parent / str(data["semantic_heads"])).resolve()
        # A copied or renamed policy keeps the heads it names, and a heads file that is not there is an error
        # now, not a prompt stage that quietly runs without them.
        if not semantic_heads.is_file():
            raise ConfigError(f"{where}: semantic_heads: {semantic_heads} does not exist")
    source = data.get("source") or {}
    check_keys(source, ("document", "effective", "url"), f"{where}: source")
    policy = Policy(
        id=str(data["id"]),
        version=str(data["version"]),
        title=str(data["title"]),
        categories=categories,
        signals=signals,
        conjunctions=conjunctions,
        image_model=image_model,
        encoder_calibrations=tuple((path.parent / c).resolve() for c in calibrations),
        semantic_heads=semantic_heads,
        source={k: str(v) for k, v in source.items()},
        path=path,
    )
    _require_child_safety_rule(policy)
    return policy


CHILD_SAFETY_RULE = (
    "a policy needs a locked child-safety rule: a category with `locked: true` whose applies_to holds both prompt "
    "and image, and a conjunction with `locked: true` that fires that category and whose all_of holds a signal "
    "with age_below (a sign of a minor) and at least one other signal or category (sexual or suggestive "
    "content), each with something to match (keywords, languages, include_categories or ages); see "
    "child_sexual_exploitation and minor_with_sexual_content in stability-aup-2025-07-31.yaml"
)


def _matchable(policy: Policy, name: str) -> bool:
    if name in policy:
        return bool(policy[name].all_keywords)
    signal = policy.signal(name)
    return bool(signal.all_keywords or signal.include_categories or signal.ages)


def _is_child_safety_rule(policy: Policy, rule: Conjunction) -> bool:
    category = policy[rule.category]
    if not (rule.locked and category.locked and {"prompt", "image"} <= set(category.applies_to)):
        return False
    signals = {s.id: s for s in policy.signals}
    minors = [n for n in rule.all_of if n in signals and signals[n].age_below and signals[n].ages]
    return bool(minors) and len(set(rule.all_of)) >= 2 and all(_matchable(policy, n) for n in rule.all_of)


def _require_child_safety_rule(policy: Policy) -> None:
    """Raise ConfigError unless the policy has the locked child-safety rule (:data:`CHILD_SAFETY_RULE`)."""
    if not any(_is_child_safety_rule(policy, rule) for rule in policy.conjunctions):
        raise ConfigError(f"{policy._where}: {CHILD_SAFETY_RULE}")


def _language_lists(value: Any, where: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``{language: [keywords]}`` as ``(language, keywords)`` pairs."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of language codes to keyword lists")
    pairs = []
    for language, words in value.items():
        if not isinstance(language, str) or not language.strip():
            raise ConfigError(f"{where}: language codes must be non-empty strings, got {language!r}")
        pairs.append((language, string_list(words, f"{where}.{language}")))
    return tuple(pairs)


def _number_words(value: Any, where: str, *, stems: bool) -> tuple[tuple[str, int], ...]:
    """``{value: word | [words]}`` as ``(word, value)`` pairs; ``stems`` allows a trailing ``*``."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of numbers to words")
    pairs = []
    for number, words in value.items():
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise ConfigError(f"{where}: keys must be non-negative integers, got {number!r}")
        for word in string_list([words] if isinstance(words, str) else words, f"{where}.{number}"):
            star = word.find("*")
            if star >= 0 and not (stems and star == len(word) - 1):
                allowed = "only as the last character" if stems else "not at all (list each form)"
                raise ConfigError(f"{where}.{number}: {word!r}: '*' is allowed {allowed}")
            pairs.append((word, number))
    return tuple(pairs)


def _patterns(value: Any, where: str, allowed: tuple[str, ...], count: tuple[int, int]) -> tuple[str, ...]:
    """Age or grade patterns: ``count`` is how many words may hold a placeholder (one per alternative)."""
    patterns = string_list(value, where)
    wanted = " or ".join(allowed)
    need = f"exactly one of {wanted}" if count == (1, 1) else f"at most one of {wanted}"
    for pattern in patterns:
        with_placeholder = 0
        for word in pattern.split():
            found = [_PLACEHOLDER.findall(a) for a in word.split("|")]
            unknown = sorted({p for f in found for p in f if p not in allowed})
            if unknown or word.count("{") != sum(len(f) for f in found) or any(len(f) > 1 for f in found):
                raise ConfigError(f"{where}: {pattern!r} needs {need}")
            if any(found) and not all(found):
                raise ConfigError(f"{where}: {pattern!r}: in {word!r} every alternative needs the placeholder")
            with_placeholder += bool(any(found))
        if not count[0] <= with_placeholder <= count[1]:
            raise ConfigError(f"{where}: {pattern!r} needs {need}")
    return patterns


def _parse_age_lexicons(value: Any, where: str) -> tuple[AgeLexicon, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where}: expected a non-empty mapping of language codes to age lexicons")
    lexicons = []
    for language, spec in value.items():
        at = f"{where}.{language}"
        check_keys(spec, _AGE_LEXICON_KEYS, at)
        lexicon = AgeLexicon(
            language=str(language),
            numbers=_number_words(spec.get("numbers"), f"{at}.numbers", stems=False),
            ordinals=_number_words(spec.get("ordinals"), f"{at}.ordinals", stems=True),
            ages=_patterns(spec.get("ages"), f"{at}.ages", ("{n}",), (1, 1)),
            grades=_patterns(spec.get("grades"), f"{at}.grades", ("{n}", "{nth}"), (1, 1)),
            thing_words=string_list(spec.get("thing_words"), f"{at}.thing_words"),
            allow_phrases=_patterns(spec.get("allow_phrases"), f"{at}.allow_phrases", ("{n}", "{nth}"), (0, 1)),
        )
        if not (lexicon.ages or lexicon.grades):
            raise ConfigError(f"{at}: an age lexicon needs ages or grades patterns")
        lexicons.append(lexicon)
    return tuple(lexicons)


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
        languages=_language_lists(data.get("languages"), f"{where}: languages"),
        severity=_severity(data.get("severity"), f"{where}: severity"),
    )


def _severity(data: Any, where: str) -> tuple[tuple[str, SeverityLevel], ...]:
    if data is None:
        return ()
    check_keys(data, SEVERITY_LEVELS, where, required=SEVERITY_LEVELS)
    levels = []
    for level in SEVERITY_LEVELS:
        check_keys(data[level], ("line", "examples"), f"{where}.{level}", required=("line", "examples"))
        examples = string_list(data[level]["examples"], f"{where}.{level}.examples")
        if not examples:
            raise ConfigError(f"{where}.{level}: give at least one example")
        levels.append((level, SeverityLevel(str(data[level]["line"]).strip(), examples)))
    return tuple(levels)


def _parse_signal(data: Any, where: str) -> Signal:
    check_keys(data, _SIGNAL_KEYS, where, required=("id", "name"))
    where = f"{where} ({data['id']})"
    for key in ("age_below", "grades_up_to"):
        number = data.get(key)
        if number is not None and (not isinstance(number, int) or isinstance(number, bool) or number <= 0):
            raise ConfigError(f"{where}: {key} must be a positive integer")
    ages = _parse_age_lexicons(data.get("ages"), f"{where}: ages")
    if data.get("age_below") is not None and not ages:
        raise ConfigError(f"{where}: age_below needs `ages`, the patterns that state an age (e.g. '{{n}} year old')")
    if ages and data.get("age_below") is None:
        raise ConfigError(f"{where}: ages needs age_below, the age under which a stated age is a match")
    if any(lexicon.grades for lexicon in ages) and data.get("grades_up_to") is None:
        raise ConfigError(f"{where}: grades patterns need grades_up_to, the last school year that counts")
    return Signal(
        id=str(data["id"]),
        name=str(data["name"]),
        keywords=string_list(data.get("keywords"), f"{where}: keywords"),
        include_categories=string_list(data.get("include_categories"), f"{where}: include_categories"),
        age_below=data.get("age_below"),
        languages=_language_lists(data.get("languages"), f"{where}: languages"),
        allow_phrases=string_list(data.get("allow_phrases"), f"{where}: allow_phrases"),
        grades_up_to=data.get("grades_up_to"),
        ages=ages,
    )


def _parse_conjunction(data: Any, where: str) -> Conjunction:
    check_keys(data, ("id", "category", "all_of", "locked"), where, required=("id", "category", "all_of"))
    all_of = string_list(data["all_of"], f"{where}: all_of")
    if len(all_of) < 2:
        raise ConfigError(f"{where}: all_of needs at least two signals or categories")
    return Conjunction(
        id=str(data["id"]), category=str(data["category"]), all_of=all_of, locked=bool(data.get("locked", False))
    )
