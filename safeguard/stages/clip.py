"""Zero-shot CLIP image checker: image embeddings against the policy's concept phrases, on the pipeline's device.

Scores. Each image-enforced category ``c`` of the policy has concept phrases; each phrase is embedded under
every prompt template (``output.clip.templates``, or the policy image model's own) and the template embeddings
are averaged. A category's score
is the probability mass its concepts take in a softmax over ``c``'s concepts together with the neutral concepts
(``output.clip.neutral_concepts``, or the policy image model's own), at the model's own logit scale::

    score_c = sum_k exp(s * <x, c_k>) / (sum_k exp(s * <x, c_k>) + sum_j exp(s * <x, n_j>))

so every score lies in ``[0, 1]``, categories are scored independently of each other (an image can be both
violent and gory) and a threshold of 0.5 means "closer to the category than to everyday content". The
``minor`` signal (``output.clip.minor_concepts``) is scored the same way and reported under the signal id, so
the image child-safety conjunction can fire (see :mod:`safeguard.stages.combine`).

Everything before the one host transfer of the final scores runs in torch on the images' device: resize,
centre crop and normalisation are batched tensor operations, there is no PIL or numpy round trip and no
per-image synchronisation. On CUDA the model runs in half precision. Concept text embeddings are computed
once per (model, policy version, templates) and cached.

Two encoders sit behind one interface (:class:`ClipEncoder`): transformers' ``CLIPModel`` and open_clip.

Example:
    >>> import torch
    >>> from safeguard.stages.clip import preprocess
    >>> preprocess(torch.rand(2, 3, 512, 384), 224, (0.5,) * 3, (0.5,) * 3).shape
    torch.Size([2, 3, 224, 224])
"""

from __future__ import annotations

