"""``safeguard eval`` as a library call: prompt sets, image folders and the toy world, into one HTML and one JSON.

Example:
    >>> result = run_evaluation(["../shared/datasets"], ablate=True)  # doctest: +SKIP
    >>> html_path, json_path = write_report(result, "safeguard-eval")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safeguard.guard import Guard
from safeguard.policy import DEFAULT_POLICY, Policy
from safeguard.reports.data import read_labelled_csv, read_labelled_images, split_data_paths
from safeguard.reports.html import render_report
from safeguard.reports.image_eval import evaluate_images
from safeguard.reports.progress import ProgressBar
from safeguard.reports.prompt_eval import evaluate_prompts, stage_sets
from safeguard.reports.toy_eval import TOY_PROMPTS, TOY_STAGES, evaluate_toy_world

__all__ = ["json_ready", "run_evaluation", "write_report"]


def run_evaluation(
    data: Sequence[str | Path],
    *,
    policy: Policy | str | Path = DEFAULT_POLICY,
    preset: str | Path | None = None,
    config: str | Path | None = None,
    ablate: bool = False,
    toy_world: bool = False,
    toy_images: int = 16,
    toy_steps: int = 20,
    toy_steering: str = "strong",
    batch: int = 512,
    single: int = 200,
    progress: bool | None = None,
    command: str = "safeguard eval",
) -> dict[str, Any]:
    """Evaluate every DATA path (labelled prompt CSVs, folders of them, labelled image folders) and the toy world.

    ``progress`` is passed to each :class:`ProgressBar` (None: only on a terminal).

    Raises:
        InputError: a DATA path that is missing or holds neither CSVs nor label subfolders.
    """
    started = time.perf_counter()
    csvs, image_folders = split_data_paths(data) if data else ([], [])
    guard = Guard.create(policy, preset, config)
    result: dict[str, Any] = {
        "title": "safeguard evaluation",
        "generated": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "policy": {"id": guard.policy.id, "version": guard.policy.version},
        "preset": guard.settings.preset,
        "data": [str(p) for p in data],
    }
    if csvs:
        rows = [row for path in csvs for row in read_labelled_csv(path)]
        steps = len(rows) * len(stage_sets([s.name for s in guard.prompt_stages], ablate))
        with ProgressBar(steps, "prompts", enabled=progress) as bar:
            result["prompts"] = evaluate_prompts(
                rows, guard, ablate=ablate, batch=batch, single=single, languages=True, progress=bar
            )
    if image_folders:
        count = sum(len(read_labelled_images(folder)) for folder in image_folders)
        choices = stage_sets([s.name for s in guard.image_stages], ablate, with_none=False)
        with ProgressBar(count * len(choices), "images", enabled=progress) as bar:
            result["images"] = evaluate_images(image_folders, guard, ablate=ablate, progress=bar)
    if toy_world:
        steps = len(TOY_PROMPTS) * len(stage_sets(TOY_STAGES, ablate))
        with ProgressBar(steps, "toy world", enabled=progress) as bar:
            result["toy_world"] = evaluate_toy_world(
                images=toy_images, steps=toy_steps, steering=toy_steering, ablate=ablate, progress=bar
            )
    result["seconds"] = time.perf_counter() - started
    return result


def json_ready(value: Any) -> Any:
    """``value`` without its PNG bytes (those live in the HTML) and with NaN and infinity as null."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items() if not isinstance(v, bytes) and k != "sheets"}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(result: dict[str, Any], folder: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.json`` into ``folder`` (created if missing); return both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    html_path, json_path = folder / "report.html", folder / "report.json"
    html_path.write_text(render_report(result), encoding="utf-8")
    json_path.write_text(json.dumps(json_ready(result), indent=1, ensure_ascii=False), encoding="utf-8")
    return html_path, json_path
