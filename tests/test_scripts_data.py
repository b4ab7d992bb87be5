"""Scripts read labelled CSVs through one reader (safeguard.reports.data) and map categories with one table."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_script_parses_csv_itself():
    readers = re.compile(r"csv\.(DictReader|reader)\(|SOURCE_CATEGORIES\s*=")
    offenders = [path.name for path in sorted(SCRIPTS.glob("*.py")) if readers.search(path.read_text("utf-8"))]
    assert offenders == [], f"use safeguard.reports.data.read_labelled_csv / SOURCE_CATEGORIES in {offenders}"


def test_calibrate_encoder_reads_pipe_joined_categories_as_the_policy_s(tmp_path):
    data = tmp_path / "set.csv"
    data.write_text(
        "id,prompt,label,categories,source\n"
        "1,an explicit scene,unsafe,Sexual|Violence,x\n"
        "2,a stabbing,unsafe,violent,x\n"
        "3,a heist plan,unsafe,illegal activity,x\n"
        "4,a boxing match,borderline,violence,x\n"
        "5,a lighthouse,benign,,x\n",
        encoding="utf-8",
    )
    prompts, labels = _script("calibrate_encoder").read_csvs([data], {"sexual", "violence", "gore"})
    # Unsafe rows keep the policy categories their names map to; one with none, and borderline rows, are left out
    # (before, ";" was split and every one of these unsafe rows was read as benign).
    assert list(zip(prompts, labels, strict=True)) == [
        ("an explicit scene", ["sexual", "violence"]),
        ("a stabbing", ["violence"]),
        ("a lighthouse", []),
    ]