import functools
import json
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from safeguard._quiet import no_loading_bars
from safeguard.config import OutputSettings
from safeguard.errors import ConfigError
from safeguard.policy import Policy
from safeguard.verdict import Action, Finding, Verdict

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "ClipEncoder",
    "ClipImageStage",
    "OpenClipEncoder",
    "OpenClipImageStage",
    "TransformersClipEncoder",
    "load_transformers_clip",
    "preprocess",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: The signal id the CLIP checker reports for "a minor is shown" (the policy's conjunction uses it).
MINOR_SIGNAL = "minor"


def preprocess(
    images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype | None = None
) -> torch.Tensor:
    """CLIP preprocessing of a ``(B, 3, H, W)`` batch in ``[0, 1]``, in torch on the batch's own device.

    Resize the shorter side to ``size`` (bicubic, antialiased, as CLIP was trained), centre crop to
    ``size`` x ``size``, normalise per channel.

    Example:
        >>> preprocess(torch.zeros(1, 3, 64, 128), 32, (0.0,) * 3, (1.0,) * 3).shape
        torch.Size([1, 3, 32, 32])
    """
    height, width = images.shape[-2:]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    x = images.float()
    if (new_h, new_w) != (height, width):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[..., top : top + size, left : left + size].clamp(0, 1)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    x = (x - m) / s
    return x if dtype is None else x.to(dtype)


class ClipEncoder(Protocol):
    """What the checker needs from a CLIP model: unit image and text embeddings and its preprocessing."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    key: str

    @property
    def module(self) -> torch.nn.Module: ...

    def logit_scale(self) -> torch.Tensor: ...

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


def _pooled(output: Any) -> torch.Tensor:
    # transformers 5 returns an output object from get_*_features; older versions a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@dataclass
class TransformersClipEncoder:
    """A transformers ``CLIPModel`` with its tokenizer and preprocessing numbers.

    Example:
        >>> enc = load_transformers_clip("/path/to/clip-folder")  # doctest: +SKIP
    """

    model: Any
    tokenizer: Any
    image_size: int
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    key: str = ""

    def __post_init__(self) -> None:
        self.key = self.key or f"transformers:{id(self.model)}"

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    def logit_scale(self) -> torch.Tensor:
        # A tensor on the model's device: reading it on the host would synchronise the device.
        return self.model.logit_scale.detach().float().exp().clamp(max=100)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(_pooled(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        max_length = min(77, int(getattr(self.tokenizer, "model_max_length", 77) or 77))
        tokens = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        tokens = {k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return F.normalize(_pooled(self.model.get_text_features(**tokens)).float(), dim=-1)


@dataclass
class OpenClipEncoder:
    """An open_clip model (``create_model_and_transforms``) with its tokenizer and preprocessing numbers."""

    model: Any
    tokenizer: Any
    image_size: int
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    key: str = ""

    def __post_init__(self) -> None:
        self.key = self.key or f"openclip:{id(self.model)}"

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    def logit_scale(self) -> torch.Tensor:
        # A tensor on the model's device: reading it on the host would synchronise the device.
        return self.model.logit_scale.detach().float().exp().clamp(max=100)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(pixels).float(), dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return F.normalize(self.model.encode_text(self.tokenizer(list(texts)).to(device)).float(), dim=-1)


@functools.lru_cache(maxsize=4)
def load_transformers_clip(path: str) -> TransformersClipEncoder:
    """Load a transformers ``CLIPModel`` folder (weights, tokenizer, optional ``preprocessor_config.json``).

    Loaded once per process and path.

    Raises:
        ConfigError: the folder does not exist or does not hold a loadable CLIP model.

    Example:
        >>> load_transformers_clip("/no/such/folder")
        Traceback (most recent call last):
        ...
        safeguard.errors.ConfigError: CLIP weights not found at /no/such/folder ...
    """
    from transformers import AutoTokenizer, CLIPModel

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"CLIP weights not found at {folder} (no config.json); give a folder saved with "
            "CLIPModel.save_pretrained, or remove the clip backend from output.backends"
        )
    try:
        with no_loading_bars():
            model = CLIPModel.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as err:
        raise ConfigError(f"could not load CLIP weights from {folder}: {type(err).__name__}: {err}") from err
    size = int(model.config.vision_config.image_size)
    mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        data = json.loads(pre.read_text())
        crop = data.get("crop_size", size)
        size = int(crop["height"] if isinstance(crop, dict) else crop)
        mean = tuple(float(v) for v in data.get("image_mean", mean))  # type: ignore[assignment]
        std = tuple(float(v) for v in data.get("image_std", std))  # type: ignore[assignment]
    return TransformersClipEncoder(model, tokenizer, size, mean, std, key=f"transformers:{folder.resolve()}")


def _from_hub_cache(model_id: str) -> str | None:
    # Only the local cache: safeguard never downloads at run time.
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(model_id, local_files_only=True)
    except Exception:
        return None


def _as_encoder(weights: Any) -> ClipEncoder:
    """A CLIP encoder from what a user may give: a path, a loaded ``CLIPModel`` or an encoder."""
    if isinstance(weights, TransformersClipEncoder | OpenClipEncoder):
        return weights
    if isinstance(weights, str | Path):
        path = Path(weights).expanduser()
        if not path.exists() and isinstance(weights, str) and weights.count("/") == 1:
            # A hub model id: only ever looked up in the local cache.
            cached = _from_hub_cache(weights)
            if cached is None:
                raise ConfigError(
                    f"CLIP model {weights!r} is not in the local Hugging Face cache and safeguard never downloads; "
                    "download it once (huggingface-cli download) or give a local folder"
                )
            path = Path(cached)
        return load_transformers_clip(str(path.resolve()))
    if hasattr(weights, "get_image_features"):
        config = weights.config
        tokenizer = _tokenizer_for(weights)
        return TransformersClipEncoder(weights, tokenizer, int(config.vision_config.image_size))
    if hasattr(weights, "model") and hasattr(weights, "tokenizer") and hasattr(weights, "image_size"):
        # A bundle such as the toy world's ToyClip: model, tokenizer, image_size, mean, std.
        return TransformersClipEncoder(
            weights.model,
            weights.tokenizer,
            int(weights.image_size),
            tuple(getattr(weights, "mean", OPENAI_CLIP_MEAN)),
            tuple(getattr(weights, "std", OPENAI_CLIP_STD)),
        )
    raise ConfigError(
        f"output.clip.weights must be a folder path, a transformers CLIPModel or a ClipEncoder, "
        f"got {type(weights).__name__}"
    )


def _tokenizer_for(model: Any) -> Any:
    path = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
    if path and Path(path).is_dir():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    from transformers import CLIPTokenizer

    from safeguard.toy import TOY_WORLD_DIR

    # Every CLIP checkpoint uses the same vocabulary, and the toy world ships it (its pipeline's tokenizer is the
    # real CLIP one); only the context length differs.
    return CLIPTokenizer.from_pretrained(TOY_WORLD_DIR / "pipeline" / "tokenizer", model_max_length=77)


# Concept embeddings per encoder module, then per (policy id, version, phrases): dropped with the model.
_TEXT_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, torch.Tensor]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class _Concepts:
    names: tuple[str, ...]  # category ids, then the minor signal when configured
    phrases: tuple[str, ...]
    owner: tuple[int, ...]  # index into names per phrase
    neutral: tuple[str, ...]


class ClipImageStage:
    """Scores every image-enforced policy category with a zero-shot CLIP model (transformers backend).

    Weights come from ``output.clip.weights`` (a folder path, a hub model id found in the local cache, a loaded
    ``CLIPModel`` or an encoder; also the ``image_model=`` keyword) or else from the policy's own
    ``image_model`` when its backend is ``clip``.

    Raises:
        ConfigError: no weights, or weights that cannot be loaded.

    Example:
        >>> from safeguard.config import resolve_settings
        >>> from safeguard.policy import load_policy
        >>> stage = ClipImageStage(load_policy(), resolve_settings().output)  # doctest: +SKIP
    """

    name = "clip"
    backend = "clip"

    def __init__(self, policy: Policy, settings: OutputSettings) -> None:
        self.policy = policy
        self.settings = settings
        encoder = self._find_encoder()
        if encoder is None:
            raise ConfigError(
                f"the {self.name} output backend needs CLIP weights: pass image_model=<folder, hub id in the local "
                f"cache, or CLIPModel>, set output.{self.backend}.weights, or remove {self.name} from output.backends"
            )
        self.encoder: ClipEncoder = encoder
        # A policy's own image model may bring the neutral concepts and templates of its world.
        model = policy.image_model
        own = model if model is not None and model.backend == self.backend and self._weights(settings) is None else None
        self.templates: tuple[str, ...] = (own and own.templates) or tuple(settings.clip.templates) or ("{}",)
        self.neutral_concepts: tuple[str, ...] = (own and own.neutral_concepts) or tuple(settings.clip.neutral_concepts)
        self.concepts = self._concepts()
        names = set(self.concepts.names)
        self.categories: tuple[str, ...] = tuple(n for n in self.concepts.names if n in policy)
        self.signals: tuple[str, ...] = (MINOR_SIGNAL,) if MINOR_SIGNAL in names else ()

    # -- weights ---------------------------------------------------------------------------------------
    @classmethod
    def wanted(cls, policy: Policy, settings: OutputSettings) -> bool:
        """Whether this backend runs: listed in ``output.backends``, given weights, or named by the policy."""
        model = policy.image_model
        return (
            cls.name in settings.backends
            or cls._weights(settings) is not None
            or (model is not None and model.backend == cls.backend)
        )

    @staticmethod
    def _weights(settings: OutputSettings) -> Any:
        return settings.clip.weights

    def _find_encoder(self) -> ClipEncoder | None:
        weights = self._weights(self.settings)
        if weights is not None:
            return _as_encoder(weights)
        model = self.policy.image_model
        if model is not None and model.backend == self.backend:
            if not model.path.exists():
                raise ConfigError(f"policy {self.policy.id!r} names image model weights at {model.path}, not found")
            return _as_encoder(model.path)
        return None

    # -- concepts --------------------------------------------------------------------------------------
    def _concepts(self) -> _Concepts:
        clip = self.settings.clip
        names, phrases, owner = [], [], []
        for category in self.policy.enforced("image"):
            if not category.concepts:
                continue
            names.append(category.id)
            for concept in category.concepts:
                phrases.append(concept)
                owner.append(len(names) - 1)
        # The minor signal is scored only for a policy whose image conjunctions use it.
        uses_minor = any(
            MINOR_SIGNAL in rule.all_of and "image" in self.policy[rule.category].applies_to
            for rule in self.policy.conjunctions
        )
        if clip.minor_concepts and uses_minor:
            names.append(MINOR_SIGNAL)
            for concept in clip.minor_concepts:
                phrases.append(concept)
                owner.append(len(names) - 1)
        return _Concepts(tuple(names), tuple(phrases), tuple(owner), self.neutral_concepts)

    def text_cache_key(self) -> tuple:
        """The key of this stage's concept embeddings in the per-model cache: policy id and version, templates
        and phrases (so an edited policy or template list never reuses stale embeddings)."""
        return (self.policy.id, self.policy.version, self.templates, self.concepts.phrases, self.concepts.neutral)

    def text_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit embeddings of the concept phrases and of the neutral phrases, cached per model and policy.

        Each phrase's embedding is the normalised mean of its embeddings under every template.
        """
        module = self.encoder.module
        templates = self.templates
        key = self.text_cache_key()
        per_model = _TEXT_CACHE.setdefault(module, {})
        device = next(module.parameters()).device
        if key not in per_model:
            with torch.inference_mode():
                phrases = [*self.concepts.phrases, *self.concepts.neutral]
                texts = [t.format(p) for p in phrases for t in templates]
                emb = self.encoder.encode_texts(texts).view(len(phrases), len(templates), -1).mean(dim=1)
                per_model[key] = F.normalize(emb, dim=-1).float()
        emb = per_model[key].to(device)
        count = len(self.concepts.phrases)
        return emb[:count], emb[count:]

    # -- placement -------------------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> ClipImageStage:
        """Follow the pipeline to ``device``; half precision on CUDA."""
        _move(self.encoder.module, torch.device(device))
        return self

    # -- checking --------------------------------------------------------------------------------------
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, len(concepts.names))`` scores in ``[0, 1]`` for a ``(B, 3, H, W)`` batch in ``[0, 1]``.

        Runs on the images' device. When that is not where the pipeline placed the checker (a pipeline with
        model CPU offload decodes on the GPU while its modules rest on the CPU), the model visits the images'
        device for the call and goes back afterwards, as the pipeline's own modules do.
        """
        module = self.encoder.module
        home = next(module.parameters()).device
        visiting = home != images.device
        if visiting:
            _move(module, images.device)
        try:
            dtype = next(module.parameters()).dtype
            concepts, neutral = self.text_embeddings()
            with torch.inference_mode():
                pixels = preprocess(images, self.encoder.image_size, self.encoder.mean, self.encoder.std, dtype)
                image_emb = self.encoder.encode_images(pixels)
                scale = self.encoder.logit_scale()
                return _category_scores(
                    image_emb, concepts, neutral, self.concepts.owner, len(self.concepts.names), scale
                )
        finally:
            if visiting:
                _move(module, home)

    def check(self, images: torch.Tensor) -> list[Verdict]:
        scores = self.scores(images).cpu().tolist()  # the one host transfer for the whole batch
        thresholds = self.settings.thresholds
        verdicts = []
        for row in scores:
            per_name = dict(zip(self.concepts.names, row, strict=True))
            findings = []
            for category in self.categories:
                score = per_name[category]
                _, block = thresholds.for_category(category)
                if math.isfinite(score) and score >= block:
                    findings.append(
                        Finding(category, score, block, "image", Action.BLOCK, self.name, "zero-shot CLIP concepts")
                    )
            verdicts.append(Verdict.for_stage(findings, per_name, self.policy, "output"))
        return verdicts


def _category_scores(
    image_emb: torch.Tensor,
    concepts: torch.Tensor,
    neutral: torch.Tensor,
    owner: Sequence[int],
    count: int,
    scale: torch.Tensor | float,
) -> torch.Tensor:
    # Per name: logsumexp over its own concepts against logsumexp over the neutral set, i.e. a two-way softmax.
    logits = scale * image_emb @ concepts.T  # (B, P)
    index = torch.tensor(owner, device=logits.device)
    member = F.one_hot(index, count).T.bool()  # (names, P)
    own = torch.where(member[None], logits[:, None, :], torch.full_like(logits[:, None, :], -math.inf))
    own = torch.logsumexp(own, dim=-1)  # (B, names)
    if neutral.shape[0] == 0:
        return torch.sigmoid(own)
    rest = torch.logsumexp(scale * image_emb @ neutral.T, dim=-1, keepdim=True)  # (B, 1)
    return torch.sigmoid(own - rest)


def _move(module: torch.nn.Module, device: torch.device) -> None:
    module.to(device=device, dtype=torch.float16 if device.type == "cuda" else torch.float32)


class OpenClipImageStage(ClipImageStage):
    """The same checker on an open_clip model (the ``openclip`` extra; needs torchvision).

    Weights: ``output.openclip.weights`` (a checkpoint file or an open_clip ``pretrained`` tag already in
    the local cache) for the architecture ``output.openclip.model``, or the policy's ``image_model`` when its
    backend is ``openclip``.
    """

    name = "openclip"
    backend = "openclip"

    @staticmethod
    def _weights(settings: OutputSettings) -> Any:
        return settings.openclip.weights

    def _find_encoder(self) -> ClipEncoder | None:
        spec = self.settings.openclip
        weights = spec.weights
        model = self.policy.image_model
        if weights is None and model is not None and model.backend == self.backend:
            weights = model.path
        if weights is None:
            return None
        if isinstance(weights, OpenClipEncoder):
            return weights
        looks_like_file = isinstance(weights, Path) or (
            isinstance(weights, str) and ("/" in weights or weights.endswith((".bin", ".pt", ".safetensors")))
        )
        if looks_like_file and not Path(weights).expanduser().exists():
            raise ConfigError(f"open_clip weights not found at {weights}")
        return load_open_clip(spec.model, str(weights))


@functools.lru_cache(maxsize=2)
def load_open_clip(architecture: str, pretrained: str) -> OpenClipEncoder:
    """Build an open_clip model with ``create_model_and_transforms`` and wrap it as an encoder.

    Raises:
        ConfigError: open_clip cannot be imported (it needs torchvision) or the weights do not load.
    """
    try:
        import open_clip
    except Exception as err:
        raise ConfigError(
            f"the openclip backend needs open_clip and torchvision (pip install 'diffusers-safeguard[openclip]'): "
            f"{type(err).__name__}: {err}"
        ) from err
    try:
        model, _, transform = open_clip.create_model_and_transforms(architecture, pretrained=pretrained)
    except Exception as err:
        raise ConfigError(f"could not load open_clip {architecture} from {pretrained}: {err}") from err
    tokenizer = open_clip.get_tokenizer(architecture)
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, tuple | list) else size)
    mean = tuple(cfg.get("mean", OPENAI_CLIP_MEAN))
    std = tuple(cfg.get("std", OPENAI_CLIP_STD))
    del transform  # torchvision's PIL transform: we preprocess in torch instead
    return OpenClipEncoder(model.eval(), tokenizer, size, mean, std, key=f"openclip:{architecture}:{pretrained}")
