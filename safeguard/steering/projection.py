"""Concept subspaces in the denoiser's conditioning space, concept scores, and embedding projection.

For each policy category, each concept phrase ``c`` is paired with a neutral phrase ``n``: the same phrase with
the category's keywords removed ("a red shape" -> "a shape"), or the empty prompt when no keyword occurs in it.
Both are encoded with the pipeline's own text encoder(s) (CLIP, and T5 for SD3 and Flux), exactly as the
pipeline encodes a prompt.

**Concept subspace** (in the spirit of SAFREE, Yoon et al. 2024, with our own construction). The rows
``E(c)[t] - E(n)[t]`` for every pair and token position ``t >= 1`` are what the concept adds to the
conditioning; their leading right singular vectors form an orthonormal basis ``U`` (``D x r``) of the smallest
rank that keeps ``energy`` of their squared norm, at most ``max_rank``. Pooled embeddings get their own basis
``U_p`` from ``pool(c) - pool(n)``.

**Which tokens carry the concept.** With ``r_t`` the empty prompt's embedding at position ``t``, the share
``a_t = |U^T (e_t - r_t)| / |e_t - r_t|`` of a token's deviation from the empty prompt that lies in the
subspace; tokens with ``a_t >= token_threshold`` are projected, the others are kept as they are.

**Projection.** ``e_t' = e_t - alpha * U U^T (e_t - r_t)``: the token's concept coordinates are brought to the
empty prompt's (``alpha = 1``) and everything outside the subspace is kept. Pooled:
``p' = p - alpha * U_p U_p^T (p - p_0)``.

**Concept score** in [0, 1], for prompts the prompt stage did not flag (stage off, or ``prompt_embeds``): with
``s(x)`` the unit-normalised summary vector (pooled embedding; SD 1.x/2.x: mean token embedding after BOS),
the concept direction ``d = normalise(mean_k (s(c_k) - s(n_k)))``, and ``m_c``, ``m_n`` the mean of
``<s(c_k), d>`` and ``<s(n_k), d>``, the score is ``clip((<s(x), d> - m_n) / (m_c - m_n), 0, 1)``: 0 means no
more of the concept than the neutral phrases, 1 as much as the concept phrases themselves.

Example:
    >>> import torch
    >>> basis = orthonormal_basis(torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]), energy=0.9, max_rank=4)
    >>> basis.shape
    torch.Size([3, 1])
    >>> project(torch.tensor([[1.0, 2.0, 3.0]]), basis, torch.zeros(1, 3), alpha=1.0, token_threshold=0.0)
    tensor([[0., 2., 3.]])
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from safeguard.policy import Category

__all__ = ["ConceptScorer", "concept_pairs", "neutral_phrase", "orthonormal_basis", "project", "steering_phrases"]

# Rows kept for one subspace fit: the largest differences, so a long concept list on a wide encoder
# (SD3: 333 tokens x 4096) stays a small SVD.
_MAX_ROWS = 2048


def steering_phrases(category: Category) -> tuple[str, ...]:
    """The phrases that stand for a category: its concepts, else its keywords (without wildcards)."""
    phrases = category.concepts or tuple(k.rstrip("*") for k in category.keywords)
    return tuple(p for p in phrases if p.strip())


def neutral_phrase(phrase: str, keywords: tuple[str, ...]) -> str:
    """``phrase`` with the category's keywords removed (whole words; ``stem*`` removes words starting so).

    Example:
        >>> neutral_phrase("a scarlet shape", ("red", "scarlet"))
        'a shape'
        >>> neutral_phrase("a nude figure", ())
        ''
    """
    out = phrase
    for keyword in keywords:
        stem = re.escape(keyword.rstrip("*").casefold())
        tail = r"\w*" if keyword.endswith("*") else r"(?:e?s)?"
        out = re.sub(rf"\b{stem}{tail}\b", " ", out, flags=re.IGNORECASE)
    out = " ".join(out.split())
    return "" if out == " ".join(phrase.split()) else out


def concept_pairs(category: Category) -> tuple[list[str], list[str]]:
    """A category's concept phrases and, for each, its neutral phrase.

    Example:
        >>> from safeguard.policy import load_policy
        >>> from safeguard.toy import POLICY_PATH
        >>> concept_pairs(load_policy(POLICY_PATH)["red"])[1][:2]
        ['a shape', 'a shape']
    """
    concepts = list(steering_phrases(category))
    return concepts, [neutral_phrase(p, category.keywords) for p in concepts]


def orthonormal_basis(rows: torch.Tensor, energy: float, max_rank: int) -> torch.Tensor:
    """Orthonormal basis ``(D, r)`` of the leading right singular vectors of ``rows`` ``(m, D)``.

    ``r`` is the smallest rank holding ``energy`` of the rows' squared norm, capped at ``max_rank``.
    """
    rows = rows.float()
    if rows.shape[0] > _MAX_ROWS:
        rows = rows[rows.norm(dim=1).topk(_MAX_ROWS).indices]
    _, singular, vh = torch.linalg.svd(rows, full_matrices=False)
    power = singular.square()
    total = power.sum()
    if total <= 0:
        return rows.new_zeros(rows.shape[1], 0)
    cumulative = power.cumsum(0) / total
    rank = int((cumulative < energy).sum().item()) + 1
    rank = max(1, min(rank, max_rank, int((singular > singular[0] * 1e-6).sum().item())))
    return vh[:rank].T.contiguous()


def merge_bases(bases: list[torch.Tensor]) -> torch.Tensor:
    """An orthonormal basis of the union of several bases' spans."""
    if len(bases) == 1:
        return bases[0]
    stacked = torch.cat(bases, dim=1)
    u, singular, _ = torch.linalg.svd(stacked, full_matrices=False)
    return u[:, singular > 1e-6].contiguous()


def project(
    tokens: torch.Tensor, basis: torch.Tensor, reference: torch.Tensor, alpha: float, token_threshold: float
) -> torch.Tensor:
    """Project the concept-carrying rows of ``tokens`` ``(L, D)`` out of ``basis`` relative to ``reference``.

    Computed in float32; returned in the input dtype.
    """
    x = tokens.float()
    deviation = x - reference.float()
    coords = deviation @ basis
    share = coords.norm(dim=-1) / deviation.norm(dim=-1).clamp_min(1e-12)
    selected = (share >= token_threshold) & (share > 0)
    out = x - alpha * selected.unsqueeze(-1).float() * (coords @ basis.T)
    return out.to(tokens.dtype)


@dataclass(frozen=True)
class ConceptScorer:
    """The [0, 1] concept score of one category (see the module docstring for the scale)."""

    direction: torch.Tensor
    neutral_level: float
    concept_level: float

    @classmethod
    def fit(cls, concepts: torch.Tensor, neutrals: torch.Tensor) -> ConceptScorer:
        """From summary vectors of the concept phrases and of their neutral phrases, ``(K, D)`` each."""
        c = torch.nn.functional.normalize(concepts.float(), dim=-1)
        n = torch.nn.functional.normalize(neutrals.float(), dim=-1)
        direction = torch.nn.functional.normalize((c - n).mean(dim=0), dim=0)
        return cls(direction, float((n @ direction).mean()), float((c @ direction).mean()))

    def score(self, summaries: torch.Tensor) -> torch.Tensor:
        """Scores ``(n,)`` of summary vectors ``(n, D)``."""
        x = torch.nn.functional.normalize(summaries.float(), dim=-1) @ self.direction.to(summaries.device)
        span = max(self.concept_level - self.neutral_level, 1e-6)
        return ((x - self.neutral_level) / span).clamp(0.0, 1.0)
