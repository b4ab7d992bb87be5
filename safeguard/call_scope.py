"""One protected call at a time per denoiser, and which protected call is running in this thread.

Pipelines made from each other's components (``Pipeline(**pipe.components)``, ``from_pipe``) share their
denoiser, and a protected call puts per-call hooks on it and an interception on its image processor. So
protected calls that share a denoiser run one after another, on a lock tied to that denoiser: calls on one
denoiser would compete for the same device anyway, so what this costs is queueing, not throughput (a call
waits for the one before it, prompt check included). The hooks and interceptions a call installs act only
while that call is the one running in the current thread (:func:`current_call`): a call from another thread
that reaches the same modules, such as the unprotected pipeline used directly, passes through them untouched.

Example:
    >>> import torch
    >>> unet = torch.nn.Linear(2, 2)
    >>> with call_scope(unet) as call:
    ...     current_call() is call
    True
    >>> current_call() is None
    True
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["Call", "call_scope", "current_call"]


@dataclass(frozen=True, eq=False)
class Call:
    """A token for one protected call; ``name`` labels what the call installs (hooks, interceptions)."""

    name: str


_CURRENT: ContextVar[Call | None] = ContextVar("safeguard_current_call", default=None)
_COUNTER = itertools.count(1)
# Keyed weakly by the denoiser module itself (not its address): a freed module takes its lock with it.
_LOCKS: weakref.WeakKeyDictionary[object, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock_for(denoiser: object) -> threading.RLock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(denoiser)
        if lock is None:
            # Re-entrant: a callback inside a protected call may call a protected pipeline again.
            lock = _LOCKS[denoiser] = threading.RLock()
        return lock


@contextmanager
def call_scope(denoiser: object) -> Iterator[Call]:
    """Run one protected call: hold the denoiser's lock and mark the call as the current one in this thread."""
    with _lock_for(denoiser):
        call = Call(f"safeguard-call-{next(_COUNTER)}")
        token = _CURRENT.set(call)
        try:
            yield call
        finally:
            _CURRENT.reset(token)


def current_call() -> Call | None:
    """The protected call running in this thread, or None outside any protected call."""
    return _CURRENT.get()
