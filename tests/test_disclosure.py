"""The disclosure watermark: payload, reference agreement, robustness, false detections, and protect() per family."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import safeguard
from safeguard.config import DisclosureSettings, resolve_settings
from safeguard.disclosure.marking import detect_image, mark_images
from safeguard.disclosure.watermark import (
    MARKER,
    Payload,
    _layout,
    block_scores,
    can_mark,
    content_tag,
    detect,
    embed,
    read_bits,
)
from safeguard.errors import ConfigError, InputError

PROMPT = "a watercolor painting of a lighthouse at dawn"


def _photo(size: int | None = None) -> np.ndarray:
    import skimage.data

    image = skimage.data.astronaut()
    if size is not None:
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))
    return image


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _run(pipe, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    return pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kwargs)


# -- the watermark -------------------------------------------------------------------------------------
def test_payload_word_layout():
    word = Payload(generator_id=0x1234, content_tag=0xABCD).bits()
    value = int("".join(map(str, word)), 2)
    assert value >> 48 == MARKER and (value >> 32) & 0xFFFF == 0x1234 and (value >> 16) & 0xFFFF == 0xABCD
    assert Payload(0x1234, 0xABCD).hex() == f"{value:016x}"
    with pytest.raises(InputError, match="generator_id"):
        Payload(70_000, 0)


@pytest.mark.parametrize("shape", [(64, 64), (96, 160), (300, 451), (512, 512)])
def test_mark_round_trips_and_is_invisible(shape):
    rng = np.random.default_rng(sum(shape))
    image = _photo(max(shape))[: shape[0], : shape[1]].copy()
    image = np.clip(image.astype(int) + rng.integers(-3, 4, image.shape), 0, 255).astype(np.uint8)
    payload = Payload(generator_id=321, content_tag=content_tag(image))
    marked = np.round(embed(image, payload)).astype(np.uint8)
    found = detect(marked)
    assert found.found and found.payload == payload and found.confidence > 0.8
    psnr = 10 * np.log10(255**2 / np.mean((marked.astype(float) - image) ** 2))
    assert psnr > 35, psnr


def test_decoder_agrees_with_invisible_watermarks_dwtdctsvd():
    import cv2

    reference = pytest.importorskip("imwatermark.dwtDctSvd").EmbedDwtDctSvd(watermarks=[], wmLen=64, scales=[0, 36, 0])
    image = _photo(128)  # under 256 px: marked on its own grid, where the library reads the same blocks
    payload = Payload(5, 6)
    marked = np.round(embed(image, payload)).astype(np.uint8)
    for rgb in (image, marked):
        u = cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_BGR2YUV)[..., 1].astype(np.float64)
        ll = u.reshape(64, 2, 64, 2).sum(axis=(1, 3)) / 2
        theirs = np.array(
            [reference.infer_dct_svd(ll[i : i + 4, j : j + 4], 36) for i in range(0, 64, 4) for j in range(0, 64, 4)]
        )
        assert ((block_scores(u) > 0).astype(int) == theirs).all()
    # The library's own reading of the marked U blocks is the (permuted, whitened) word embedded there.
    carried, key = _layout(2 * theirs.size)
    assert np.array_equal(theirs, payload.bits()[carried[: theirs.size]] ^ key[: theirs.size])
    assert detect(marked).payload == payload


def test_mark_survives_jpeg_and_resizing():
    image = _photo(512)
    payload = Payload(9, content_tag(image))
    marked = np.round(embed(image, payload)).astype(np.uint8)
    half = np.asarray(Image.fromarray(marked).resize((256, 256), Image.Resampling.BICUBIC))
    for attacked in (_jpeg(marked, 90), _jpeg(marked, 75), half):
        assert detect(attacked).payload == payload


def test_unmarked_images_are_not_detected():
    rng = np.random.default_rng(0)
    photo = _photo()
    images = [rng.integers(0, 256, (256, 256, 3)).astype(np.uint8), np.full((300, 200, 3), 77, np.uint8), photo]
    for _ in range(20):
        top, left, side = rng.integers(0, 200), rng.integers(0, 200), int(rng.integers(128, 300))
        images.append(_jpeg(np.ascontiguousarray(photo[top : top + side, left : left + side]), 80))
    detections = [detect(image) for image in images]
    assert not any(d.found for d in detections)
    assert all(d.confidence < 0.5 for d in detections)


def test_images_too_small_for_the_payload_are_refused():
    assert can_mark(64, 64) and not can_mark(32, 32)
    with pytest.raises(InputError, match="too small to carry the watermark"):
        embed(np.zeros((32, 32, 3), np.uint8), Payload(0, 0))
    with pytest.raises(InputError, match="too few blocks"):
        read_bits(np.zeros((4, 4, 3)), "native")


# -- settings ------------------------------------------------------------------------------------------
def test_disclosure_settings_per_preset_and_lock():
    assert resolve_settings("balanced").disclosure == DisclosureSettings(enabled=True, generator_id=0)
    assert resolve_settings("strict").disclosure.enabled
    assert not resolve_settings("research").disclosure.enabled
    assert not resolve_settings("balanced", disclosure=False).disclosure.enabled
    assert resolve_settings("balanced", config={"disclosure": {"generator_id": 42}}).disclosure.generator_id == 42
    with pytest.raises(ConfigError, match=r"disclosure\.enabled is false, weaker than the locked true"):
        resolve_settings("strict", disclosure=False)
    with pytest.raises(ConfigError, match=r"disclosure\.enabled is false, weaker than the locked true"):
        resolve_settings("strict", config={"disclosure": {"enabled": False}})
    with pytest.raises(ConfigError, match="unknown key 'strength'"):
        resolve_settings("balanced", config={"disclosure": {"strength": 2}})
    with pytest.raises(ConfigError, match="generator_id must be an integer"):
        resolve_settings("balanced", config={"disclosure": {"generator_id": -1}})
    with pytest.raises(ConfigError, match="disclosure= must be True or False"):
        resolve_settings("balanced", disclosure="off")


# -- protect() -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("output_type", ["pil", "np", "pt"])
def test_every_family_returns_marked_images(make_pipeline, output_type):
    pipe = make_pipeline()
    plain = _run(pipe, output_type=output_type).images
    off = _run(safeguard.protect(pipe, disclosure=False), output_type=output_type).images
    config = {"disclosure": {"generator_id": 77}}
    out = _run(safeguard.protect(pipe, config=config), output_type=output_type)
    if output_type == "pil":
        assert [np.asarray(i).tobytes() for i in off] == [np.asarray(i).tobytes() for i in plain]
        assert all(isinstance(i, Image.Image) and i.size == p.size for i, p in zip(out.images, plain, strict=True))
        assert not np.array_equal(np.asarray(out.images[0]), np.asarray(plain[0]))
    elif output_type == "np":
        assert np.array_equal(off, plain)
        assert out.images.dtype == plain.dtype and out.images.shape == plain.shape
        assert np.abs(out.images - plain).max() < 0.1
    else:
        assert torch.equal(off, plain)
        assert out.images.dtype == plain.dtype and out.images.device == plain.device
    found = detect_image(out.images[0])
    assert found.found and found.payload is not None and found.payload.generator_id == 77
    # The mark went on what the unmarked call returned, after the checks: marking the plain image gives the same.
    same, records = mark_images(plain, DisclosureSettings(enabled=True, generator_id=77))
    assert [v.disclosure for v in out.verdicts] == records
    assert records[0] == {"watermark": found.payload.hex(), "generator_id": 77}
    assert out.verdicts[0].to_dict()["disclosure"] == records[0]
    if output_type == "pil":
        assert np.array_equal(np.asarray(same[0]), np.asarray(out.images[0]))
    else:
        assert np.array_equal(np.asarray(same), np.asarray(out.images))


def test_redacted_images_are_marked_and_withheld_ones_stay_empty():
    from safeguard.testing import tiny

    pipe = tiny.sd_pipeline()
    block_all = {"output": {"thresholds": {"default": {"block": 0.0}}}}  # open_nsfw then blocks every image
    blurred_off = _run(safeguard.protect(pipe, config=block_all, disclosure=False), output_type="np").images
    blurred_on = _run(safeguard.protect(pipe, config=block_all), output_type="np")
    assert blurred_on.verdicts[0].blocked
    assert np.array_equal(blurred_on.images, mark_images(blurred_off, DisclosureSettings(True, 0))[0])
    strict = safeguard.protect(pipe, preset="strict", config=block_all)
    assert _run(strict).images == [None]
    assert not _run(strict, output_type="np").images.any()


def test_images_too_small_to_mark_are_returned_unmarked_and_say_so():
    from safeguard.testing import tiny

    pipe = tiny.sd_pipeline()
    plain = _run(pipe, height=32, width=32).images[0]
    out = _run(safeguard.protect(pipe, preset="strict"), height=32, width=32)
    assert np.array_equal(np.asarray(out.images[0]), np.asarray(plain))
    record = out.verdicts[0].to_dict()["disclosure"]
    assert record["watermark"] is None and "32x32 image is too small to carry the watermark" in record["reason"]
    assert out.verdicts[0].disclosure == record
    # With disclosure off nothing is recorded.
    assert _run(safeguard.protect(pipe, disclosure=False), height=32, width=32).verdicts[0].disclosure is None


@pytest.mark.parametrize(
    "module",
    ["watermark", "marking", "metadata", "credentials", "manifest", "save", "verify", "evaluation"],
)
def test_docstring_examples(module):
    import doctest
    import importlib

    if module in ("credentials", "manifest", "save"):
        pytest.importorskip("c2pa")
    failures, attempted = doctest.testmod(importlib.import_module(f"safeguard.disclosure.{module}"))
    assert attempted and not failures


def test_on_sdxl_with_diffusers_watermarker_ours_goes_on_top():
    """An SDXL pipeline with invisible-watermark installed applies its dwtDct mark before postprocess; the output
    check sees that image and ours is added to exactly what the pipeline returned."""
    pytest.importorskip("imwatermark")
    from diffusers.pipelines.stable_diffusion_xl.watermark import StableDiffusionXLWatermarker

    from safeguard.testing import tiny

    pipe = tiny.sdxl_pipeline()
    pipe.watermark = StableDiffusionXLWatermarker()  # what add_watermarker=True installs; it marks 256 px and up
    size = {"height": 256, "width": 256, "output_type": "np"}
    theirs = _run(pipe, **size).images
    pipe.watermark = None
    bare = _run(pipe, **size).images
    assert not np.array_equal(theirs, bare)  # their mark was applied
    pipe.watermark = StableDiffusionXLWatermarker()
    out = _run(safeguard.protect(pipe), **size)
    assert np.array_equal(out.images, mark_images(theirs, DisclosureSettings(True, 0))[0])
    assert detect_image(out.images[0]).found


def test_a_record_never_claims_a_mark_that_does_not_read_back():
    settings = DisclosureSettings(True, 5)
    flat = np.zeros((2, 256, 256, 3), np.float32)
    flat[0, ..., 2] = 1.0  # pure blue: saturated chroma leaves the transform no room
    flat[1] = 0.5
    marked, records = mark_images(flat, settings)
    assert records[0]["watermark"] is None and "does not read back" in records[0]["reason"]
    assert np.array_equal(marked[0], flat[0])
    assert records[1]["watermark"] and detect_image(marked[1]).payload.generator_id == 5


def test_uint8_batches_stay_8_bit_when_marked():
    batch = (_photo(256)[None]).copy()
    marked, records = mark_images(batch, DisclosureSettings(True, 6))
    assert marked.dtype == np.uint8 and marked.max() > 200 and np.abs(marked.astype(int) - batch).max() < 40
    assert records[0]["watermark"] and detect(marked[0]).payload.generator_id == 6
