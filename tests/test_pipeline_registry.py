"""The one pipeline family registry: inpainting and ControlNet pipelines, unregistered and newly registered classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import count_denoiser_calls
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor

import safeguard
from safeguard.errors import ConfigError, PromptBlocked, UnsupportedPipelineError
from safeguard.pipelines import Encoded, family_for, registered_family
from safeguard.steering import adapter_for
from safeguard.testing import tiny
from safeguard.toy import POLICY_PATH
from safeguard.verdict import Action, Finding, Verdict

STEPS = 2
# Keyword hits on the toy policy's "red" are steered, never blocked (as in tests/test_steering.py).
STEER_ONLY = {"prompt": {"thresholds": {"default": {"steer": 0.5, "block": None}}}}


def _inputs(kind: str) -> dict:
    """The conditioning images each kind of pipeline needs, fixed."""
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    if kind == "inpaint":
        mask = torch.zeros(1, 1, 64, 64)
        mask[..., 16:48, 16:48] = 1.0
        return {"image": image, "mask_image": mask}
    if kind == "controlnet":
        return {"image": image}
    return {}


BUILDERS = {"inpaint": tiny.sd_inpaint_pipeline, "controlnet": tiny.sd_controlnet_pipeline}


def _run(pipe, prompt, kind, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "np")
    return pipe(prompt, generator=torch.Generator().manual_seed(0), **_inputs(kind), **kwargs)


class RecordingImageStage:
    """An output stage that records every batch it is shown and blocks each image as violence."""

    name = "recording"

    def __init__(self, policy) -> None:
        self.policy = policy
        self.seen: list[tuple[int, ...]] = []

    def check(self, images: torch.Tensor) -> list[Verdict]:
        self.seen.append(tuple(images.shape))
        finding = Finding("violence", 1.0, 0.5, "image", Action.BLOCK, self.name, "recorded")
        return [Verdict.for_stage([finding], {"violence": 1.0}, self.policy, "output") for _ in range(len(images))]

    def to(self, device):
        return self


def _record_output(guarded) -> RecordingImageStage:
    stage = RecordingImageStage(guarded.guard.policy)
    guarded.guard.image_stages = (*guarded.guard.image_stages, stage)
    return stage


def _rows_seen(pipe):
    rows: list[int] = []
    handle = pipe.unet.register_forward_hook(lambda m, a, out: rows.append(out[0].shape[0]))
    return rows, handle


# -- inpainting and ControlNet pipelines of a registered family ----------------------------------------------
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_inpaint_and_controlnet_pipelines_are_registered_in_their_family(kind):
    pipe = BUILDERS[kind]()
    assert family_for(type(pipe)) is family_for(type(tiny.sd_pipeline()))
    assert adapter_for(type(pipe)).family == "sd"


_VARIANTS = ("Inpaint", "ControlNet", "ControlNetImg2Img", "ControlNetInpaint")


@pytest.mark.parametrize(
    ("name", "family"),
    [
        *[(f"StableDiffusion{v}Pipeline", "sd") for v in _VARIANTS],
        *[(f"StableDiffusionXL{v}Pipeline", "sdxl") for v in _VARIANTS],
        *[(f"StableDiffusion3{v}Pipeline", "sd3") for v in ("Inpaint", "ControlNet", "ControlNetInpainting")],
        *[(f"Flux{v}Pipeline", "flux") for v in _VARIANTS],
    ],
)
def test_the_inpaint_and_controlnet_variants_of_each_family_are_registered(name, family):
    import diffusers

    assert family_for(getattr(diffusers, name)).family == family


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_an_unsafe_prompt_is_blocked_before_any_denoiser_step(kind):
    guarded = safeguard.protect(BUILDERS[kind]())
    with count_denoiser_calls(guarded.pipeline) as calls, pytest.raises(PromptBlocked) as raised:
        _run(guarded, "an explicit porn scene", kind)
    assert calls[0] == 0
    assert raised.value.verdict.blocked and "sexual" in raised.value.verdict.categories


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_the_output_check_runs_on_the_decoded_images(kind):
    pipe = BUILDERS[kind]()
    plain = _run(pipe, "a lighthouse at dawn", kind).images
    guarded = safeguard.protect(pipe, disclosure=False)
    stage = _record_output(guarded)
    out = _run(guarded, "a lighthouse at dawn", kind)
    assert stage.seen == [(1, 3, 64, 64)]  # once, inside postprocess, on the decoded batch
    verdict = out.verdicts[0]
    assert verdict.blocked and any(f.source == "recording" for f in verdict.findings)
    assert not np.allclose(out.images, plain, atol=1e-3)  # balanced redacts the blocked image


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_steering_runs_on_a_steer_band_prompt(kind):
    pipe = BUILDERS[kind]()
    plain = _run(pipe, "a red circle", kind).images
    plain_benign = _run(pipe, "a blue circle", kind).images
    guarded = safeguard.protect(
        pipe, policy=POLICY_PATH, preset="research", config=STEER_ONLY, steering="strong", output=False
    )
    rows, handle = _rows_seen(pipe)
    try:
        out = _run(guarded, "a red circle", kind)
    finally:
        handle.remove()
    assert out.prompt_verdicts[0].action is Action.STEER
    (finding,) = [f for f in out.verdicts[0].findings if f.stage == "steering"]
    assert (finding.category, finding.source) == ("red", "projection+guidance")
    assert not np.array_equal(out.images, plain)
    assert rows == [3] * STEPS  # CFG rows and one safety-concept row (ControlNet residuals grew with them)
    benign = _run(guarded, "a blue circle", kind)
    assert not benign.prompt_verdicts[0].flagged
    assert np.array_equal(benign.images, plain_benign)


# -- a pipeline class that is not registered -----------------------------------------------------------------
class PlainPipeline(DiffusionPipeline):
    """A text-to-image pipeline that derives from no registered class: SD's tiny parts, its own loop."""

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler) -> None:
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.image_processor = VaeImageProcessor(vae_scale_factor=2)

    @classmethod
    def tiny(cls) -> PlainPipeline:
        parts = tiny.sd_pipeline().components
        names = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
        pipe = cls(**{name: parts[name] for name in names})
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @property
    def do_classifier_free_guidance(self) -> bool:
        return True

    def encode(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids  # fmt: skip
        return self.text_encoder(ids.to(self.device))[0]

    @torch.no_grad()
    def __call__(self, prompt, num_inference_steps=2, guidance_scale=5.0, generator=None, output_type="pil",
                 return_dict=True):  # fmt: skip
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        embeds = torch.cat([self.encode([""] * len(prompts)), self.encode(prompts)])
        latents = torch.randn((len(prompts), 4, 32, 32), generator=generator)
        self.scheduler.set_timesteps(num_inference_steps)
        latents = latents * self.scheduler.init_noise_sigma
        for t in self.scheduler.timesteps:
            sample = self.scheduler.scale_model_input(torch.cat([latents] * 2), t)
            noise = self.unet(sample, t, encoder_hidden_states=embeds).sample
            uncond, cond = noise.chunk(2)
            latents = self.scheduler.step(uncond + guidance_scale * (cond - uncond), t, latents).prev_sample
        image = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        images = self.image_processor.postprocess(image, output_type=output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)


def _plain_run(pipe, prompt, **kwargs):
    return pipe(prompt, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs)


def test_an_unregistered_pipeline_gets_prompt_and_output_checks_without_steering():
    pipe = PlainPipeline.tiny()
    assert registered_family(PlainPipeline) is None
    guarded = safeguard.protect(pipe, steering=False, disclosure=False)
    with count_denoiser_calls(pipe) as calls, pytest.raises(PromptBlocked):
        _plain_run(guarded, "an explicit porn scene")
    assert calls[0] == 0
    plain = _plain_run(pipe, "a lighthouse at dawn").images
    assert np.array_equal(_plain_run(guarded, "a lighthouse at dawn").images, plain)
    stage = _record_output(guarded)
    out = _plain_run(guarded, "a lighthouse at dawn")
    assert stage.seen == [(1, 3, 64, 64)]
    assert out.verdicts[0].blocked and not np.allclose(out.images, plain, atol=1e-3)


def test_steering_on_an_unregistered_pipeline_is_refused_at_protect_time():
    pipe = PlainPipeline.tiny()
    with pytest.raises(UnsupportedPipelineError, match=r"PlainPipeline.*safeguard\.register_pipeline\(PlainPipeline"):
        safeguard.protect(pipe, preset="research", steering="strong")
    # a call that turns steering on for itself is refused the same way, before anything runs
    guarded = safeguard.protect(pipe, preset="research", steering=False)
    with count_denoiser_calls(pipe) as calls, pytest.raises(UnsupportedPipelineError, match="register_pipeline"):
        _plain_run(guarded, "a lighthouse", safeguard={"steering": True})
    assert calls[0] == 0


def test_a_pipeline_without_a_prompt_or_an_image_processor_is_named():
    class NoPrompt(PlainPipeline):
        def __call__(self, image, num_inference_steps=2):
            return image

    class NoProcessor:
        def __call__(self, prompt):
            return prompt

    with pytest.raises(UnsupportedPipelineError, match=r"NoPrompt.*`prompt` argument"):
        safeguard.protect(NoPrompt.tiny(), steering=False)
    with pytest.raises(UnsupportedPipelineError, match=r"NoProcessor.*image_processor"):
        safeguard.protect(NoProcessor(), steering=False)


# -- registering a new family through the public registry only ----------------------------------------------
def _encode_plain(pipe: PlainPipeline, texts: list[str], length: int | None) -> Encoded:
    return Encoded(pipe.encode(texts), None)


PLAIN = safeguard.PipelineFamily(
    "plain", prompt_args=("prompt",), denoiser="unet", encode_fn=_encode_plain,
    batched_keys=("encoder_hidden_states",), cfg_batched=True,
)  # fmt: skip


@pytest.fixture
def plain_registered():
    safeguard.register_pipeline(PlainPipeline, family=PLAIN)
    try:
        yield
    finally:
        assert safeguard.unregister_pipeline(PlainPipeline) is PLAIN
    assert registered_family(PlainPipeline) is None


def test_a_newly_registered_family_steers(plain_registered):
    pipe = PlainPipeline.tiny()
    plain = _plain_run(pipe, "a red circle").images
    guarded = safeguard.protect(
        pipe, policy=POLICY_PATH, preset="research", config=STEER_ONLY, steering="strong", output=False
    )
    rows, handle = _rows_seen(pipe)
    try:
        out = _plain_run(guarded, "a red circle")
    finally:
        handle.remove()
    assert out.prompt_verdicts[0].action is Action.STEER
    (finding,) = [f for f in out.verdicts[0].findings if f.stage == "steering"]
    assert (finding.category, finding.source) == ("red", "projection+guidance")
    assert not np.array_equal(out.images, plain)
    assert rows == [3] * STEPS


def test_registration_resolves_subclasses_and_refuses_clashes(plain_registered):
    class Sub(PlainPipeline):
        pass

    assert registered_family(Sub) is PLAIN
    with pytest.raises(ConfigError, match="already registered"):
        safeguard.register_pipeline(PlainPipeline, family="sd")
    with pytest.raises(ConfigError, match="unknown pipeline family 'nope'"):
        safeguard.register_pipeline(Sub, family="nope")
    # the decorator form, and a family registered by name with its own prompt arguments
    decorated = safeguard.register_pipeline(family="plain", prompt_args=("prompt", "prompt_2"))(Sub)
    try:
        assert decorated is Sub and registered_family(Sub).prompt_args == ("prompt", "prompt_2")
        assert registered_family(Sub).encode_fn is _encode_plain
    finally:
        safeguard.unregister_pipeline(Sub)
    assert registered_family(Sub) is PLAIN


def test_a_family_registered_without_an_encoder_cannot_steer():
    facts_only = safeguard.PipelineFamily("facts-only")
    safeguard.register_pipeline(PlainPipeline, family=facts_only)
    try:
        with pytest.raises(UnsupportedPipelineError, match="encode_fn"):
            safeguard.protect(PlainPipeline.tiny(), preset="research", steering="strong")
        safeguard.protect(PlainPipeline.tiny(), steering=False)
    finally:
        safeguard.unregister_pipeline(PlainPipeline)
