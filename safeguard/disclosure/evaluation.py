"""Measuring the watermark: robustness to common sharing, false detections on unmarked images, and cost.

Used by ``scripts/eval_watermark.py``. Images come from what is on the machine: the photographs bundled with
scikit-image (at several crops and sizes), toy-world renders (``safeguard.toy``) and procedural images.
Each attack maps an 8-bit RGB array to another, as sharing an image would.

Two methods are compared on the same images and the same 64-bit word: ``safeguard`` (this package's watermark)
and ``dwtDctSvd`` (invisible-watermark's encoder and decoder as they are, U channel only, on the image's own grid;
it has no detector, so a detection there is the whole word read back without an error).

Example:
    >>> images = marked_images(photos_per_size=1, toy_scenes=1)
    >>> len(images) > 0 and all(img.dtype.name == "uint8" for _, _, img in images)
    True
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

from safeguard.disclosure.watermark import PAYLOAD_BITS, READ_GRIDS, Payload, content_tag, detect, embed, read_bits

__all__ = [
    "ATTACKS",
    "METHODS",
    "Row",
    "false_detections",
    "format_table",
    "marked_images",
    "robustness",
    "sdxl_watermark_coexistence",
    "square_photo",
    "timed_ms",
    "unmarked_images",
]

Attack = Callable[[np.ndarray], np.ndarray]
_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "immunohistochemistry",
    "camera", "coins", "moon", "grass", "gravel", "brick", "page", "cell",
)  # fmt: skip


def _pil(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(rgb)


def _encoded(rgb: np.ndarray, fmt: str, **options: int) -> np.ndarray:
    buffer = io.BytesIO()
    _pil(rgb).save(buffer, fmt, **options)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _resized(rgb: np.ndarray, scale: float, method: Image.Resampling) -> np.ndarray:
    height, width = rgb.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(_pil(rgb).resize(size, method))


def _crop(rgb: np.ndarray, keep: float) -> np.ndarray:
    height, width = rgb.shape[:2]
    top, left = round(height * (1 - keep) / 2), round(width * (1 - keep) / 2)
    return rgb[top : top + round(height * keep), left : left + round(width * keep)]


def _brightness(rgb: np.ndarray, factor: float) -> np.ndarray:
    return np.asarray(ImageEnhance.Brightness(_pil(rgb)).enhance(factor))


#: What sharing does to an image, by name.
ATTACKS: dict[str, Attack] = {
    "png": lambda rgb: _encoded(rgb, "PNG"),
    "jpeg 90": lambda rgb: _encoded(rgb, "JPEG", quality=90),
    "jpeg 75": lambda rgb: _encoded(rgb, "JPEG", quality=75),
    "jpeg 50": lambda rgb: _encoded(rgb, "JPEG", quality=50),
    "resize 0.5x": lambda rgb: _resized(rgb, 0.5, Image.Resampling.BICUBIC),
    "crop 10%": lambda rgb: _crop(rgb, 0.9),
    "brightness +10%": lambda rgb: _brightness(rgb, 1.1),
    "brightness -10%": lambda rgb: _brightness(rgb, 0.9),
    # A screenshot of the image shown at 125% (bilinear), saved losslessly.
    "screenshot 1.25x": lambda rgb: _encoded(_resized(rgb, 1.25, Image.Resampling.BILINEAR), "PNG"),
}


# -- images --------------------------------------------------------------------------------------------
def _photo(name: str) -> np.ndarray:
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.dtype != np.uint8:
        image = (image / max(1, image.max()) * 255).astype(np.uint8)
    return np.ascontiguousarray(image[..., :3])


def _long_side(rgb: np.ndarray, side: int) -> np.ndarray:
    return _resized(rgb, side / max(rgb.shape[:2]), Image.Resampling.LANCZOS)


def _toy(seed: int, size: int) -> np.ndarray:
    from safeguard.toy import render_scene, sample_scene

    return render_scene(sample_scene(np.random.default_rng(seed), size), size)


def marked_images(photos_per_size: int = len(_PHOTOS), toy_scenes: int = 12) -> list[tuple[str, str, np.ndarray]]:
    """(group, name, uint8 RGB) to mark: each photo at 512 and 1024 px on its long side, as bundled (where its
    long side is at least 256 px) and as a 60% crop scaled to 512 px; toy-world renders at 512 and 1024 px."""
    out = []
    for name in _PHOTOS[:photos_per_size]:
        photo = _photo(name)
        out.append(("photo 512", f"{name} 512", _long_side(photo, 512)))
        out.append(("photo 1024", f"{name} 1024", _long_side(photo, 1024)))
        if max(photo.shape[:2]) >= 256:
            out.append(("photo as bundled", f"{name} {photo.shape[1]}x{photo.shape[0]}", photo))
        out.append(("photo crop", f"{name} crop", _long_side(_crop(photo, 0.6), 512)))
    for seed in range(toy_scenes):
        size = 1024 if seed % 3 == 2 else 512
        out.append((f"toy {size}", f"toy scene {seed} {size}", _toy(seed, size)))
    return out


def square_photo(size: int) -> np.ndarray:
    """The astronaut photograph scaled to ``size`` x ``size`` px, for timing."""
    return _long_side(_photo("astronaut"), size)


def unmarked_images(count: int, seed: int = 0) -> Iterator[np.ndarray]:
    """``count`` unmarked uint8 RGB images: random crops of the photos at random sizes (256 to 1024 px on the
    long side) with random sharing attacks, toy-world renders, and flat, gradient and noise images."""
    rng = np.random.default_rng(seed)
    photos = [_photo(name) for name in _PHOTOS]
    attacks = list(ATTACKS.values())
    for i in range(count):
        kind = i % 10
        if kind < 7:
            photo = photos[rng.integers(len(photos))]
            keep = rng.uniform(0.3, 1.0)
            height, width = photo.shape[:2]
            rows, cols = max(16, int(height * keep)), max(16, int(width * keep))
            top, left = rng.integers(0, height - rows + 1), rng.integers(0, width - cols + 1)
            image = _long_side(photo[top : top + rows, left : left + cols], int(rng.integers(256, 1025)))
            image = attacks[rng.integers(len(attacks))](np.ascontiguousarray(image))
        elif kind < 9:
            image = _toy(10_000 + i, int(rng.choice([256, 512, 768, 1024])))
        else:
            size = int(rng.choice([256, 512, 1024]))
            pattern = i % 3
            if pattern == 0:
                image = np.full((size, size, 3), rng.integers(0, 256, 3), dtype=np.uint8)
            elif pattern == 1:
                ramp = np.linspace(0, 255, size)
                image = np.stack(
                    [np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), np.full((size, size), 128)], -1
                )
                image = image.astype(np.uint8)
            else:
                image = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
        yield np.ascontiguousarray(image)


# -- methods -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Read:
    found: bool
    correct: bool
    bit_accuracy: float


class _Safeguard:
    name = "safeguard"

    def mark(self, rgb: np.ndarray, payload: Payload) -> np.ndarray:
        return np.round(embed(rgb, payload)).astype(np.uint8)

    def read(self, rgb: np.ndarray, payload: Payload) -> _Read:
        found = detect(rgb)
        truth = payload.bits()
        accuracy = max(float(np.mean((read_bits(rgb, grid) > 0) == truth)) for grid in READ_GRIDS)
        return _Read(found.found, found.found and found.payload == payload, accuracy)


class _DwtDctSvd:
    """invisible-watermark's dwtDctSvd, as diffusers would call it (BGR uint8 in and out)."""

    name = "dwtDctSvd"

    def mark(self, rgb: np.ndarray, payload: Payload) -> np.ndarray:
        from imwatermark import WatermarkEncoder

        encoder = WatermarkEncoder()
        encoder.set_watermark("bits", [int(b) for b in payload.bits()])
        return encoder.encode(np.ascontiguousarray(rgb[..., ::-1]), "dwtDctSvd")[..., ::-1]

    def read(self, rgb: np.ndarray, payload: Payload) -> _Read:
        from imwatermark import WatermarkDecoder

        if rgb.shape[0] * rgb.shape[1] < 256 * 256:  # the library refuses smaller images
            return _Read(False, False, 0.0)
        bits = WatermarkDecoder("bits", PAYLOAD_BITS).decode(np.ascontiguousarray(rgb[..., ::-1]), "dwtDctSvd")
        accuracy = float(np.mean(np.asarray(bits, dtype=np.uint8) == payload.bits()))
        return _Read(accuracy == 1.0, accuracy == 1.0, accuracy)


