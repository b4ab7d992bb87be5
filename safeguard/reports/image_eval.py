"""Evaluating the output stage on labelled image folders (``<folder>/<label>/[<category>/]<image>``).

The same definitions as the prompt evaluation (:mod:`safeguard.reports.prompt_eval`): detection is the share
of unsafe images blocked, false positives the share of benign ones; ablations keep only some image backends
(each alone, all but one, all). Files that cannot be read are listed with their error and counted nowhere else.
The contact sheets show every image of the "all backends" run framed by its outcome, blocked ones redacted
(blurred) as the balanced preset would return them: the report never carries a flagged image as it is.

Example:
    >>> from safeguard.guard import Guard
    >>> result = evaluate_images(["my-images/"], Guard.create(), ablate=True)  # doctest: +SKIP
    >>> [c["name"] for c in result["configs"]]  # doctest: +SKIP
    ['all stages', 'opennsfw alone = all but nudenet', 'nudenet alone = all but opennsfw']
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safeguard.errors import InputError
from safeguard.guard import Guard
from safeguard.redact import blur
from safeguard.reports.data import LabelledImage, read_labelled_images
from safeguard.reports.progress import ProgressBar
from safeguard.reports.prompt_eval import stage_sets
from safeguard.reports.scan import check_image_tensors, load_image
from safeguard.reports.sheets import Tile, contact_sheet, to_uint8
from safeguard.verdict import Verdict

__all__ = ["evaluate_images"]

SHEET_TILE = 64


def evaluate_images(
    folders: Sequence[str | Path], guard: Guard, *, ablate: bool = False, progress: ProgressBar | None = None
) -> dict[str, Any]:
    """Check every labelled image under each stage choice of ``guard``'s image backends; JSON-ready figures.

    ``progress`` (when given) should count one step per image and stage choice.

    Raises:
        InputError: the guard has no image backends (the output stage is off).
    """
    if not guard.image_stages:
        raise InputError("the output stage is off under these settings: there is nothing to evaluate on images")
    items: list[LabelledImage] = [image for folder in folders for image in read_labelled_images(folder)]
    loaded, errors = [], []
    for item in items:
        try:
            loaded.append((item, load_image(item.path)))
        except InputError as err:
            errors.append({"file": str(item.path), "error": str(err)})
    names = [stage.name for stage in guard.image_stages]
    configs = []
    sheets: dict[str, bytes] = {}
    for choice in stage_sets(names, ablate, with_none=False):
        variant = copy.copy(guard)
        variant.image_stages = tuple(s for s in guard.image_stages if s.name in choice.stages)
        started = time.perf_counter()
        verdicts = []
        for _, image in loaded:
            verdicts.append(Verdict.combine(check_image_tensors(variant, image.frames)))
            if progress is not None:
                progress.advance(1, rate=choice.name)
        seconds = time.perf_counter() - started
        configs.append(
            {
                "name": choice.name,
                "stages": list(choice.stages),
                "seconds": seconds,
                "images_per_second": len(loaded) / seconds if seconds else None,
                **_tables(loaded, verdicts),
            }
        )
        if not sheets:
            sheets = _sheets(loaded, verdicts)
    return {
        "folders": [str(f) for f in folders],
        "stages": names,
        "images": len(loaded),
        "errors": errors,
        "configs": configs,
        "sheets": sheets,
    }


def _tables(loaded: Sequence[tuple[LabelledImage, Any]], verdicts: Sequence[Verdict]) -> dict[str, Any]:
    counts: dict[str, dict[str, dict[str, list[int]]]] = {
        "by_source": defaultdict(lambda: defaultdict(lambda: [0, 0])),
        "by_category": defaultdict(lambda: defaultdict(lambda: [0, 0])),
    }
    for (item, _), verdict in zip(loaded, verdicts, strict=True):
        for table, key in (("by_source", item.source), ("by_category", item.category)):
            cell = counts[table][item.label][key]
            cell[0] += 1
            cell[1] += verdict.blocked
    tables = {
        table: {
            label: {key: {"n": n, "blocked": b, "blocked_share": b / n} for key, (n, b) in sorted(cells.items())}
            for label, cells in sorted(labels.items())
        }
        for table, labels in counts.items()
    }
    pooled = {}
    for label in ("unsafe", "benign"):
        cells = tables["by_source"].get(label, {}).values()
        n = sum(c["n"] for c in cells)
        pooled[label] = sum(c["blocked"] for c in cells) / n if n else None
    return {"detection": pooled["unsafe"], "false_positive": pooled["benign"], **tables}


def _sheets(loaded: Sequence[tuple[LabelledImage, Any]], verdicts: Sequence[Verdict]) -> dict[str, bytes]:
    by_label: dict[str, list[Tile]] = defaultdict(list)
    for (item, image), verdict in zip(loaded, verdicts, strict=True):
        frame = image.frames[0]
        if verdict.blocked:
            frame = blur(frame[None])[0]
        by_label[item.label].append(Tile(to_uint8(frame.numpy()), "blocked" if verdict.blocked else "allowed"))
    return {label: contact_sheet(tiles, tile=SHEET_TILE, per_row=12) for label, tiles in by_label.items()}
