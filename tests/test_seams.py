"""Adversarial seams between the stages and the pipeline: overlapping calls, shared components, decoders that
skip the interception, diffusers' own checker, non-finite images, verdicts that contradict themselves, the
steer band and stage deadlines.

The toy world (``safeguard.toy.toy_world()``) makes prohibited content visible: its policy prohibits red,
its CLIP sees red, and its pixel judge says what an image shows without any model.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from conftest import count_denoiser_calls, hook_count
from diffusers import StableDiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from PIL import Image

import safeguard
from safeguard.guard import Guard
from safeguard.stages.keywords import KeywordPromptStage
from safeguard.testing import tiny
from safeguard.toy import ToyWorld, dominant_colour, toy_world
from safeguard.verdict import STAGE_FAILURE, Action, Verdict

STEPS = 4
THREADS, ROUNDS, SEEDS = 8, 25, 5


@pytest.fixture(scope="module")
def world() -> ToyWorld:
    return toy_world()


def _wrappers(pipe: Any, world: ToyWorld) -> dict[str, Any]:
    """Four protected views of one pipeline object: each kind of call in the mix has its own settings."""
    policy = world.policy
    checked = safeguard.protect(pipe, policy=policy, preset="research")
    return {
        "blocked": checked,  # "a red circle": the prompt stage blocks it before any denoiser step
        "allowed": checked,  # "a blue circle": generated and checked
        "steered": safeguard.protect(pipe, policy=policy, preset="research", prompt=False, steering="strong"),
        "checked": safeguard.protect(pipe, policy=policy, preset="research", prompt=False, steering=False),
    }


PROMPTS = {
    "blocked": "a red circle",
    "allowed": "a blue circle",
    "steered": "a crimson circle",
    "checked": "a scarlet circle",
}


def _call(wrapper: Any, kind: str, seed: int) -> tuple[np.ndarray | None, Verdict | None]:
    try:
        out = wrapper(
            PROMPTS[kind],
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        )
    except safeguard.PromptBlocked:
        return None, None
    return out.images[0], out.verdicts[0]


def _mixed_calls(pipes: list[Any], world: ToyWorld) -> None:
    """8 threads x 25 rounds of mixed calls over ``pipes``; every image is compared with a serial reference."""
    wrappers = [_wrappers(pipe, world) for pipe in pipes]
    kinds = list(PROMPTS)
    # Serial references first: what each (kind, seed) call returns when nothing overlaps it.
    reference = {(k, s): _call(wrappers[0][k], k, s)[0] for k in kinds for s in range(SEEDS)}
    images = [img for img in reference.values() if img is not None]
    assert min(np.abs(a - b).max() for i, a in enumerate(images) for b in images[i + 1 :]) > 0.05
    baseline = [(hook_count(p.unet), "postprocess" in vars(p.image_processor)) for p in pipes]

    results: list[tuple[str, int, np.ndarray | None, Verdict | None, Any]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        try:
            start.wait()
            for r in range(ROUNDS):
                kind, seed = kinds[(t + r) % len(kinds)], (t * 7 + r) % SEEDS
                guard_of = wrappers[(t + r) % len(wrappers)][kind]
                image, verdict = _call(guard_of, kind, seed)
                with lock:
                    results.append((kind, seed, image, verdict, guard_of))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors[:3]
    assert len(results) == THREADS * ROUNDS

    counts: Counter[str] = Counter()
    for kind, seed, image, verdict, wrapper in results:
        counts[kind] += 1
        if kind == "blocked":
            assert image is None and verdict is None  # raised before denoising
            continue
        assert image is not None and verdict is not None
        # The image is the one this call made, not another call's.
        assert np.allclose(image, reference[(kind, seed)], atol=1e-4), (kind, seed)
        # It passed this call's image check: the verdict's scores are what a fresh check of it says.
        fresh = wrapper.guard.check_images(torch.from_numpy(image).permute(2, 0, 1)[None].float())[0]
        assert "output" in verdict.stages
        assert verdict.category_scores["red"] == pytest.approx(fresh.category_scores["red"], abs=1e-4)
        # No prohibited image leaves unflagged.
        if dominant_colour(image) == "red":
            assert verdict.blocked, (kind, seed, verdict)
    assert set(counts) == set(kinds)
    assert any(dominant_colour(reference[("checked", s)]) == "red" for s in range(SEEDS))
    # Nothing of any call is left on the shared modules.
    assert [(hook_count(p.unet), "postprocess" in vars(p.image_processor)) for p in pipes] == baseline
    for wrapper in {id(w): w for ws in wrappers for w in ws.values()}.values():
        assert safeguard.unprotect(wrapper) in pipes
    assert all("postprocess" not in vars(p.image_processor) for p in pipes)


def test_overlapping_calls_on_one_pipeline(world: ToyWorld) -> None:
    _mixed_calls([world.pipeline], world)


def test_overlapping_calls_on_pipelines_sharing_components(world: ToyWorld) -> None:
    sibling = StableDiffusionPipeline(**world.pipeline.components)
    assert sibling.unet is world.pipeline.unet and sibling.image_processor is not world.pipeline.image_processor
    _mixed_calls([world.pipeline, sibling], world)


def test_an_unprotected_call_on_a_shared_denoiser_is_not_steered_meanwhile(world: ToyWorld) -> None:
    pipe = world.pipeline
    # Its own scheduler: a scheduler keeps per-call state, and this test is about the shared denoiser.
    sibling = StableDiffusionPipeline(**{**pipe.components, "scheduler": copy.deepcopy(pipe.scheduler)})
    steered = safeguard.protect(
        pipe, policy=world.policy, preset="research", prompt=False, output=False, steering="max"
    )
    plain = sibling("a crimson circle", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(4)).images
    inside: list[Any] = []

    def callback(_pipe: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if step == 0:  # while the protected call's hooks sit on the shared denoiser
            thread = threading.Thread(
                target=lambda: inside.append(
                    sibling(
                        "a crimson circle", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(4)
                    ).images
                )
            )
            thread.start()
            thread.join(timeout=120)
        return kwargs

    steered("a crimson circle", num_inference_steps=STEPS, callback_on_step_end=callback)
    assert len(inside) == 1
    assert np.array_equal(np.asarray(inside[0][0]), np.asarray(plain[0]))


# ----------------------------------------------------------------------------------- decoders that skip the check


class SelfDecodingPipeline(StableDiffusionPipeline):
    """Decodes its own latents to PIL, never calling ``image_processor.postprocess`` for the requested type."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["output_type"] = "latent"
        latents = super().__call__(*args, **kwargs).images
        with torch.no_grad():
            decoded = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        pixels = ((decoded / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return StableDiffusionPipelineOutput(images=[Image.fromarray(p) for p in pixels], nsfw_content_detected=None)


def test_a_pipeline_that_decodes_itself_gets_checked_images(world: ToyWorld) -> None:
    pipe = SelfDecodingPipeline(**world.pipeline.components)
    research = safeguard.protect(pipe, policy=world.policy, preset="research", prompt=False)
    balanced = safeguard.protect(pipe, policy=world.policy, preset="balanced", prompt=False, steering=False)
    for seed in range(3):
        out = research("a red circle", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed))
        image = out.images[0]
        assert dominant_colour(image) == "red"
        assert out.verdicts[0].blocked and "output-returned" in out.verdicts[0].stages
        out = balanced("a red circle", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed))
        assert out.images == [None] and out.verdicts[0].blocked  # it cannot be blurred on this path: withheld
    blue = research("a blue circle", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
    assert not blue.verdicts[0].flagged and blue.images[0] is not None
    raising = safeguard.protect(pipe, policy=world.policy, preset="research", prompt=False, redaction="raise")
    with pytest.raises(safeguard.ImageBlocked):
        raising("a red circle", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))


