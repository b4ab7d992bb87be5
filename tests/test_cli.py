"""The safeguard command line."""

from __future__ import annotations

import json

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


def test_demo_writes_images_and_verdicts(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == EXIT_ALLOWED
    records = json.loads((tmp_path / "verdicts.json").read_text())
    assert [r.get("blocked", False) for r in records] == [False, True]
    assert (tmp_path / "allowed.png").is_file()
    printed = capsys.readouterr().out
    assert str(tmp_path.resolve()) in printed
    # The saved image says it was generated: watermark, and credentials signed by the demo's test CA.
    assert "[allowed] disclosure: watermark found (generator id 0), content credentials trusted" in printed
    assert records[0]["verdict"]["disclosure"]["watermark"]
