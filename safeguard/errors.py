"""The exception tree of safeguard.

Every exception the library raises on purpose derives from :class:`SafeguardError`::

    SafeguardError
    ├── ConfigError               bad policy, preset, user file or keyword override
    ├── UnsupportedPipelineError  protect() got a pipeline it cannot wrap, or steering on an unregistered class
    ├── InputError                a prompt or image that cannot be checked (empty, too long, wrong shape)
    └── ContentBlocked            the policy blocked something; carries the Verdict that did it
        ├── PromptBlocked         raised before any denoiser step
        └── ImageBlocked          raised after decoding, when the preset asks to raise

Example:
    >>> import safeguard
    >>> try:
    ...     safeguard.check_prompt("", preset="balanced")
    ... except safeguard.InputError as err:
    ...     print(type(err).__name__)
    InputError
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from safeguard.verdict import Verdict

__all__ = [
    "ConfigError",
    "ContentBlocked",
    "ImageBlocked",
    "InputError",
    "PromptBlocked",
    "SafeguardError",
    "UnsupportedPipelineError",
]


class SafeguardError(Exception):
    """Root of every exception safeguard raises on purpose."""


class ConfigError(SafeguardError, ValueError):
    """A policy, preset, user config file or keyword override is invalid.

    The message names the offending key and, where there is one, the file it came from.
    """


class UnsupportedPipelineError(SafeguardError, TypeError):
    """``protect`` was given a pipeline it cannot wrap (no ``prompt`` argument, no ``image_processor``), or steering
    was asked for on a class with no registered family (:func:`safeguard.register_pipeline`)."""


class InputError(SafeguardError, ValueError):
    """A prompt or image cannot be checked: empty, too long, wrong type or shape."""


class ContentBlocked(SafeguardError):
    """The policy blocked content. ``verdict`` is the combined verdict that caused it."""

    def __init__(self, message: str, verdict: Verdict, verdicts: tuple[Verdict, ...] = ()) -> None:
        super().__init__(message)
        self.verdict = verdict
        self.verdicts = verdicts or (verdict,)


class PromptBlocked(ContentBlocked):
    """A prompt was blocked before any denoiser step ran."""


class ImageBlocked(ContentBlocked):
    """A generated or submitted image was blocked."""
