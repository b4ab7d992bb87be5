"""Checking a file of prompts in batches, as ``safeguard check --file`` does.

The prompts go through :meth:`safeguard.guard.Guard.check_prompts` a batch at a time, the path
:func:`safeguard.check_prompts` takes, so each verdict is the one ``check_prompts`` gives. A prompt longer than
``prompt.max_chars`` is reported with its line and left unchecked; the others go on.

Example:
    >>> from safeguard.guard import Guard
    >>> from safeguard.reports.data import PromptLine
    >>> [r.verdict.action.value for r in check_prompt_lines([PromptLine(1, "a pipe bomb")], Guard.create())]
    ['block']
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from safeguard.guard import DEADLINE_CHUNK, Guard
from safeguard.reports.data import PromptLine
from safeguard.reports.progress import ProgressBar
from safeguard.verdict import Verdict

__all__ = ["PromptResult", "check_prompt_lines"]


@dataclass(frozen=True)
class PromptResult:
    """One prompt of the file and its verdict, or why it was not checked."""

    line: PromptLine
    verdict: Verdict | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """One JSON Lines record: line, CSV id, prompt and the moderation-style verdict (or the error)."""
        record: dict[str, Any] = {"line": self.line.line, "id": self.line.id, "prompt": self.line.prompt}
        if self.verdict is None:
            return {**record, "error": self.error}
        return {**record, "verdict": self.verdict.to_dict()}


def check_prompt_lines(
    lines: Sequence[PromptLine], guard: Guard, *, batch_size: int = DEADLINE_CHUNK, progress: ProgressBar | None = None
) -> Iterator[PromptResult]:
    """Yield a :class:`PromptResult` per line, in order, checking ``batch_size`` prompts per call."""
    limit = guard.settings.prompt.max_chars
    started = time.perf_counter()
    done = 0
    for start in range(0, len(lines), batch_size):
        batch = lines[start : start + batch_size]
        checked = [line for line in batch if len(line.prompt) <= limit]
        verdicts = dict(zip(checked, guard.check_prompts([line.prompt for line in checked]), strict=True))
        for line in batch:
            if line in verdicts:
                yield PromptResult(line, verdicts[line])
            else:
                why = f"line {line.line}: {len(line.prompt)} characters; the limit is {limit} (prompt.max_chars)"
                yield PromptResult(line, error=why)
        done += len(batch)
        if progress is not None:
            progress.advance(len(batch), rate=f"{done / (time.perf_counter() - started):.0f} prompts/s")
