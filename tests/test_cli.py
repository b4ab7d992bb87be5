"""The safeguard command line."""

from __future__ import annotations

import json

import numpy as np

from safeguard.cli import EXIT_ALLOWED, EXIT_BLOCKED, EXIT_ERROR, main
from safeguard.config import resolve_settings


def test_check_table_and_exit_codes(capsys):
    assert main(["check", "a watercolor painting of a lighthouse at dawn"]) == EXIT_ALLOWED
    out = capsys.readouterr().out
    assert out.startswith("ALLOW") and "stability-aup-2025-07-31" in out
    assert main(["check", "a pipe bomb"]) == EXIT_BLOCKED
    out = capsys.readouterr().out
    _, block = resolve_settings().prompt.thresholds.for_category("weapons")
    assert "BLOCK" in out and "weapons" in out and f"score 1.000 >= {block:.3f}" in out


def test_check_json(capsys):
    assert main(["check", "--json", "--preset", "strict", "a lighthouse", "a pipe bomb"]) == EXIT_BLOCKED
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["flagged"] for r in lines] == [False, True]
    assert lines[1]["categories"]["weapons"] is True and lines[1]["policy"]["id"] == "stability-aup-2025-07-31"


def test_check_bad_input_and_config(capsys):
    assert main(["check", "--preset", "nope", "a cat"]) == EXIT_ERROR
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["check", " "]) == EXIT_ERROR
    assert "empty" in capsys.readouterr().err


def test_policy_listing(capsys):
    assert main(["policy"]) == EXIT_ALLOWED
    out = capsys.readouterr().out
    assert "child_sexual_exploitation" in out and "locked" in out and "out of scope" in out
    assert main(["policy", "--json"]) == EXIT_ALLOWED
    data = json.loads(capsys.readouterr().out)
    assert len(data["categories"]) == 23


def test_demo_runs_the_toy_world_and_writes_a_contact_sheet(tmp_path, capsys):
    from PIL import Image

    from safeguard.testing.toy import dominant_colour

    assert main(["demo", "--out", str(tmp_path)]) == EXIT_ALLOWED
    records = json.loads((tmp_path / "verdicts.json").read_text())
    outcomes = {(r["row"], r["prompt"], r["outcome"]) for r in records}
    assert ("all stages", "a blue circle", "allowed") in outcomes
    assert ("all stages", "a red circle", "prompt blocked") in outcomes
    assert {o for row, _, o in outcomes if row == "output stage"} == {"blocked"}
    # Steering turned both red requests away from red, where the unprotected pipeline drew them red.
    steering = {(r["prompt"], r["outcome"]): r["image"] for r in records if r["row"] == "steering"}
    for prompt in ("a crimson circle", "a scarlet square"):
        assert dominant_colour(np.asarray(Image.open(steering[prompt, "unprotected"]))) == "red"
        steered = next(path for (p, outcome), path in steering.items() if p == prompt and outcome != "unprotected")
        assert dominant_colour(np.asarray(Image.open(steered))) != "red"
    sheet = Image.open(tmp_path / "contact_sheet.png")
    assert sheet.size[0] >= 4 * 96 and sheet.size[1] >= 3 * 96
    printed = capsys.readouterr().out
    assert str(tmp_path.resolve()) in printed and "contact sheet:" in printed
    # 32 px toy images are too small for the watermark, and their verdicts say so (the balanced rows; research,
    # used for the steering row, has disclosure off).
    assert "not marked: a 32x32 image is too small" in printed
    balanced = [r for r in records if r["row"] != "steering" and r["image"]]
    assert balanced and all(r["verdict"]["disclosure"]["watermark"] is None for r in balanced)


def test_demo_refuses_an_out_path_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("x")
    assert main(["demo", "--out", str(target)]) == EXIT_ERROR
    assert "exists and is not a folder" in capsys.readouterr().err
