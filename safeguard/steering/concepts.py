"""Concept encodings, concept subspaces and concept scores, cached per text encoder: the one place they are made.

Both users of concept scores go through here: the steering stage (:mod:`safeguard.steering.stage`, its own
score when the prompt stage is off) and the encoder prompt stage (:mod:`safeguard.stages.encoder`). The
formulas are in :mod:`safeguard.steering.projection`.

Encoding a category's concept and neutral phrases costs a few text-encoder passes; on a large encoder and a
full policy that is tens of seconds on a CPU, so it is done once per text encoder and reused by every stage,
guard and ``protect()`` call that scores or steers with that encoder. The cache is keyed by the text
encoder objects themselves, held through weak references (a cache entry never keeps an encoder alive, and
an encoder that is collected takes its entry with it), never by ``id()``, whose addresses are reused. Within
an encoder's entry, values are keyed by content: the texts encoded, the conditioning length, the device and
dtype, and for subspaces the projection parameters. So another policy whose category shares an id but not
its phrases, another preset, a pipeline moved to another device or dtype, or a pipeline whose text encoder
was swapped for another never reads encodings made for something else.

Example:
    >>> from safeguard.policy import load_policy
    >>> from safeguard.testing import tiny
    >>> pipe = tiny.sd_pipeline()
    >>> summaries = adapter_for(type(pipe)).encode(pipe, ["a lighthouse"]).summary()
    >>> scores = concept_scores(pipe, [load_policy()["gore"]], summaries)
    >>> scores["gore"].shape
    torch.Size([1])
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch

from safeguard.policy import Category
from safeguard.steering.adapters import Encoded, FamilyAdapter, adapter_for
from safeguard.steering.projection import ConceptScorer, concept_pairs, orthonormal_basis, steering_phrases

__all__ = [
    "concept_encoding",
    "concept_scorer",
    "concept_scores",
    "empty_encoding",
    "pair_encodings",
    "pooled_basis",
    "token_basis",
]

# Primary text encoder -> [(weak references to the pipeline's encoders and tokenizers, {content key: value})].
_CACHES: weakref.WeakKeyDictionary[Any, list[tuple[tuple[Any, ...], dict[tuple[Any, ...], Any]]]] = (
    weakref.WeakKeyDictionary()
)
_LOCK = threading.RLock()
_PARTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")


def _parts(pipe: Any) -> tuple[Any, ...]:
    return tuple(getattr(pipe, name, None) for name in _PARTS)


def _weak(part: Any) -> Any:
    if part is None:
        return None
    try:
        return weakref.ref(part)
    except TypeError:  # an object without weak references (a tokenizer of a slotted class): held as is
        return lambda: part


def _dtype(module: Any) -> str:
    parameter = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    return str(parameter.dtype) if parameter is not None else ""


def _cached(pipe: Any, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
    """``make()`` once per set of text encoders and tokenizers of ``pipe`` and per content ``key``."""
    parts = _parts(pipe)
    primary = next((p for p in parts[:3] if p is not None), None)
    if primary is None:
        return make()
    full_key = (*key, str(pipe._execution_device), *(_dtype(p) for p in parts[:3] if p is not None))
    with _LOCK:
        entries = _CACHES.setdefault(primary, [])
        # Encoders and tokenizers are compared as objects: the same encoder next to another tokenizer (or a
        # second encoder swapped) is another entry.
        entries[:] = [e for e in entries if all(r is None or r() is not None for r in e[0])]
        cache = next(
            (c for refs, c in entries if all((r() if r else None) is p for r, p in zip(refs, parts, strict=True))),
            None,
        )
        if cache is None:
            cache = {}
            entries.append((tuple(_weak(p) for p in parts), cache))
        if full_key not in cache:
            cache[full_key] = make()
        return cache[full_key]


def _encode(pipe: Any, adapter: FamilyAdapter, texts: Iterable[str], length: int | None) -> Encoded:
    texts = tuple(texts)
    return _cached(pipe, ("encoded", texts, length), lambda: adapter.encode(pipe, list(texts), length))


def _phrases(category: Category) -> tuple[tuple[str, ...], tuple[str, ...]]:
    concepts, neutrals = concept_pairs(category)
    return tuple(concepts), tuple(neutrals)


def pair_encodings(pipe: Any, category: Category, length: int | None = None) -> tuple[Encoded, Encoded]:
    """A category's concept phrases and neutral phrases, encoded with ``pipe``'s own text encoder(s)."""
    adapter = adapter_for(type(pipe))
    concepts, neutrals = concept_pairs(category)
    return _encode(pipe, adapter, concepts, length), _encode(pipe, adapter, neutrals, length)


def concept_scorer(pipe: Any, category: Category) -> ConceptScorer:
    """The [0, 1] concept scorer of ``category`` for ``pipe``'s text encoder(s)."""

    def make() -> ConceptScorer:
        concepts, neutrals = pair_encodings(pipe, category)
        return ConceptScorer.fit(concepts.summary().cpu(), neutrals.summary().cpu())

    return _cached(pipe, ("scorer", *_phrases(category)), make)


def concept_scores(pipe: Any, categories: Iterable[Category], summaries: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per category, the concept scores ``(n,)``, on the CPU, of summary vectors ``(n, D)`` (``Encoded.summary()``)."""
    summaries = summaries.detach().float().cpu()
    return {c.id: concept_scorer(pipe, c).score(summaries) for c in categories}


def token_basis(pipe: Any, category: Category, length: int, energy: float, max_rank: int) -> torch.Tensor:
    """The orthonormal basis ``(D, r)`` of ``category``'s concept subspace for token embeddings of ``length``."""

    def make() -> torch.Tensor:
        concepts, neutrals = pair_encodings(pipe, category, length)
        rows = (concepts.tokens - neutrals.tokens)[:, 1:].reshape(-1, concepts.tokens.shape[-1])
        return orthonormal_basis(rows, energy, max_rank)

    return _cached(pipe, ("tokens", *_phrases(category), length, energy, max_rank), make)


def pooled_basis(pipe: Any, category: Category, energy: float, max_rank: int) -> torch.Tensor:
    """The orthonormal basis of ``category``'s concept subspace for pooled embeddings."""

    def make() -> torch.Tensor:
        concepts, neutrals = pair_encodings(pipe, category)
        rows = concepts.pooled - neutrals.pooled  # type: ignore[operator]
        return orthonormal_basis(rows, energy, max_rank)

    return _cached(pipe, ("pooled", *_phrases(category), energy, max_rank), make)


def concept_encoding(pipe: Any, categories: Iterable[Category], length: int) -> Encoded:
    """SLD's safety concept for a set of categories: one text listing their phrases, encoded."""
    text = ", ".join(p for c in categories for p in steering_phrases(c))
    return _encode(pipe, adapter_for(type(pipe)), [text], length)


def empty_encoding(pipe: Any, length: int) -> Encoded:
    """The empty prompt, encoded (the reference of projection and of safety guidance)."""
    return _encode(pipe, adapter_for(type(pipe)), [""], length)
