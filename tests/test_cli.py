"""The safeguard command line."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import safeguard
from safeguard.cli import EXIT_ALLOWED, EXIT_BLOCKED, EXIT_BROKEN_PIPE, EXIT_ERROR, _parser, main
from safeguard.config import resolve_settings
from safeguard.guard import Guard
from safeguard.toy import POLICY_PATH

REPO = Path(__file__).resolve().parents[1]


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "safeguard.cli", *args]


def _env() -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout first on the path, offline."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    done = subprocess.run(_command(*args), input=stdin, capture_output=True, env=_env(), timeout=300)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


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

    from safeguard.toy import dominant_colour

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


def test_check_reads_prompts_from_stdin_one_per_line_and_skips_blank_lines():
    done = _cli("check", "--json", "-", stdin=b"a watercolor painting of a lighthouse\n\na pipe bomb\n")
    assert done.returncode == EXIT_BLOCKED, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["line"], r["prompt"], r["verdict"]["action"]) for r in records] == [
        (1, "a watercolor painting of a lighthouse", "allow"),
        (3, "a pipe bomb", "block"),
    ]
    assert "safeguard: check: standard input, line 2: empty; skipped" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_skips_empty_lines_and_arguments_naming_them_from_1(tmp_path, capsys):
    text = tmp_path / "prompts.txt"
    text.write_text("a red bicycle\n  \na pipe bomb\n", encoding="utf-8")
    assert main(["check", "--file", str(text), "--no-progress"]) == EXIT_BLOCKED
    assert f"safeguard: check: {text}, line 2: empty; skipped" in capsys.readouterr().err
    table = tmp_path / "prompts.csv"
    table.write_text("id,prompt\na,a red bicycle\nb,\n", encoding="utf-8")
    assert main(["check", "--file", str(table), "--no-progress"]) == EXIT_ALLOWED
    assert f"safeguard: check: {table}, line 3: empty; skipped" in capsys.readouterr().err
    assert main(["check", "a red bicycle", "", "a pipe bomb"]) == EXIT_BLOCKED
    captured = capsys.readouterr()
    assert "safeguard: check: prompt 2 is empty; skipped" in captured.err
    assert "BLOCK  a pipe bomb" in captured.out
    assert main(["check", "-", "a red bicycle"]) == EXIT_ERROR
    assert "give it alone" in capsys.readouterr().err


def test_check_json_records_carry_their_prompt(capsys):
    prompts = ["a lighthouse", "a pipe bomb"]
    assert main(["check", "--json", *prompts]) == EXIT_BLOCKED
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in records] == prompts
    assert [r["action"] for r in records] == ["allow", "block"]


def test_version_prints_the_distribution_version(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    version = importlib.metadata.version("diffusers-safeguard")
    assert capsys.readouterr().out == f"safeguard {version}\n"
    assert safeguard.__version__ == version


def _parsers(parser: argparse.ArgumentParser, name: str = "safeguard") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, subparser in action.choices.items():
                yield from _parsers(subparser, f"{name} {command}")


def test_help_has_no_restructuredtext_markup():
    parsers = dict(_parsers(_parser()))
    assert {"safeguard check", "safeguard policy", "safeguard keys add", "safeguard credentials init"} <= set(parsers)
    for name, parser in parsers.items():
        text = parser.format_help()
        for markup in ("``", ":func:", ":class:", ":mod:", ":meth:", ":data:"):
            assert markup not in text, f"{name} --help shows {markup!r}"


def _cell(row: str, starts: list[int], column: int) -> str:
    """The text of a table cell; the last named column ends where the (unnamed) notes column begins."""
    if column + 1 < len(starts):
        return row[starts[column] : starts[column + 1]].strip()
    return row[starts[column] :].split("  ")[0]


def test_policy_is_an_aligned_table_of_the_checks_that_run(capsys):
    assert main(["policy"]) == EXIT_ALLOWED
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("category "))
    starts = [header.index(name) for name in ("category", "clauses", "prompt", "steering", "image")]
    ids = {c.id for c in safeguard.load_policy().categories}
    rows = {line.split()[0]: line for line in lines if line.split(" ")[0] in ids}
    assert set(rows) == ids
    for category, row in rows.items():
        for start in starts[1:]:
            assert row[start - 1] == " " and row[start] != " ", f"{category}: a cell does not start at its column"
    # Balanced runs open_nsfw and NudeNet on images, which score only sexual content; there are no CLIP weights.
    assert _cell(rows["sexual"], starts, 4) == "opennsfw, nudenet"
    assert _cell(rows["violence"], starts, 4) == "not checked"
    assert _cell(rows["violence"], starts, 2) == "keywords, semantic"
    assert _cell(rows["profiling_and_biometrics"], starts, 2) == "out of scope"
    assert "clip" not in "".join(rows.values())
    assert any(line.startswith("not configured: ") and "clip" in line for line in lines)


def test_policy_json_says_what_runs_under_the_configuration(capsys):
    assert main(["policy", "--json", "--preset", "strict"]) == EXIT_ALLOWED
    data = json.loads(capsys.readouterr().out)
    guard = Guard.create(preset="strict")
    checks = {c["id"]: c["checks"] for c in data["categories"]}
    assert data["preset"] == "strict"
    assert data["image_backends"]["running"] == [stage.name for stage in guard.image_stages]
    assert "clip" in data["image_backends"]["not_configured"]
    assert checks["sexual"]["image"] == [stage.name for stage in guard.image_stages]
    assert checks["violence"]["image"] == [] and "keywords" in checks["violence"]["prompt"]
    assert not any(c["steering"] for c in checks.values())  # strict blocks instead of steering
    # The toy policy names its own CLIP model, so the clip backend runs and scores its prohibited colour.
    assert main(["policy", "--json", "--policy", str(POLICY_PATH)]) == EXIT_ALLOWED
    toy = json.loads(capsys.readouterr().out)
    assert {c["id"]: c["checks"]["image"] for c in toy["categories"]}["red"] == ["clip"]
    assert "clip" in toy["image_backends"]["running"]


def test_a_config_file_that_is_not_utf8_exits_2_without_a_traceback(tmp_path, capsys):
    user = tmp_path / "utf16.yaml"
    user.write_bytes(b"\xff\xfep\x00r\x00e\x00")
    assert main(["check", "--config", str(user), "a red bicycle"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"safeguard: ConfigError: {user}: not UTF-8 text (invalid start byte at byte 0); save it")
    assert "Traceback" not in err


def test_demo_refuses_an_out_path_that_is_a_file(tmp_path, capsys):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine", encoding="utf-8")
    for out in (taken, taken / "demo"):
        with pytest.raises(SystemExit) as exited:
            main(["demo", "--out", str(out)])
        assert exited.value.code == EXIT_ERROR
        assert f"argument --out: {taken} exists and is not a folder" in capsys.readouterr().err
    assert taken.read_text(encoding="utf-8") == "mine"


def test_output_into_a_reader_that_stops_early_exits_quietly(tmp_path):
    big = tmp_path / "big.txt"
    # More JSON than a pipe holds, so the command is still writing when its reader goes away.
    big.write_text("a watercolor painting of a lighthouse at dawn\n" * 600, encoding="utf-8")
    command = _command("check", "--json", "--no-progress", "--file", str(big))
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()) as process:
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.readline()  # what `| head -1` reads before it exits
        process.stdout.close()
        err = process.stderr.read().decode()
        code = process.wait(timeout=300)
    assert json.loads(first)["line"] == 1
    assert code == EXIT_BROKEN_PIPE
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err


def test_the_command_line_keeps_library_noise_off_stderr(tmp_path):
    done = _cli("demo", "--out", str(tmp_path / "demo"))
    assert done.returncode == EXIT_ALLOWED, done.stderr
    assert "torchvision" not in done.stderr and "Loading weights" not in done.stderr
    assert "Loading pipeline components" not in done.stderr