def test_a_callback_that_swaps_the_image_processor_gets_checked_images(world: ToyWorld) -> None:
    pipe = StableDiffusionPipeline(**world.pipeline.components)
    guarded = safeguard.protect(pipe, policy=world.policy, preset="research", prompt=False)

    def swap(p: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        p.image_processor = VaeImageProcessor(vae_scale_factor=p.vae_scale_factor)
        return kwargs

    for output_type in ("pil", "np", "pt"):
        out = guarded(
            "a red circle",
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(1),
            output_type=output_type,
            callback_on_step_end=swap,
        )
        assert out.verdicts[0].blocked, output_type
        assert out.verdicts[0].category_scores["red"] >= 0.8


def test_an_image_edited_after_postprocess_is_checked_again(world: ToyWorld) -> None:
    class Repainting(StableDiffusionPipeline):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            out = super().__call__(*args, **kwargs)
            out.images[0][:] = np.array([1.0, 0.0, 0.0], np.float32)  # paints the checked image red, in place
            return out

    guarded = safeguard.protect(Repainting(**world.pipeline.components), policy=world.policy, preset="research")
    out = guarded("a blue circle", num_inference_steps=STEPS, output_type="np")
    assert out.verdicts[0].blocked and "output-returned" in out.verdicts[0].stages


def test_a_returned_object_that_cannot_be_read_is_withheld(world: ToyWorld) -> None:
    class Opaque(StableDiffusionPipeline):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            out = super().__call__(*args, **kwargs)
            out.images = ["not an image"]
            return out

    guarded = safeguard.protect(Opaque(**world.pipeline.components), policy=world.policy, preset="research")
    out = guarded("a blue circle", num_inference_steps=STEPS)
    assert out.images == [None]
    assert any(f.category == STAGE_FAILURE for f in out.verdicts[0].findings)


@pytest.mark.parametrize(("value", "output_type"), [(float("nan"), "pil"), (float("inf"), "pt")])
def test_non_finite_decoded_images_are_withheld(world: ToyWorld, value: float, output_type: str) -> None:
    guarded = safeguard.protect(world.pipeline, policy=world.policy, preset="research", prompt=False)

    def poison(_p: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"latents": torch.full_like(kwargs["latents"], value)} if step == STEPS - 1 else kwargs

    out = guarded(
        ["a blue circle"],
        num_inference_steps=STEPS,
        output_type=output_type,
        callback_on_step_end=poison,
        callback_on_step_end_tensor_inputs=["latents"],
    )
    if output_type == "pil":
        assert out.images == [None]
    else:
        assert not out.images.any()
    finding = next(f for f in out.verdicts[0].findings if f.category == STAGE_FAILURE)
    assert "non-finite" in finding.detail


# ---------------------------------------------------------------------------------------- diffusers' own checker


def _flag_everything_checker() -> Any:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(0)
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 1}
    config = CLIPConfig(
        text_config=tower, vision_config={**tower, "image_size": 32, "patch_size": 8}, projection_dim=16
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-2.0)  # every cosine similarity is above -2: every image is NSFW
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return checker, processor