#: The methods compared, by name.
METHODS = {"safeguard": _Safeguard(), "dwtDctSvd": _DwtDctSvd()}


@dataclass(frozen=True)
class Row:
    """One attack's result for one method over a set of images."""

    attack: str
    images: int
    detected: float
    bit_accuracy: float
    wrong_payloads: int
    by_group: dict[str, float]


def robustness(method: str, images: list[tuple[str, str, np.ndarray]], generator_id: int = 1) -> list[Row]:
    """Mark every image with ``method`` and read it back after each attack in :data:`ATTACKS`."""
    marker = METHODS[method]
    marked = []
    for group, _, rgb in images:
        payload = Payload(generator_id, content_tag(rgb))
        marked.append((group, payload, marker.mark(rgb, payload)))
    rows = []
    for attack_name, attack in ATTACKS.items():
        reads = [(group, marker.read(attack(rgb), payload)) for group, payload, rgb in marked]
        groups: dict[str, list[bool]] = {}
        for group, read in reads:
            groups.setdefault(group, []).append(read.correct)
        rows.append(
            Row(
                attack_name,
                len(reads),
                float(np.mean([r.correct for _, r in reads])),
                float(np.mean([r.bit_accuracy for _, r in reads])),
                sum(r.found and not r.correct for _, r in reads),
                {g: float(np.mean(v)) for g, v in groups.items()},
            )
        )
    return rows


