"""The tiny offline pipelines in safeguard.testing.tiny are real, small, fast and deterministic."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

# Before importing safeguard: huggingface_hub reads this once, when it is first imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from safeguard.testing import tiny

BUILDERS: dict[str, Callable[[], object]] = {
    "sd": tiny.sd_pipeline,
    "sdxl": tiny.sdxl_pipeline,
    "sd3": tiny.sd3_pipeline,
    "flux": tiny.flux_pipeline,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Ops on tensors this small are dominated by thread hand-offs; on a busy shared CPU one thread is
    # many times faster than several.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(pipe: object, seed: int = 0, **kwargs: object) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    out = pipe("a photo", num_inference_steps=2, generator=gen, output_type="np", **kwargs)  # type: ignore[operator]
    return out.images


def test_clip_tokenizer_has_the_real_clip_vocabulary() -> None:
    tok = tiny.clip_tokenizer()
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408
    assert tok.model_max_length == 77
    assert tiny.clip_tokenizer() is tok


def test_clip_tokenizer_pads_and_decodes_like_a_pipeline_needs() -> None:
    tok = tiny.clip_tokenizer()
    batch = tok(["a photo of a cat"], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert batch.input_ids.shape == (1, 77)
    assert tok.batch_decode(batch.input_ids, skip_special_tokens=True) == ["a photo of a cat"]


def test_t5_tokenizer_is_small_and_t5_shaped() -> None:
    tok = tiny.t5_tokenizer()
    assert len(tok) == tiny.T5_VOCAB_SIZE
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    batch = tok(
        ["a photo of a cat", "zebra ☃"],
        padding="max_length",
        max_length=16,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    ids = batch.input_ids
    assert ids.shape == (2, 16)
    assert int(ids.max()) < tiny.T5_VOCAB_SIZE
    assert ids[0].tolist()[:6] == tok("a photo of a cat").input_ids
    assert ids[0, 5] == 1 and (ids[0, 6:] == 0).all()
    assert 2 in ids[1].tolist()  # the snowman is unknown
    assert tok.batch_decode(ids, skip_special_tokens=True)[0] == "a photo of a cat"


@pytest.mark.parametrize("name", BUILDERS)
def test_pipeline_runs_two_steps_at_a_small_default_size(name: str) -> None:
    pipe = BUILDERS[name]()
    image = _run(pipe)
    assert image.shape == (1, 64, 64, 3)
    assert np.isfinite(image).all() and image.std() > 0


@pytest.mark.parametrize("name", BUILDERS)
def test_pipeline_is_deterministic_and_honours_height_and_width(name: str) -> None:
    pipe = BUILDERS[name]()
    first, second = _run(pipe, height=32, width=32), _run(pipe, height=32, width=32)
    assert first.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, _run(pipe, seed=1, height=32, width=32))


@pytest.mark.parametrize("name", BUILDERS)
def test_building_leaves_the_global_rng_alone_and_gives_fresh_equal_pipelines(name: str) -> None:
    state = torch.random.get_rng_state()
    first, second = BUILDERS[name](), BUILDERS[name]()
    assert torch.equal(torch.random.get_rng_state(), state)

    assert first is not second
    for key, module in first.components.items():  # type: ignore[attr-defined]
        if isinstance(module, torch.nn.Module):
            other = second.components[key]  # type: ignore[attr-defined]
            assert module is not other and not module.training
            for a, b in zip(module.parameters(), other.parameters(), strict=True):
                assert torch.equal(a, b)