@pytest.mark.parametrize(("preset", "expect"), [("research", "black"), ("balanced", "black"), ("strict", "none")])
def test_diffusers_checker_keeps_its_blackout_and_joins_the_verdict(preset: str, expect: str) -> None:
    checker, processor = _flag_everything_checker()
    base = tiny.sd_pipeline()
    pipe = StableDiffusionPipeline(
        **{**base.components, "safety_checker": checker, "feature_extractor": processor}, requires_safety_checker=True
    )
    plain = pipe("a lighthouse", num_inference_steps=2, output_type="np")
    assert plain.nsfw_content_detected == [True] and not plain.images.any()
    out = safeguard.protect(pipe, preset=preset)("a lighthouse", num_inference_steps=2, output_type="np")
    assert out.nsfw_content_detected == [True]
    verdict = out.verdicts[0]
    assert verdict.blocked
    finding = next(f for f in verdict.findings if f.source == "diffusers-safety-checker")
    assert finding.category == "sexual" and finding.action is Action.BLOCK
    assert not out.images.any()  # black, or withheld (all zeros in an array)
    pil = safeguard.protect(pipe, preset=preset)("a lighthouse", num_inference_steps=2)
    if expect == "none":
        assert pil.images == [None]
    else:
        assert not np.asarray(pil.images[0]).any()


# ----------------------------------------------------------------------------------------- verdicts and the Guard


