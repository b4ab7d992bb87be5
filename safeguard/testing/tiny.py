"""Tiny, real diffusers pipelines with random weights, built offline for tests.

Every builder returns a new pipeline made of the real diffusers and transformers classes, sized so that a
two-step run takes a fraction of a second on a CPU. Weights are random but deterministic: each builder
seeds its own RNG fork, so building a pipeline never changes the global torch RNG state.

The CLIP tokenizer carries the real OpenAI CLIP vocabulary, rebuilt from the BPE file that ships inside the
open_clip wheel, so prompts tokenize exactly as they would in a production pipeline. The T5 tokenizer is a
small Unigram model made in-process with the ``tokenizers`` library.

Example:
    >>> import torch
    >>> from safeguard.testing.tiny import sd_pipeline
    >>> pipe = sd_pipeline()
    >>> gen = torch.Generator().manual_seed(0)
    >>> pipe("a photo", num_inference_steps=2, generator=gen, output_type="np").images.shape
    (1, 64, 64, 3)
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import inspect
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch

if TYPE_CHECKING:
    from diffusers import (
        AutoencoderKL,
        FluxPipeline,
        StableDiffusion3Pipeline,
        StableDiffusionControlNetPipeline,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )
    from transformers import CLIPTextConfig, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

__all__ = [
    "T5_VOCAB_SIZE",
    "clip_tokenizer",
    "flux_pipeline",
    "sd3_pipeline",
    "sd_controlnet_pipeline",
    "sd_inpaint_pipeline",
    "sd_pipeline",
    "sdxl_pipeline",
    "t5_tokenizer",
]

CLIP_VOCAB_SIZE = 49408
CLIP_BOS_ID = 49406
CLIP_EOS_ID = 49407
T5_VOCAB_SIZE = 1000

_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# Number of merges CLIP uses: the vocab is 256 bytes, 256 bytes + "</w>", the merges and two special tokens.
_CLIP_NUM_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2
# Bump when the on-disk layout of the cached tokenizer files changes.
_CACHE_FORMAT = "1"

_PipeT = TypeVar("_PipeT")


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins CLIP's byte-level BPE uses for bytes 0..255, in CLIP's vocab order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols = {b: chr(b) for b in printable}
    # Bytes without a printable glyph are shifted past 255, in byte order, after the printable ones.
    shifted = [b for b in range(256) if b not in symbols]
    symbols.update({b: chr(256 + i) for i, b in enumerate(shifted)})
    return [symbols[b] for b in printable + shifted]


def _find_bpe_file() -> Path:
    # open_clip itself is not imported: its __init__ pulls in torchvision, which is not installed everywhere.
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"open_clip is not installed; it is needed only for its {_BPE_FILE} vocabulary file "
            "(pip install --no-deps open-clip-torch)"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / _BPE_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{_BPE_FILE} not found in the open_clip package at {spec.submodule_search_locations}")


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = Path(base) / "safeguard" / "tiny"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    root = Path(tempfile.gettempdir()) / f"safeguard-tiny-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _write_atomic(path: Path, text: str) -> None:
    # Parallel test workers may build the same folder at once; a rename never exposes a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@functools.cache
def _clip_tokenizer_files() -> Path:
    """Write CLIP's vocab.json and merges.txt (once) and return the folder that holds them."""
    bpe_path = _find_bpe_file()
    raw = bpe_path.read_bytes()
    key = hashlib.sha256(raw + _CACHE_FORMAT.encode()).hexdigest()[:16]
    folder = _cache_root() / f"clip-{key}"
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    if vocab_path.is_file() and merges_path.is_file():
        return folder

    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    # Line 0 is a version header; CLIP keeps the first _CLIP_NUM_MERGES merges after it.
    merges = [tuple(line.split()) for line in lines[1 : 1 + _CLIP_NUM_MERGES]]
    bytes_ = _byte_symbols()
    tokens = [*bytes_, *(s + "</w>" for s in bytes_), *("".join(m) for m in merges)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{bpe_path} gave {len(tokens)} CLIP tokens, expected {CLIP_VOCAB_SIZE}")

    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(vocab_path, json.dumps({tok: i for i, tok in enumerate(tokens)}, ensure_ascii=False))
    _write_atomic(merges_path, "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return folder


def _load_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    # Without a tokenizer_config.json the length would default to "unbounded"; pipelines pad to it.
    return CLIPTokenizer.from_pretrained(
        str(_clip_tokenizer_files()), model_max_length=model_max_length, local_files_only=True
    )


@functools.cache
def clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """The real OpenAI CLIP tokenizer, rebuilt offline from the BPE file inside the open_clip wheel.

    The vocab and merges files are written once to a cache folder keyed by the BPE file's hash. The result
    is cached too: repeat calls return the same object, so treat it as read-only. (The pipeline builders
    give each pipeline its own tokenizer.)

    Example:
        >>> tok = clip_tokenizer()
        >>> tok("a photo of a cat").input_ids
        [49406, 320, 1125, 539, 320, 2368, 49407]
    """
    return _load_clip_tokenizer(model_max_length)


@functools.cache
def _t5_pieces() -> tuple[tuple[str, float], ...]:
    """Unigram pieces and log-probabilities for the small T5 vocabulary (exactly T5_VOCAB_SIZE entries)."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -4.0)]
    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()/&+*#%@$=_[]"
    # Characters are the fallback for unknown words; their low score makes whole words win when they exist.
    pieces += [(c, -12.0) for c in chars]
    pieces += [("▁" + c, -11.0) for c in chars]

    # Whole words: common short words, then the most frequent words of three letters or more in the CLIP
    # vocabulary (its merge order roughly follows frequency). Shorter CLIP tokens are mostly word fragments.
    words = ["of", "in", "on", "an", "to", "at", "by", "is", "it", "as", "or", "be", "up", "no", "my", "we"]
    vocab = json.loads((_clip_tokenizer_files() / "vocab.json").read_text(encoding="utf-8"))
    for token in sorted(vocab, key=vocab.__getitem__):
        if len(pieces) + len(words) == T5_VOCAB_SIZE:
            break
        word = token.removesuffix("</w>")
        if word != token and re.fullmatch("[a-z]{3,}", word):
            words.append(word)
    pieces += [("▁" + w, -3.0 - math.log(rank + 1)) for rank, w in enumerate(words)]
    return tuple(pieces)


def t5_tokenizer() -> T5TokenizerFast:
    """A small T5-style Unigram tokenizer (vocab of T5_VOCAB_SIZE) built in-process, with no files.

    Special ids follow T5: ``<pad>`` = 0, ``</s>`` = 1 (appended to every sequence), ``<unk>`` = 2. Whole
    words come from the most common English words in the CLIP vocabulary; anything else falls back to
    characters or ``<unk>``.

    Example:
        >>> tok = t5_tokenizer()
        >>> ids = tok("a photo of a cat").input_ids
        >>> ids[-1] == tok.eos_token_id == 1
        True
        >>> tok.decode(ids, skip_special_tokens=True)
        'a photo of a cat'
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import T5TokenizerFast

    backend = Tokenizer(Unigram(list(_t5_pieces()), unk_id=2, byte_fallback=False))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=512,
    )


@contextmanager
def _seeded(seed: int = 0) -> Iterator[None]:
    """Seed the CPU generator for weight init, and put the caller's RNG state back afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield


def _built_quietly(build: Callable[[], _PipeT]) -> Callable[[], _PipeT]:
    @functools.wraps(build)
    def wrapper() -> _PipeT:
        with _seeded():
            pipe = build()
        # Modules built from a config start in training mode; loaded checkpoints are in eval mode.
        for component in pipe.components.values():  # type: ignore[attr-defined]
            if isinstance(component, torch.nn.Module):
                component.eval()
        pipe.set_progress_bar_config(disable=True)  # type: ignore[attr-defined]
        return pipe

    return wrapper


def _clip_config(**overrides: object) -> CLIPTextConfig:
    from transformers import CLIPTextConfig

    settings: dict[str, object] = {
        "vocab_size": CLIP_VOCAB_SIZE,
        "bos_token_id": CLIP_BOS_ID,
        # The pooled output is read at the first eos token; with the real ids that is "<|endoftext|>".
        "eos_token_id": CLIP_EOS_ID,
        "pad_token_id": CLIP_EOS_ID,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "projection_dim": 32,
        "layer_norm_eps": 1e-5,
    }
    settings.update(overrides)
    return CLIPTextConfig(**settings)


def _t5_encoder(d_model: int) -> T5EncoderModel:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=T5_VOCAB_SIZE,
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def _vae(**overrides: object) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    settings: dict[str, object] = {
        "in_channels": 3,
        "out_channels": 3,
        # Two blocks: latents are half the image size, so the default images stay small.
        "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
        "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "sample_size": 64,
    }
    settings.update(overrides)
    return AutoencoderKL(**settings)


@_built_quietly
def sd_pipeline() -> StableDiffusionPipeline:
    """A tiny Stable Diffusion 1.x pipeline (UNet, VAE, one CLIP encoder), 64x64 images by default.

    There is no safety checker, so the plugin under test is the only safety stage.

    Example:
        >>> import torch
        >>> pipe = sd_pipeline()
        >>> gen = torch.Generator().manual_seed(0)
        >>> pipe("a photo", num_inference_steps=2, generator=gen, output_type="np").images.shape
        (1, 64, 64, 3)
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        norm_num_groups=4,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_clip_config()),
        tokenizer=_load_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@_built_quietly
