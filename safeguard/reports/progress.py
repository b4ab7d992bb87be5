"""Progress bars for long command-line runs: drawn on stderr when it is a terminal, never into pipes or files.

The bar is drawn with ``rich``; it is a convenience, never part of a result.

Example:
    >>> with ProgressBar(3, "checking", enabled=False) as bar:
    ...     for _ in range(3):
    ...         bar.advance()
    >>> bar.done
    3
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import IO, Any

__all__ = ["ProgressBar"]


class ProgressBar:
    """A bar of ``total`` steps on ``stream`` (default ``sys.stderr``).

    ``enabled=None`` draws it only when ``stream`` is a terminal; ``False`` never draws it. Lines printed to
    stdout while the bar runs go above it when stdout is the terminal too, and straight to stdout otherwise.
    """

    def __init__(self, total: int, description: str, *, enabled: bool | None = None, stream: IO[str] | None = None):
        self.total = total
        self.description = description
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = _isatty(self._stream) if enabled is None else enabled
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> ProgressBar:
        if not self._enabled:
            return self
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(file=self._stream)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=console,
            # Capturing stdout moves it onto the bar's stream: only right when both are the same terminal.
            redirect_stdout=_isatty(sys.stdout),
            redirect_stderr=False,
        )
        self._progress.__enter__()
        self._task = self._progress.add_task(self.description, total=self.total, rate="")
        return self

    def advance(self, steps: int = 1, rate: str = "") -> None:
        """Count ``steps`` more as done; ``rate`` is shown beside the bar (e.g. ``"640 prompts/s"``)."""
        self.done += steps
        if self._progress is not None:
            self._progress.update(self._task, advance=steps, rate=rate)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(kind, error, traceback)
            self._progress = None


def _isatty(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
