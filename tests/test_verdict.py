import json
from dataclasses import replace

import pytest

from safeguard.verdict import STAGE_FAILURE, Action, Finding, Verdict


def _finding(category: str, action: Action, score: float = 0.9, locked: bool = False) -> Finding:
    return Finding(category, score, 0.5, "prompt", action, "test", locked=locked)


def test_flags_are_plain_bools():
    allow = Verdict.allow("p", "1")
    steer = Verdict.from_findings([_finding("a", Action.STEER)], {"a": 0.6}, policy_id="p", policy_version="1")
    block = Verdict.from_findings([_finding("a", Action.BLOCK)], {"a": 0.9}, policy_id="p", policy_version="1")
    assert (allow.blocked, allow.flagged) == (False, False)
    assert (steer.blocked, steer.flagged) == (False, True)
    assert (block.blocked, block.flagged) == (True, True)
    assert all(type(x) is bool for x in (allow.blocked, steer.flagged, block.locked))


def test_combine_block_wins_and_keeps_max_scores_and_all_findings():
    a = Verdict.from_findings([_finding("x", Action.STEER)], {"x": 0.6, "y": 0.1}, policy_id="p", policy_version="1")
    b = Verdict.from_findings([_finding("y", Action.BLOCK)], {"x": 0.2, "y": 0.9}, policy_id="p", policy_version="1")
    c = Verdict.allow("p", "1")
    combined = Verdict.combine([a, b, c])
    assert combined.action is Action.BLOCK
    assert dict(combined.category_scores) == {"x": 0.6, "y": 0.9}
    assert {f.category for f in combined.findings} == {"x", "y"}
    assert Verdict.combine([a, c]).action is Action.STEER


def test_combine_rejects_mixed_policies_and_empty_input():
    with pytest.raises(ValueError, match="different policies"):
        Verdict.combine([Verdict.allow("p", "1"), Verdict.allow("p", "2")])
    with pytest.raises(ValueError):
        Verdict.combine([])


def test_to_dict_is_moderation_shaped_and_json_serialisable():
    v = Verdict.from_findings(
        [_finding("sexual", Action.BLOCK, 1.0)], {"sexual": 1.0, "gore": 0.0}, policy_id="p", policy_version="7"
    )
    d = json.loads(json.dumps(v.to_dict()))
    assert d["flagged"] is True and d["blocked"] is True and d["action"] == "block"
    assert d["categories"] == {"sexual": True, "gore": False}
    assert d["category_scores"] == {"sexual": 1.0, "gore": 0.0}
    assert d["policy"] == {"id": "p", "version": "7"}
    assert d["findings"][0] == {
        "category": "sexual", "score": 1.0, "threshold": 0.5, "stage": "prompt", "action": "block",
        "source": "test", "detail": "", "locked": False,
    }  # fmt: skip


def test_locked_needs_a_locked_block():
    locked = Verdict.from_findings([_finding("c", Action.BLOCK, locked=True)], {}, policy_id="p", policy_version="1")
    assert locked.locked
    assert not Verdict.from_findings([_finding("c", Action.BLOCK)], {}, policy_id="p", policy_version="1").locked


def test_verdict_scores_are_read_only():
    v = Verdict.from_findings([_finding(STAGE_FAILURE, Action.BLOCK)], {"a": 1.0}, policy_id="p", policy_version="1")
    with pytest.raises(TypeError):
        v.category_scores["a"] = 0.0  # type: ignore[index]


def test_verdicts_pickle_and_deepcopy_with_their_read_only_mappings():
    import copy
    import pickle

    hit = Finding("sexual", score=1.0, threshold=0.5, stage="image", action=Action.BLOCK, source="opennsfw")
    verdict = replace(
        Verdict.from_findings([hit], {"sexual": 1.0}, policy_id="p", policy_version="1", stages=("output",)),
        disclosure={"watermark": None, "reason": "not marked"},
    )
    for clone in (pickle.loads(pickle.dumps(verdict)), copy.deepcopy(verdict)):
        assert clone == verdict and clone.to_dict() == verdict.to_dict()
        with pytest.raises(TypeError):
            clone.category_scores["sexual"] = 0.0  # still read-only
