"""Keeping stderr to what a user can act on while safeguard loads its own models.

Two kinds of output carry nothing to act on: the progress bars transformers and diffusers draw while they load
weights (the toy world, the bundled encoders: a few files from disk, done in a second), and transformers' notice
that torchvision is missing, which it works around by itself with the PIL image processors. Both are silenced
here, and only here: the bars only for the duration of safeguard's own loads, and the notice only where the
command line asks for it, so a user's own code keeps every warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["hide_torchvision_notice", "no_loading_bars"]

# transformers.utils.import_utils logs this (once per class) when ``<Model>ImageProcessor`` falls back to PIL.
_TORCHVISION_NOTICE = "requires torchvision (not installed); falling back to"


@contextmanager
def no_loading_bars() -> Iterator[None]:
    """No transformers or diffusers progress bars inside the block; each library's setting is restored after it.

    The setting is process-wide, so a bar another thread starts meanwhile is not drawn either.

    Example:
        >>> from transformers.utils import logging as transformers_logging
        >>> with no_loading_bars():
        ...     transformers_logging.is_progress_bar_enabled()
        False
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    enabled = [lib for lib in (transformers_logging, diffusers_logging) if lib.is_progress_bar_enabled()]
    for lib in enabled:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in enabled:
            lib.enable_progress_bar()


class _NotTorchvisionNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _TORCHVISION_NOTICE not in record.getMessage()


def hide_torchvision_notice() -> None:
    """Drop transformers' "requires torchvision (not installed)" notice, and no other record, from now on.

    The command line calls this: the notice comes from importing diffusers pipelines, an import the user did not
    write, and the PIL fallback it announces works (safeguard's checks preprocess images themselves).
    """
    logger = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _NotTorchvisionNotice) for f in logger.filters):
        logger.addFilter(_NotTorchvisionNotice())