def sd_inpaint_pipeline() -> StableDiffusionInpaintPipeline:
    """A tiny Stable Diffusion inpainting pipeline: :func:`sd_pipeline`'s components (a 4-channel UNet, so the
    pipeline blends the kept region back at each step, as diffusers does for non-inpainting UNets).

    Example:
        >>> import torch
        >>> pipe = sd_inpaint_pipeline()
        >>> image, mask = torch.rand(1, 3, 64, 64), torch.ones(1, 1, 64, 64)
        >>> gen = torch.Generator().manual_seed(0)
        >>> out = pipe("a photo", image=image, mask_image=mask, num_inference_steps=2, generator=gen, output_type="np")
        >>> out.images.shape
        (1, 64, 64, 3)
    """
    from diffusers import StableDiffusionInpaintPipeline

    return StableDiffusionInpaintPipeline(**sd_pipeline().components, requires_safety_checker=False)


@_built_quietly
def sd_controlnet_pipeline() -> StableDiffusionControlNetPipeline:
    """A tiny Stable Diffusion ControlNet pipeline: :func:`sd_pipeline`'s components and a ControlNet made from
    its UNet (``ControlNetModel.from_unet``; its conditioning embedding downsamples once, like the tiny VAE).

    Example:
        >>> import torch
        >>> pipe = sd_controlnet_pipeline()
        >>> gen, image = torch.Generator().manual_seed(0), torch.rand(1, 3, 64, 64)
        >>> out = pipe("a photo", image=image, num_inference_steps=2, generator=gen, output_type="np")
        >>> out.images.shape
        (1, 64, 64, 3)
    """
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    components = sd_pipeline().components
    controlnet = ControlNetModel.from_unet(components["unet"], conditioning_embedding_out_channels=(8, 16))
    return StableDiffusionControlNetPipeline(**components, controlnet=controlnet, requires_safety_checker=False)