def test_a_block_without_findings_is_a_stage_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def contradicting(self: KeywordPromptStage, prompts: list[str]) -> list[Verdict]:
        return [Verdict(Action.BLOCK, (), {}, self.policy.id, self.policy.version) for _ in prompts]

    monkeypatch.setattr(KeywordPromptStage, "check", contradicting)
    verdict = Guard.create(preset="research").check_prompts(["a lighthouse"])[0]
    assert verdict.blocked
    finding = next(f for f in verdict.findings if f.category == STAGE_FAILURE)
    assert "findings say allow" in finding.detail


def test_a_hanging_prompt_stage_blocks_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    original = KeywordPromptStage.check

    def hang(self: KeywordPromptStage, prompts: list[str]) -> list[Verdict]:
        release.wait(30)
        return original(self, prompts)

    monkeypatch.setattr(KeywordPromptStage, "check", hang)
    guard = Guard.create(preset="research", config={"prompt": {"deadline_s": 0.3}})
    started = time.monotonic()
    verdict = guard.check_prompts(["a lighthouse"])[0]
    elapsed = time.monotonic() - started
    release.set()
    assert verdict.blocked and elapsed < 5
    finding = next(f for f in verdict.findings if f.category == STAGE_FAILURE)
    assert "deadline" in finding.detail and finding.source == "keywords"


def _steer_band_config() -> dict[str, Any]:
    # A lower steer threshold is stricter, so even strict accepts it: it opens a steer band below the block.
    return {"prompt": {"thresholds": {"violence": {"steer": 0.1}}}}


STEER_BAND_PROMPT = "two knights crossing swords in a painting"


@pytest.mark.parametrize("preset", ["strict", "research"])
def test_the_steer_band_is_blocked_where_the_preset_does_not_steer(preset: str) -> None:
    verdict = safeguard.check_prompt(STEER_BAND_PROMPT, preset=preset, config=_steer_band_config())
    assert verdict.blocked
    finding = next(f for f in verdict.findings if f.source == "steer-band")
    assert finding.category == "violence" and "band is blocked" in finding.detail
    guarded = safeguard.protect(tiny.sd_pipeline(), preset=preset, config=_steer_band_config())
    with count_denoiser_calls(guarded.pipeline) as calls, pytest.raises(safeguard.PromptBlocked):
        guarded(STEER_BAND_PROMPT, num_inference_steps=2)
    assert calls[0] == 0


def test_balanced_steers_the_steer_band() -> None:
    verdict = safeguard.check_prompt(STEER_BAND_PROMPT, preset="balanced", config=_steer_band_config())
    assert verdict.action is Action.STEER
    pipe = tiny.sd_pipeline()
    guarded = safeguard.protect(pipe, preset="balanced", config=_steer_band_config())
    assert guarded.guard.settings.steering.enabled
    seen: list[int] = []
    before = hook_count(pipe.unet)
    handle = pipe.unet.register_forward_pre_hook(lambda m, *_: seen.append(len(m._forward_pre_hooks)))
    try:
        out = guarded(STEER_BAND_PROMPT, num_inference_steps=2, output_type="np")
        unflagged = guarded("a lighthouse", num_inference_steps=2, output_type="np")
    finally:
        handle.remove()
    assert out.prompt_verdicts[0].action is Action.STEER and not unflagged.prompt_verdicts[0].flagged
    assert max(seen[:2]) > min(seen[2:])  # the steered call ran with its hook on the denoiser, the other without
    assert hook_count(pipe.unet) == before


def test_prompt_embeds_need_an_explicit_yes_and_the_output_stage() -> None:
    pipe = tiny.sd_pipeline()
    embeds, _ = pipe.encode_prompt("a lighthouse", "cpu", 1, False)
    for preset in ("balanced", "research", "strict"):
        with pytest.raises(safeguard.ConfigError, match="accept_prompt_embeds"):
            safeguard.protect(pipe, preset=preset)(prompt_embeds=embeds, num_inference_steps=2)
    accepting = {"accept_prompt_embeds": True}
    with pytest.raises(safeguard.ConfigError, match="image check"):
        safeguard.protect(pipe, preset="research", config=accepting, output=False)(
            prompt_embeds=embeds, num_inference_steps=2
        )
    out = safeguard.protect(pipe, preset="research", config=accepting)(
        prompt_embeds=embeds, num_inference_steps=2, output_type="np"
    )
    assert "output" in out.verdicts[0].stages


