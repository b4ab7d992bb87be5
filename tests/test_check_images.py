"""check_images on the image types users hold, with the bundled open_nsfw backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import safeguard
from safeguard.errors import InputError


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
        ([], "no images"),
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


def test_output_stage_off_scores_nothing():
    verdict = safeguard.check_images(np.zeros((32, 32, 3), np.uint8), preset="research", output=False)[0]
    assert not verdict.flagged and dict(verdict.category_scores) == {}
