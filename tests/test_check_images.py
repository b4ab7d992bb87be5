"""check_images on the image types users hold, with the bundled open_nsfw backend."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import safeguard
from safeguard.errors import InputError
from safeguard.images import to_unit_tensors


def test_accepts_pil_numpy_and_tensors():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    images = [
        Image.fromarray(pixels),
        pixels,
        pixels.astype(np.float32) / 255,
        torch.from_numpy(pixels).permute(2, 0, 1).float() / 255,
        Image.fromarray(pixels).convert("L"),
        Image.fromarray(pixels).convert("RGBA"),
    ]
    verdicts = safeguard.check_images(images)
    assert len(verdicts) == len(images)
    scores = [v.category_scores["sexual"] for v in verdicts]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[0] == pytest.approx(scores[1]) == pytest.approx(scores[3], abs=1e-6)
    assert not any(v.blocked for v in verdicts)


def test_batches_and_mixed_sizes_keep_order():
    small = np.zeros((32, 32, 3), np.uint8)
    large = np.full((80, 40, 3), 255, np.uint8)
    verdicts = safeguard.check_images([small, large, small])
    assert len(verdicts) == 3
    assert verdicts[0].category_scores == verdicts[2].category_scores
    assert len(safeguard.check_images(np.zeros((5, 32, 32, 3), np.uint8))) == 5


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("picture.png", "unsupported type str"),
        (np.zeros((32, 32, 2), np.uint8), "1, 3 or 4 channels"),
        (np.zeros((4, 4, 3), np.uint8), "too small"),
        (np.full((32, 32, 3), 3.0, np.float32), r"must lie in \[0, 1\]"),
        (np.full((32, 32, 3), np.nan, np.float32), r"must lie in \[0, 1\]"),
        (np.zeros((2, 2, 32, 32, 3), np.uint8), "expected an HxWxC array"),
        (torch.zeros(3, 32, 32, dtype=torch.int64), "unsupported pixel dtype"),
    ],
)
def test_bad_images_raise_input_error(bad, message):
    with pytest.raises(InputError, match=message):
        safeguard.check_images(bad)


def test_empty_inputs_give_empty_lists_like_check_prompts():
    assert safeguard.check_prompts([]) == []
    for empty in ([], (), np.zeros((0, 32, 32, 3), np.uint8), torch.zeros(0, 3, 32, 32)):
        assert safeguard.check_images(empty) == []
    # The settings are still checked when there is nothing to check.
    for check in (safeguard.check_prompts, safeguard.check_images):
        with pytest.raises(safeguard.ConfigError, match="gentle"):
            check([], preset="gentle")


def test_output_stage_off_scores_nothing():
    verdict = safeguard.check_images(np.zeros((32, 32, 3), np.uint8), preset="research", output=False)[0]
    assert not verdict.flagged and dict(verdict.category_scores) == {}


# -- PIL modes ------------------------------------------------------------------------------------------
SIZE = (24, 16)
COLOUR = (200, 100, 50)
GREY = 124
GREY16 = GREY * 257  # the same grey on the 16-bit scale: 257 * 255 == 65535


def _palette(transparency=None, mode="P"):
    image = Image.new(mode, SIZE, 3 if mode == "P" else (3, 0))
    image.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60, *COLOUR])
    if transparency is not None:
        image.info["transparency"] = transparency
    return image


def _uint16(mode, order):
    return Image.frombytes(mode, SIZE, np.full(SIZE[::-1], GREY16, dtype=order).tobytes())


def _unit(colour):
    return torch.tensor(colour, dtype=torch.float32).div(255).view(3, 1, 1).expand(3, SIZE[1], SIZE[0])


# (image in a mode, the RGB colour it holds, tolerance in [0, 1] units)
# Tolerances: 0 where PIL's conversion is exact on 8 bits; 1e-6 (float32 rounding) for the 16-bit, 32-bit and
# float modes; 2/255 for YCbCr and HSV, whose 8-bit channels round once each way (the YCbCr inverse matrix and
# a hue stored in 256 steps amplify half a level to at most about 1.8); 4/255 for LAB (see test_lab_round_trip).
MODES = {
    "RGB": (Image.new("RGB", SIZE, COLOUR), COLOUR, 0),
    "RGBA transparent": (Image.new("RGBA", SIZE, (*COLOUR, 0)), COLOUR, 0),
    "RGBX": (Image.new("RGB", SIZE, COLOUR).convert("RGBX"), COLOUR, 0),
    "RGBa": (Image.new("RGB", SIZE, COLOUR).convert("RGBa"), COLOUR, 0),
    "CMYK": (Image.new("RGB", SIZE, COLOUR).convert("CMYK"), COLOUR, 0),
    "CMYK cyan": (Image.new("CMYK", SIZE, (255, 0, 0, 0)), (0, 255, 255), 0),
    "CMYK key": (Image.new("CMYK", SIZE, (0, 0, 0, 255)), (0, 0, 0), 0),
    "YCbCr": (Image.new("RGB", SIZE, COLOUR).convert("YCbCr"), COLOUR, 2 / 255),
    "HSV": (Image.new("RGB", SIZE, COLOUR).convert("HSV"), COLOUR, 2 / 255),
    "LAB": (Image.new("RGB", SIZE, COLOUR).convert("LAB"), COLOUR, 4 / 255),
    "P": (_palette(), COLOUR, 0),
    "P transparent index": (_palette(transparency=3), COLOUR, 0),
    "P transparent bytes": (_palette(transparency=bytes([255, 255, 255, 0])), COLOUR, 0),
    "PA transparent": (_palette(mode="PA"), COLOUR, 0),
    "L": (Image.new("L", SIZE, GREY), (GREY,) * 3, 0),
    "LA transparent": (Image.new("LA", SIZE, (GREY, 0)), (GREY,) * 3, 0),
    "La": (Image.new("La", SIZE, (GREY, 255)), (GREY,) * 3, 0),
    "1 white": (Image.new("1", SIZE, 1), (255,) * 3, 0),
    "1 black": (Image.new("1", SIZE, 0), (0,) * 3, 0),
    "I 8-bit": (Image.new("RGB", SIZE, (GREY,) * 3).convert("I"), (GREY,) * 3, 1e-6),
    "I 16-bit": (Image.new("I", SIZE, GREY16), (GREY,) * 3, 1e-6),
    "I 32-bit": (Image.new("I", SIZE, round(GREY / 255 * (2**31 - 1))), (GREY,) * 3, 1e-6),
    "I;16": (_uint16("I;16", "<u2"), (GREY,) * 3, 1e-6),
    "I;16L": (_uint16("I;16L", "<u2"), (GREY,) * 3, 1e-6),
    "I;16B": (_uint16("I;16B", ">u2"), (GREY,) * 3, 1e-6),
    "I;16N": (_uint16("I;16N", "=u2"), (GREY,) * 3, 1e-6),
    "I;16 white": (Image.new("I;16", SIZE, 65535), (255,) * 3, 1e-6),
    "F unit": (Image.new("F", SIZE, GREY / 255), (GREY,) * 3, 1e-6),
    "F 8-bit": (Image.new("L", SIZE, GREY).convert("F"), (GREY,) * 3, 1e-6),
    "F 16-bit": (Image.new("F", SIZE, float(GREY16)), (GREY,) * 3, 1e-6),
}


@pytest.mark.parametrize("name", list(MODES))
def test_every_pil_mode_is_scored_as_its_rgb_colour(name):
    image, colour, tolerance = MODES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no conversion may need a warning (P with byte transparency does via RGB)
        (tensor,) = to_unit_tensors(image)
    assert tensor.dtype == torch.float32 and tensor.shape == (3, SIZE[1], SIZE[0])
    assert torch.allclose(tensor, _unit(colour), rtol=0, atol=tolerance), tensor[:, 0, 0] * 255


# CIE L*a*b* (D50, as in ICC) to sRGB by the formulas: the ICC sRGB matrix (Bradford-adapted to D50), then the
# sRGB transfer curve.
SRGB_TO_XYZ_D50 = np.array(
    [[0.4360747, 0.3850649, 0.1430804], [0.2225045, 0.7168786, 0.0606169], [0.0139322, 0.0971045, 0.7141733]]
)
D50 = np.array([0.9642, 1.0, 0.8249])


def _lab_to_linear_rgb(lab):
    fy = (lab[:, 0] + 16) / 116
    f = np.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], -1)
    xyz = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * D50
    return xyz @ np.linalg.inv(SRGB_TO_XYZ_D50).T


def _srgb_encode(linear):
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.clip(linear, 0, None) ** (1 / 2.4) - 0.055)


def test_lab_is_decoded_by_the_cie_formulas():
    # PIL's LAB pixels: L* * 255 / 100, a* + 128, b* + 128. Every eighth value of each, in rows 8 pixels wide.
    steps = np.arange(0, 256, 8)
    pixels = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 1, 3).astype(np.uint8)
    raw = np.repeat(pixels, 8, axis=1)
    raw[..., 1:] ^= 128  # frombytes reads a* and b* as signed bytes
    (tensor,) = to_unit_tensors(Image.frombytes("LAB", (8, len(pixels)), raw.tobytes()))
    lab = pixels[:, 0].astype(float) * [100 / 255, 1, 1] - [0, 128, 128]
    linear = _lab_to_linear_rgb(lab)
    shown = ((linear >= 0) & (linear <= 1)).all(axis=-1)  # the colours sRGB can show
    assert shown.sum() > 2000
    # Within one level: the result is rounded to 8 bits (half a level) and lcms computes in 16 bits.
    decoded = tensor[:, :, 0].T.numpy()
    assert np.abs(decoded[shown] - _srgb_encode(linear[shown])).max() <= 1 / 255
    # sRGB red is L* 54.29, a* 80.81, b* 69.89 under D50 (published value), which also checks the formulas above.
    (red,) = to_unit_tensors(Image.new("LAB", SIZE, (round(54.29 * 2.55), 81 + 128, 70 + 128)))
    assert torch.allclose(red[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]), atol=2 / 255)


def test_lab_round_trip():
    # 8-bit Lab is a coarse grid: with exact arithmetic, storing colours whose channels lie in [60, 200] moves a
    # channel by up to 4.07 levels (a* and b* are whole units), so the round trip gets 4 levels and rounding.
    steps = np.arange(60, 201, 20)
    colours = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 1, 3).astype(np.uint8)
    colours = np.ascontiguousarray(np.repeat(colours, 8, axis=1))
    (tensor,) = to_unit_tensors(Image.fromarray(colours, "RGB").convert("LAB"))
    assert np.abs(tensor.permute(1, 2, 0).numpy() - colours / 255).max() <= 4 / 255 + 1e-6


def test_content_under_transparent_pixels_is_scored():
    pixels = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    hidden = Image.fromarray(np.dstack([pixels, np.zeros((48, 64), np.uint8)]), "RGBA")
    seen, under_alpha = safeguard.check_images([Image.fromarray(pixels), hidden])
    assert dict(seen.category_scores) == dict(under_alpha.category_scores)


class _RemovedMode(Image.Image):
    """An image in a mode this Pillow no longer has, as an older Pillow or a plugin could still hand over."""

    @property
    def mode(self):
        return "BGR;24"


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (Image.new("I", SIZE, -1), r"image 1: mode I pixels must lie in \[0, 2147483647\], got \[-1, -1\]"),
        (Image.new("F", SIZE, 70000.0), r"image 1: mode F pixels must lie in \[0, 65535\], got \[70000, 70000\]"),
        (Image.new("F", SIZE, float("nan")), r"image 1: mode F pixels must lie in \[0, 65535\]"),
        (Image.new("F", SIZE, -0.5), r"image 1: mode F pixels must lie in \[0, 65535\]"),
    ],
)
def test_integer_and_float_modes_out_of_range_raise(image, message):
    with pytest.raises(InputError, match=message):
        to_unit_tensors([Image.new("RGB", SIZE), image])


def test_an_unconvertible_mode_raises_naming_it_and_the_image():
    removed = Image.new("RGB", SIZE)
    removed.__class__ = _RemovedMode
    with pytest.raises(InputError, match=r"image 1: PIL mode 'BGR;24' cannot be converted to RGB; supported modes: 1,"):
        safeguard.check_images([Image.new("RGB", SIZE), removed])