def sdxl_watermark_coexistence(size: int = 1024, photos: int = 6) -> list[tuple[str, float, float, bool]]:
    """For each of the first ``photos`` photographs at ``size`` px: the bit accuracy of diffusers' SDXL watermark
    (``dwtDct``, applied as the SDXL pipeline applies it) read back on its own and after safeguard's mark is added
    on top, and whether safeguard's mark is then found. Needs invisible-watermark."""
    import torch
    from diffusers.pipelines.stable_diffusion_xl.watermark import WATERMARK_BITS, StableDiffusionXLWatermarker
    from imwatermark import WatermarkDecoder

    watermarker = StableDiffusionXLWatermarker()
    decoder = WatermarkDecoder("bits", len(WATERMARK_BITS))

    def accuracy(rgb: np.ndarray) -> float:
        bits = decoder.decode(np.ascontiguousarray(rgb[..., ::-1]), "dwtDct")
        return float(np.mean(np.asarray(bits) == np.asarray(WATERMARK_BITS)))

    rows = []
    for name in _PHOTOS[:photos]:
        photo = _long_side(_photo(name), size)
        tensor = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        theirs = watermarker.apply_watermark(tensor)[0].permute(1, 2, 0).numpy()
        theirs = np.round((theirs + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
        both = np.round(embed(theirs, Payload(1, content_tag(theirs)))).astype(np.uint8)
        rows.append((name, accuracy(theirs), accuracy(both), detect(both).found))
    return rows


def false_detections(images: Iterator[np.ndarray]) -> tuple[int, int]:
    """(detections, images) of :func:`~safeguard.disclosure.watermark.detect` over unmarked images."""
    found = total = 0
    for rgb in images:
        total += 1
        found += detect(rgb).found
    return found, total


def timed_ms(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``run`` in milliseconds, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table with a header rule."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=True)]
    lines = [" | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


# -- cost ----------------------------------------------------------------------------------------------
def toy_world_call_ms(size: int, steps: int, disclosure: bool, repeats: int) -> float:
    """Median ms of one protected toy-world call (research preset, every stage on) drawing one ``size`` px image."""
    import torch

    import safeguard
    from safeguard.toy import toy_world

    world = toy_world()
    guarded = safeguard.protect(world.pipeline, policy=world.policy, preset="research", disclosure=disclosure)

    def call() -> object:
        generator = torch.Generator().manual_seed(0)
        return guarded("a blue circle", height=size, width=size, num_inference_steps=steps, generator=generator)

    return timed_ms(call, repeats)


#: The UNet of Stable Diffusion XL base 1.0 (2.6 B parameters), as its config names it.
SDXL_UNET_CONFIG = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}


def sdxl_unet_step_ms(size: int = 1024, device: str = "cpu") -> float:
    """Wall time in ms of one SDXL UNet step at random weights: a batch of two (classifier-free guidance) at
    ``size`` px, the shapes the real pipeline uses. Weights are filled with small random values in place, which
    is as fast to run as trained ones and much faster to make than the default initialisation."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(SDXL_UNET_CONFIG)
    unet = unet.to_empty(device=device).eval()
    generator = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for tensor in [*unet.parameters(), *unet.buffers()]:
            tensor.normal_(0.0, 0.02, generator=generator)
        latent = size // 8
        sample = torch.randn(2, 4, latent, latent, generator=generator, device=device)
        text = torch.randn(2, 77, 2048, generator=generator, device=device)
        added = {
            "text_embeds": torch.randn(2, 1280, generator=generator, device=device),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=torch.float32, device=device),
        }
        step = torch.tensor(500, device=device)
        start = time.perf_counter()
        unet(sample, step, encoder_hidden_states=text, added_cond_kwargs=added)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1000
