"""The policy file: every AUP bullet quoted, schema errors named, bundled as package data."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

import safeguard
from safeguard.errors import ConfigError
from safeguard.policy import load_policy

ROOT = Path(__file__).resolve().parents[1]
AUP_DIR = ROOT.parent / "shared" / "aup"
POLICY_FILE = ROOT / "configs" / "policies" / "stability-aup-2025-07-31.yaml"


def _policy_data() -> dict:
    """The bundled policy as data, its heads named by absolute path so that a copy elsewhere still finds them."""
    data = yaml.safe_load(load_policy().path.read_text(encoding="utf-8"))
    data["semantic_heads"] = str(load_policy().semantic_heads)
    return data


def _aup_bullets() -> list[str]:
    files = sorted(AUP_DIR.glob("*.txt")) if AUP_DIR.is_dir() else []
    if not files:
        pytest.skip(f"the AUP text is not at {AUP_DIR} (it comes with the shared/ folder beside the checkout)")
    text = files[0].read_text(encoding="utf-8")
    return [m.group(1).strip() for m in re.finditer(r"^\*\s+(.+?)\s*$", text, flags=re.M)]


def _squash(text: str) -> str:
    return " ".join(text.replace("\u00a0", " ").split())


def test_every_aup_bullet_is_quoted_by_some_category():
    bullets = _aup_bullets()
    assert len(bullets) == 31, f"the AUP text changed: {len(bullets)} bullets"
    quoted = {_squash(clause.text) for category in load_policy() for clause in category.clauses}
    missing = [b for b in bullets if _squash(b) not in quoted]
    assert not missing, f"AUP bullets not quoted by any category: {missing}"


def test_every_quoted_clause_is_in_the_aup():
    bullets = {_squash(b) for b in _aup_bullets()}
    for category in load_policy():
        for clause in category.clauses:
            assert _squash(clause.text) in bullets, f"{category.id}/{clause.ref} is not verbatim AUP text"


def test_categories_are_complete_and_consistent():
    policy = load_policy()
    assert policy.id == "stability-aup-2025-07-31" and policy.version
    for category in policy:
        assert category.section and category.name
        if category.enforced:
            assert category.applies_to
            if {"prompt", "image"} & set(category.applies_to):
                assert category.concepts, f"{category.id} needs concept phrases"
        else:
            assert not category.applies_to and len(category.out_of_scope) > 20
    assert policy.locked_categories == ("child_sexual_exploitation",)
    rule = next(r for r in policy.conjunctions if r.category == "child_sexual_exploitation")
    assert rule.locked and set(rule.all_of) == {"minor", "sexualised"}


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    data = _policy_data()
    data["categories"][0]["keywrds"] = ["x"]
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"typo\.yaml.*'keywrds'"):
        load_policy(path)


def test_bad_references_are_errors(tmp_path):
    data = _policy_data()
    data["conjunctions"][0]["all_of"] = ["minor", "no_such_signal"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError, match="no_such_signal"):
        load_policy(path)
    with pytest.raises(ConfigError, match="unknown policy id"):
        load_policy("no-such-policy")


def test_policy_loads_by_id_path_or_object():
    by_id = load_policy("stability-aup-2025-07-31")
    by_path = load_policy(POLICY_FILE)
    assert by_id.categories == by_path.categories
    assert load_policy(by_id) is by_id
    assert "stability-aup-2025-07-31" in safeguard.available_policies()


def test_configs_ship_inside_the_wheel(tmp_path):
    """Build the wheel, unpack it alone and load the default policy and presets from it."""
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    built = subprocess.run(
        [*command, "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    wheel = next(tmp_path.glob("diffusers_safeguard-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "safeguard/configs/policies/stability-aup-2025-07-31.yaml" in names
    assert {f"safeguard/configs/presets/{p}.yaml" for p in ("balanced", "strict", "research")} <= set(names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import safeguard.policy as p, safeguard.config as c;"
        f"assert p.__file__.startswith({str(site)!r}), p.__file__;"
        "print(p.load_policy().id, c.resolve_settings().preset)"
    )
    ran = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {probe}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["stability-aup-2025-07-31", "balanced"]


def test_image_model_brings_its_own_neutral_concepts_and_templates(tmp_path):
    from safeguard.toy import POLICY_PATH

    toy = load_policy(POLICY_PATH)
    assert toy.image_model is not None
    assert "a blue shape" in toy.image_model.neutral_concepts
    assert toy.image_model.templates == ("{}",)
    assert toy.encoder_calibrations == ((POLICY_PATH.parent / "encoder_calibration.yaml").resolve(),)
    data = yaml.safe_load(POLICY_PATH.read_text(encoding="utf-8"))
    for field, value, message in [
        ("templates", ["no placeholder"], "exactly one"),
        ("neutral_concepts", "a blue shape", "list of non-empty strings"),
        ("colour", "red", "colour"),
    ]:
        broken = dict(data, image_model={**data["image_model"], field: value})
        (tmp_path / "policy.yaml").write_text(yaml.safe_dump(broken), encoding="utf-8")
        with pytest.raises(ConfigError, match=message):
            load_policy(tmp_path / "policy.yaml")


REQUIRED_LANGUAGES = {"fr", "de", "es", "pt", "it", "nl", "ru", "pl", "tr", "zh", "ja", "ko", "ar"}


def _write(tmp_path, data, name="policy.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _category(data, category_id):
    return next(c for c in data["categories"] if c["id"] == category_id)


def _signal(data, signal_id):
    return next(s for s in data["signals"] if s["id"] == signal_id)


def _drop_locked_category(data):
    del _category(data, "child_sexual_exploitation")["locked"]


def _prompt_only(data):
    _category(data, "child_sexual_exploitation")["applies_to"] = ["prompt"]


def _unlocked_conjunction(data):
    data["conjunctions"][0]["locked"] = False


def _no_minor_signal(data):
    data["conjunctions"][0]["all_of"] = ["real_person", "sexualised"]


def _no_conjunction(data):
    data["conjunctions"] = data["conjunctions"][1:]


def _minor_signal_without_ages(data):
    minor = _signal(data, "minor")
    for key in ("age_below", "ages", "grades_up_to"):
        del minor[key]


@pytest.mark.parametrize(
    "change", [_drop_locked_category, _prompt_only, _unlocked_conjunction, _no_minor_signal, _no_conjunction,
               _minor_signal_without_ages],
)  # fmt: skip
def test_a_policy_without_the_locked_child_safety_rule_is_a_config_error(tmp_path, change):
    data = _policy_data()
    change(data)
    with pytest.raises(ConfigError, match=r"policy\.yaml: a policy needs a locked child-safety rule: a category"):
        load_policy(_write(tmp_path, data))


def test_the_toy_world_policy_has_its_own_locked_child_safety_rule():
    from safeguard.toy import POLICY_PATH

    toy = load_policy(POLICY_PATH)
    assert toy.locked_categories == ("child_safety",)
    rule = next(r for r in toy.conjunctions if r.locked)
    assert rule.category == "child_safety" and set(rule.all_of) == {"minor", "sexualised"}
    assert {"prompt", "image"} <= set(toy["child_safety"].applies_to)
    assert not toy["child_safety"].concepts  # the toy CLIP and encoder know only coloured shapes


def test_the_locked_rule_lexicon_covers_the_required_languages():
    policy = load_policy()
    minor, sexualised = policy.signal("minor"), policy.signal("sexualised")
    assert {language for language, _ in minor.languages} >= REQUIRED_LANGUAGES
    assert {language for language, _ in sexualised.languages} >= REQUIRED_LANGUAGES
    ages = {lexicon.language: lexicon for lexicon in minor.ages}
    assert REQUIRED_LANGUAGES | {"en"} <= set(ages)
    for language, lexicon in ages.items():
        assert lexicon.ages and lexicon.grades, f"{language}: ages and school years"
        assert {v for _, v in lexicon.numbers} >= set(range(1, 18)), f"{language}: number words 1-17"
    assert minor.age_below == 18 and minor.grades_up_to == 13


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["ages"]["en"].update(agez=["{n} yo"]), r"ages\.en: unknown key 'agez'"),
        (lambda m: m["ages"]["en"]["numbers"].update({12: "twel*"}), r"numbers\.12: 'twel\*': '\*' is allowed not"),
        (lambda m: m["ages"]["en"]["numbers"].update({"twelve": 12}), r"keys must be non-negative integers"),
        (lambda m: m["ages"]["en"]["ages"].append("years old"), r"'years old' needs exactly one of \{n\}"),
        (lambda m: m["ages"]["en"]["ages"].append("{nth} year old"), r"needs exactly one of \{n\}"),
        (lambda m: m["ages"]["en"]["ages"].append("{n}yo|yo"), r"every alternative needs the placeholder"),
        (lambda m: m["ages"]["en"]["grades"].append("{n} {nth} grade"), r"needs exactly one of \{n\} or \{nth\}"),
        (lambda m: m["ages"]["en"].update(ages=[], grades=[]), r"needs ages or grades patterns"),
        (lambda m: m.pop("grades_up_to"), r"grades patterns need grades_up_to"),
        (lambda m: m.pop("age_below"), r"ages needs age_below"),
        (lambda m: m.update(languages=["fr"]), r"languages: expected a mapping of language codes"),
        (lambda m: m["languages"].update(fr="enfant"), r"languages\.fr: expected a list of non-empty strings"),
        (lambda m: m.update(allow_phrases="kid gloves"), r"allow_phrases: expected a list"),
        (lambda m: m.update(grades_up_to=0), r"grades_up_to must be a positive integer"),
    ],
)
def test_bad_lexicon_entries_are_config_errors(tmp_path, change, message):
    data = _policy_data()
    change(_signal(data, "minor"))
    with pytest.raises(ConfigError, match=message):
        load_policy(_write(tmp_path, data))


def test_category_languages_are_checked_and_kept_apart_from_keywords(tmp_path):
    policy = load_policy()
    csam = policy["child_sexual_exploitation"]
    assert "csam" in csam.keywords and "kinderporn*" in csam.all_keywords and "kinderporn*" not in csam.keywords
    data = _policy_data()
    _category(data, "child_sexual_exploitation")["languages"] = {"de": "kinderporn*"}
    with pytest.raises(ConfigError, match=r"child_sexual_exploitation\): languages\.de: expected a list"):
        load_policy(_write(tmp_path, data))


def test_the_readme_states_every_severity_line():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    policy = load_policy()
    lines = [level.line for category in policy.categories for _, level in category.severity]
    assert lines, "the bundled policy draws severity lines"
    missing = [line for line in lines if line not in readme]
    assert not missing, f"README's 'Where each line falls' lacks {missing}"


def test_severity_needs_every_level_with_examples(tmp_path):
    data = _policy_data()
    sexual = next(c for c in data["categories"] if c["id"] == "sexual")
    del sexual["severity"]["steer"]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError, match="severity"):
        load_policy(path)


def test_a_copied_policy_keeps_its_heads_and_a_missing_heads_file_is_an_error(tmp_path):
    data = _policy_data()
    data["id"] = "my-copy"
    path = tmp_path / "copy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert load_policy(path).semantic_heads == load_policy().semantic_heads  # a renamed id keeps its scorers
    data["semantic_heads"] = "no-such-heads.npz"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError, match="semantic_heads"):
        load_policy(path)
