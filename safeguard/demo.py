"""``safeguard demo``: every stage at work on the toy world, written to a folder with a contact sheet.

The toy world (:mod:`safeguard.toy`) is a tiny Stable Diffusion pipeline trained on coloured shapes whose
policy prohibits red; it ships inside the package, so the demo runs offline in seconds with nothing else
installed. Three rows, each with the same seeds:

- **all stages** (``balanced``): shapes in other colours are allowed; "a red circle" is blocked before denoising;
- **steering** (``research`` with only steering on, ``strong``): "a crimson circle" and "a scarlet square" are
  generated next to the same prompts on the unprotected pipeline; steering turns them away from red;
- **output stage** (``balanced`` with the prompt stage and steering off): a red image is caught after decoding
  and blurred, as ``balanced`` redacts.

Every returned image is saved with :func:`safeguard.save` (content credentials signed by a local test CA when
c2pa-python, the ``disclosure`` extra, is installed), next to ``verdicts.json`` and ``contact_sheet.png``.

Example:
    >>> import tempfile
    >>> result = run_demo(Path(tempfile.mkdtemp()), steps=4)  # doctest: +SKIP
    >>> sorted({item.outcome for item in result.items})  # doctest: +SKIP
    ['allowed', 'blocked', 'prompt blocked', 'steered', 'unprotected']
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from safeguard.errors import InputError

__all__ = ["ROWS", "DemoItem", "DemoResult", "run_demo"]

#: (row name, protect() keywords, prompts). ``unprotected`` in the keywords adds the unprotected image first.
ROWS: tuple[tuple[str, dict[str, Any], tuple[str, ...]], ...] = (
    ("all stages", {"preset": "balanced"}, ("a blue circle", "a green square", "a yellow diamond", "a red circle")),
    (
        "steering",
        {"preset": "research", "prompt": False, "output": False, "steering": "strong", "unprotected": True},
        ("a crimson circle", "a scarlet square"),
    ),
    (
        "output stage",
        {"preset": "balanced", "prompt": False, "steering": False},
        ("a red circle", "a scarlet triangle"),
    ),
)


@dataclass(frozen=True)
class DemoItem:
    """One prompt of one row: what happened (``allowed``, ``steered``, ``blocked``, ``prompt blocked`` or
    ``unprotected``), the saved image (None when nothing was generated) and the verdict as a dict."""

    row: str
    prompt: str
    outcome: str
    path: Path | None
    verdict: dict[str, Any] | None
    image: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` wrote: every item, the contact sheet, the verdicts file and the credentials folder
    (None without c2pa-python)."""

    items: tuple[DemoItem, ...]
    sheet: Path
    verdicts: Path
    credentials: Path | None


def run_demo(out: Path, *, steps: int = 20, seed: int = 0) -> DemoResult:
    """Run the demo's three rows on the toy world and write everything to ``out`` (created if missing).

    Raises:
        InputError: ``out`` exists and is not a folder.
    """
    import torch

    import safeguard
    from safeguard.reports.sheets import Tile, contact_sheet
    from safeguard.toy import toy_world

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    credentials = _test_credentials(out)
    world = toy_world()
    items: list[DemoItem] = []
    for row, options, prompts in ROWS:
        options = dict(options)
        with_unprotected = options.pop("unprotected", False)
        guarded = safeguard.protect(world.pipeline, policy=world.policy, **options)
        for index, prompt in enumerate(prompts):

            def generator(index: int = index) -> torch.Generator:
                return torch.Generator().manual_seed(seed + index)

            name = f"{row.replace(' ', '-')}-{index}"
            if with_unprotected:
                plain = world.pipeline(prompt, num_inference_steps=steps, generator=generator()).images[0]
                path = out / f"{name}-unprotected.png"
                plain.save(path)
                items.append(DemoItem(row, prompt, "unprotected", path, None, np.asarray(plain)))
            try:
                result = guarded(prompt, num_inference_steps=steps, generator=generator())
            except safeguard.PromptBlocked as blocked:
                items.append(DemoItem(row, prompt, "prompt blocked", None, blocked.verdict.to_dict()))
                continue
            image, verdict = result.images[0], result.verdicts[0]
            path = out / f"{name}.png"
            safeguard.save(image, path, verdict=verdict, credentials=credentials)
            items.append(DemoItem(row, prompt, _outcome(verdict), path, verdict.to_dict(), np.asarray(image)))
    sheet = out / "contact_sheet.png"
    tiles = [Tile(item.image, item.outcome) for item in items]
    sheet.write_bytes(contact_sheet(tiles, tile=96, per_row=4))
    verdicts = out / "verdicts.json"
    records = [
        {"row": i.row, "prompt": i.prompt, "outcome": i.outcome, "image": i.path and str(i.path), "verdict": i.verdict}
        for i in items
    ]
    verdicts.write_text(json.dumps(records, indent=2, ensure_ascii=False), encoding="utf-8")
    return DemoResult(tuple(items), sheet, verdicts, credentials)


def _outcome(verdict: Any) -> str:
    if verdict.blocked:
        return "blocked"
    return "steered" if verdict.flagged else "allowed"


def _test_credentials(out: Path) -> Path | None:
    """A test CA and signer under ``out/credentials`` when c2pa-python is installed (the disclosure extra)."""
    from safeguard.disclosure import create_test_credentials
    from safeguard.disclosure.manifest import c2pa_available

    if not c2pa_available():
        return None
    folder = out / "credentials"
    if not (folder / "signer.key").is_file():
        create_test_credentials(folder)
    return folder