# ------------------------------------------------------------------------------- found by a hostile review


def test_strict_refuses_weights_that_would_replace_the_policys_own_image_model(world: ToyWorld) -> None:
    blind = tiny.sd_pipeline()  # any module will do: the refusal comes before any weights are loaded
    with pytest.raises(safeguard.ConfigError, match=r"would\s+replace it"):
        safeguard.protect(world.pipeline, policy=world.policy, preset="strict", image_model=blind.text_encoder)
    with pytest.raises(safeguard.ConfigError, match=r"would\s+replace it"):
        safeguard.protect(
            world.pipeline, policy=world.policy, preset="strict", config={"output": {"clip": {"weights": "/x"}}}
        )


def test_embeddings_next_to_text_or_swapped_by_a_callback_are_refused() -> None:
    pipe = tiny.sdxl_pipeline()
    _, _, pooled, _ = pipe.encode_prompt("a pipe bomb", device="cpu", do_classifier_free_guidance=False)
    for preset in ("strict", "balanced"):
        guarded = safeguard.protect(pipe, preset=preset)
        with count_denoiser_calls(pipe) as calls, pytest.raises(safeguard.ConfigError, match="pooled_prompt_embeds"):
            guarded("a lighthouse", pooled_prompt_embeds=pooled, num_inference_steps=2)
        with pytest.raises(safeguard.ConfigError, match="callback_on_step_end_tensor_inputs='prompt_embeds'"):
            guarded(
                "a lighthouse",
                num_inference_steps=2,
                callback_on_step_end=lambda p, i, t, kw: kw,
                callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
            )
        assert calls[0] == 0


def test_a_processor_whose_postprocess_changes_the_pixels_is_checked_again(world: ToyWorld) -> None:
    class ChannelSwapping(VaeImageProcessor):
        def postprocess(self, image: Any, output_type: str = "pil", do_denormalize: Any = None) -> Any:
            return super().postprocess(image[:, [2, 0, 0]], output_type, do_denormalize)  # turns blue into red

    pipe = StableDiffusionPipeline(**world.pipeline.components)
    pipe.image_processor = ChannelSwapping(vae_scale_factor=pipe.vae_scale_factor)
    guarded = safeguard.protect(pipe, policy=world.policy, preset="strict")
    out = guarded(
        "a blue circle", num_inference_steps=STEPS, output_type="np", generator=torch.Generator().manual_seed(0)
    )
    assert out.verdicts[0].blocked and "output-returned" in out.verdicts[0].stages
    assert not out.images.any()  # withheld


@pytest.mark.parametrize("container", ["dict", "tuple"])
def test_images_in_another_container_are_withheld_whole(world: ToyWorld, container: str) -> None:
    class Repackaging(StableDiffusionPipeline):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            out = super().__call__(*args, **kwargs)
            out.images = {"image": out.images[0]} if container == "dict" else tuple(out.images)
            return out

    guarded = safeguard.protect(Repackaging(**world.pipeline.components), policy=world.policy, preset="strict")
    # "ruby" is no word of the toy policy: the prompt passes, and only the image check sees the red.
    prompt = "a blue circle" if container == "dict" else "a ruby circle"
    out = guarded(prompt, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
    assert out.images == [None] and out.verdicts[0].blocked
    if container == "dict":  # no image can be read out of it
        assert any(f.category == STAGE_FAILURE for f in out.verdicts[0].findings)


def test_a_callback_that_removes_the_interception_still_gets_checked_images(world: ToyWorld) -> None:
    pipe = StableDiffusionPipeline(**world.pipeline.components)
    guarded = safeguard.protect(pipe, policy=world.policy, preset="research", prompt=False)

    def unpatch(p: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        p.image_processor.__dict__.pop("postprocess", None)
        return kwargs

    out = guarded(
        "a red circle",
        num_inference_steps=STEPS,
        output_type="np",
        generator=torch.Generator().manual_seed(1),
        callback_on_step_end=unpatch,
    )
    assert dominant_colour(out.images[0]) == "red"
    assert out.verdicts[0].blocked and "output-returned" in out.verdicts[0].stages
    assert "postprocess" not in vars(pipe.image_processor)