@_built_quietly
def sdxl_pipeline() -> StableDiffusionXLPipeline:
    """A tiny SDXL pipeline (two CLIP encoders, text-time conditioned UNet), 64x64 images by default.

    The invisible watermark is off: the package that applies it is optional.

    Example:
        >>> import torch
        >>> pipe = sdxl_pipeline()
        >>> gen = torch.Generator().manual_seed(0)
        >>> pipe("a photo", num_inference_steps=2, generator=gen, output_type="np").images.shape
        (1, 64, 64, 3)
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    time_embed_dim, pooled_dim = 8, 32
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        # The two encoders' hidden states are concatenated: 32 + 32.
        cross_attention_dim=64,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        # Six micro-conditioning numbers (sizes and crop) plus the pooled text embedding.
        projection_class_embeddings_input_dim=6 * time_embed_dim + pooled_dim,
        norm_num_groups=4,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    kwargs: dict[str, object] = {}
    if "add_watermarker" in inspect.signature(StableDiffusionXLPipeline).parameters:
        kwargs["add_watermarker"] = False
    return StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_clip_config()),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(projection_dim=pooled_dim)),
        tokenizer=_load_clip_tokenizer(),
        tokenizer_2=_load_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        **kwargs,
    )


@_built_quietly
def sd3_pipeline() -> StableDiffusion3Pipeline:
    """A tiny Stable Diffusion 3 pipeline (MMDiT, two CLIP encoders and a T5 encoder), 64x64 by default.

    Example:
        >>> import torch
        >>> pipe = sd3_pipeline()
        >>> gen = torch.Generator().manual_seed(0)
        >>> pipe("a photo", num_inference_steps=2, generator=gen, output_type="np").images.shape
        (1, 64, 64, 3)
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    # SD3 concatenates the two CLIP hidden states (32 + 32) and zero-pads them to T5's width, so T5 is 64.
    t5_dim = 64
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=t5_dim,
        caption_projection_dim=32,
        # The two CLIP projections (32 + 32), concatenated.
        pooled_projection_dim=64,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=CLIPTextModelWithProjection(_clip_config()),
        tokenizer=_load_clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config()),
        tokenizer_2=_load_clip_tokenizer(),
        text_encoder_3=_t5_encoder(t5_dim),
        tokenizer_3=t5_tokenizer(),
    )


@_built_quietly
def flux_pipeline() -> FluxPipeline:
    """A tiny Flux pipeline (single- and dual-stream transformer, CLIP and T5 encoders), 64x64 by default.

    FluxPipeline hard-codes a 128-latent default size; this one is lowered so the default image is small.

    Example:
        >>> import torch
        >>> pipe = flux_pipeline()
        >>> gen = torch.Generator().manual_seed(0)
        >>> pipe("a photo", num_inference_steps=2, generator=gen, output_type="np").images.shape
        (1, 64, 64, 3)
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    t5_dim, latent_channels = 32, 4
    transformer = FluxTransformer2DModel(
        patch_size=1,
        # Flux packs 2x2 latent patches into one token.
        in_channels=4 * latent_channels,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=t5_dim,
        # CLIPTextModel's pooled output (hidden size 32).
        pooled_projection_dim=32,
        axes_dims_rope=(4, 4, 8),
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_vae(
            latent_channels=latent_channels,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.0609,
            scaling_factor=1.5035,
        ),
        text_encoder=CLIPTextModel(_clip_config()),
        tokenizer=_load_clip_tokenizer(),
        text_encoder_2=_t5_encoder(t5_dim),
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
    )
    pipe.default_sample_size = 32
    return pipe
