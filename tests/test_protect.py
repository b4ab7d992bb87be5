"""protect() on tiny real SD 1.x, SDXL, SD3 and Flux pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import count_denoiser_calls, hook_count
from PIL import Image

import safeguard
from safeguard.errors import ConfigError, InputError, PromptBlocked, UnsupportedPipelineError

STEPS = 2


def _run(pipe, prompt, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    return pipe(prompt, generator=torch.Generator().manual_seed(0), **kwargs)


def _components(pipe):
    return [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]


def test_explicit_sexual_prompt_raises_before_any_denoiser_step(make_pipeline):
    guarded = safeguard.protect(make_pipeline())
    with count_denoiser_calls(guarded.pipeline) as calls, pytest.raises(PromptBlocked) as raised:
        _run(guarded, "an explicit porn scene")
    assert calls[0] == 0
    verdict = raised.value.verdict
    assert verdict.blocked and "sexual" in verdict.categories and verdict.categories["sexual"]
    finding = next(f for f in verdict.findings if f.category == "sexual" and f.source == "keyword")
    _, block = guarded.guard.settings.prompt.thresholds.for_category("sexual")
    assert (finding.score, finding.threshold, finding.stage) == (1.0, block, "prompt")
    assert verdict.policy_version == safeguard.load_policy().version


@pytest.mark.parametrize("output_type", ["pil", "np", "pt"])
def test_benign_prompt_output_is_identical_to_the_unprotected_pipeline(make_pipeline, output_type):
    pipe = make_pipeline()
    plain = _run(pipe, "a watercolor painting of a lighthouse at dawn", output_type=output_type).images
    # The promise holds with disclosure off; with it on, images differ by the watermark (tests/test_disclosure.py).
    guarded = safeguard.protect(pipe, disclosure=False)
    out = _run(guarded, "a watercolor painting of a lighthouse at dawn", output_type=output_type)
    if output_type == "pil":
        assert all(isinstance(i, Image.Image) for i in out.images)
        assert [np.asarray(i).tobytes() for i in out.images] == [np.asarray(i).tobytes() for i in plain]
    elif output_type == "np":
        assert np.array_equal(out.images, plain)
    else:
        assert torch.equal(out.images, plain)
    assert len(out.verdicts) == len(out.prompt_verdicts) == 1
    assert not out.verdicts[0].flagged
    assert out.verdicts[0].stages == ("output", "prompt")


def test_latent_output_is_identical_when_the_output_stage_is_off(make_pipeline):
    pipe = make_pipeline()
    plain = _run(pipe, "a lighthouse", output_type="latent").images
    guarded = safeguard.protect(pipe, preset="research", output=False)
    assert torch.equal(_run(guarded, "a lighthouse", output_type="latent").images, plain)
    with pytest.raises(ConfigError, match="latent"):
        _run(safeguard.protect(make_pipeline()), "a lighthouse", output_type="latent")


def test_unprotect_restores_the_original_pipeline(make_pipeline):
    pipe = make_pipeline()
    _run(pipe, "a lighthouse")  # transformers installs its own output-capturing hooks on the first call
    before_hooks = sum(hook_count(c) for c in _components(pipe))
    guarded = safeguard.protect(pipe)
    _run(guarded, "a lighthouse")
    with pytest.raises(PromptBlocked):
        _run(guarded, "an explicit porn scene")
    restored = safeguard.unprotect(guarded)
    assert restored is pipe and type(restored) is type(pipe)
    assert sum(hook_count(c) for c in _components(pipe)) == before_hooks
    assert "postprocess" not in vars(pipe.image_processor)
    with count_denoiser_calls(pipe) as calls:
        out = _run(restored, "an explicit porn scene")
    assert calls[0] == STEPS  # the unsafe prompt now runs: one denoiser call per step
    assert len(out.images) == 1


def test_minor_sexual_prompt_blocks_under_research_with_every_stage_off(make_pipeline):
    guarded = safeguard.protect(make_pipeline(), preset="research", prompt=False, output=False, steering=False)
    assert guarded.guard.settings.stages == ()
    with count_denoiser_calls(guarded.pipeline) as calls, pytest.raises(PromptBlocked) as raised:
        _run(guarded, "a sexy schoolgirl")
    assert calls[0] == 0 and raised.value.verdict.locked
    # on_block=return never applies to the locked rule.
    lenient = safeguard.protect(make_pipeline(), preset="research", prompt=False, on_block="return")
    with pytest.raises(PromptBlocked):
        _run(lenient, "a sexy schoolgirl")


def test_secondary_prompts_are_checked(family, make_pipeline):
    guarded = safeguard.protect(make_pipeline())
    extra = {"sd": None, "sdxl": "prompt_2", "sd3": "prompt_3", "flux": "prompt_2"}[family]
    if extra is None:
        pytest.skip("SD 1.x has a single prompt")
    with count_denoiser_calls(guarded.pipeline) as calls, pytest.raises(PromptBlocked):
        _run(guarded, "a lighthouse", **{extra: "a pipe bomb"})
    assert calls[0] == 0


def test_batches_give_one_verdict_per_image_in_order(make_pipeline):
    guarded = safeguard.protect(make_pipeline())
    out = _run(guarded, ["a lighthouse", "a red bicycle"], num_images_per_prompt=2, output_type="np")
    assert out.images.shape[0] == 4 and len(out.verdicts) == 4 and len(out.prompt_verdicts) == 2


def test_on_block_return_with_every_prompt_blocked_gives_no_images_and_the_verdicts(make_pipeline):
    guarded = safeguard.protect(make_pipeline(), preset="research", on_block="return")
    with count_denoiser_calls(guarded.pipeline) as calls:
        out = _run(guarded, ["a pipe bomb", "an explicit porn scene"])
    assert calls[0] == 0
    assert out.images == [] and out.verdicts == []
    assert [v.blocked for v in out.prompt_verdicts] == [True, True]


MIXED = ["a lighthouse", "a pipe bomb", "a red bicycle"]


def _seeded(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("output_type", ["pil", "np", "pt"])
def test_on_block_return_with_a_mixed_batch_runs_only_the_allowed_prompts(make_pipeline, output_type):
    pipe = make_pipeline()
    # Two images per prompt, one generator each: the allowed prompts' images must be those of a call without
    # the blocked prompt, in their own slots.
    plain = pipe(["a lighthouse", "a red bicycle"], num_images_per_prompt=2, num_inference_steps=STEPS,
                 generator=_seeded([0, 1, 4, 5]), output_type=output_type).images  # fmt: skip
    guarded = safeguard.protect(pipe, preset="research", output=False, on_block="return")
    rows: list[int] = []
    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    handle = denoiser.register_forward_pre_hook(
        lambda m, args, kwargs: rows.append((args[0] if args else kwargs["hidden_states"]).shape[0]), with_kwargs=True
    )
    try:
        out = guarded(MIXED, num_images_per_prompt=2, num_inference_steps=STEPS, generator=_seeded(range(6)),
                      output_type=output_type)  # fmt: skip
    finally:
        handle.remove()
    # The blocked prompt never reached the denoiser: each step ran the two allowed prompts' four images only.
    per_image = 1 if type(pipe).__name__.startswith("Flux") else 2  # Flux has no CFG rows
    assert rows == [4 * per_image] * STEPS
    assert [v.blocked for v in out.prompt_verdicts] == [False, True, False]
    assert [v.blocked for v in out.verdicts] == [False, False, True, True, False, False]
    assert out.verdicts[2] == out.verdicts[3] == out.prompt_verdicts[1]
    assert not out.verdicts[0].flagged and not out.verdicts[5].flagged
    kept = [0, 1, 4, 5]
    if output_type == "pil":
        assert out.images[2] is None and out.images[3] is None
        for slot, ref in zip(kept, plain, strict=True):
            assert np.array_equal(np.asarray(out.images[slot]), np.asarray(ref))
    else:
        assert tuple(out.images.shape) == (6, *plain.shape[1:])
        assert not out.images[2:4].any(), "a withheld image in an array or tensor is all zeros"
        for slot, ref in zip(kept, plain, strict=True):
            assert np.array_equal(np.asarray(out.images[slot]), np.asarray(ref))
    images, verdicts, prompt_verdicts = guarded(MIXED, num_inference_steps=STEPS, output_type=output_type,
                                                return_dict=False)  # fmt: skip
    assert len(images) == len(verdicts) == len(prompt_verdicts) == 3
    assert [v.blocked for v in verdicts] == [False, True, False]
    assert images[1] is None if output_type == "pil" else not images[1].any()


def test_on_block_return_never_applies_to_the_locked_rule_in_a_mixed_batch(make_pipeline):
    guarded = safeguard.protect(make_pipeline(), preset="research", on_block="return")
    with count_denoiser_calls(guarded.pipeline) as calls, pytest.raises(PromptBlocked) as raised:
        _run(guarded, ["a lighthouse", "a sexy schoolgirl"])
    assert calls[0] == 0 and raised.value.verdict.locked


def test_attributes_pass_through(make_pipeline):
    pipe = make_pipeline()
    guarded = safeguard.protect(pipe)
    assert guarded.scheduler is pipe.scheduler
    assert guarded.to("cpu") is guarded and guarded.device == pipe.device
    scheduler = pipe.scheduler
    guarded.scheduler = scheduler  # setting goes to the pipeline
    assert pipe.scheduler is scheduler
    assert "ProtectedPipeline" in repr(guarded)
    with pytest.raises(ConfigError, match="already protected"):
        safeguard.protect(guarded)


def test_return_dict_false_gives_a_tuple(make_pipeline):
    images, verdicts, prompt_verdicts = _run(safeguard.protect(make_pipeline()), "a lighthouse", return_dict=False)
    assert len(images) == len(verdicts) == len(prompt_verdicts) == 1


def test_global_torch_state_is_untouched(make_pipeline):
    pipe = make_pipeline()
    threads, dtype, rng = torch.get_num_threads(), torch.get_default_dtype(), torch.random.get_rng_state()
    guarded = safeguard.protect(pipe)
    _run(guarded, "a lighthouse")
    with pytest.raises(PromptBlocked):
        _run(guarded, "a pipe bomb")
    assert torch.get_num_threads() == threads and torch.get_default_dtype() == dtype
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_unsupported_pipeline_is_named():
    class NotAPipeline:
        pass

    with pytest.raises(UnsupportedPipelineError, match=r"NotAPipeline.*StableDiffusionPipeline.*FluxPipeline"):
        safeguard.protect(NotAPipeline())
    with pytest.raises(TypeError):
        safeguard.unprotect(NotAPipeline())


def test_prompt_embeds_follow_the_preset(family, make_pipeline):
    if family != "sd":
        pytest.skip("one family is enough for the embeds rule")
    pipe = make_pipeline()
    embeds, _ = pipe.encode_prompt("a lighthouse", "cpu", 1, False)
    accept = {"accept_prompt_embeds": True}
    out = _run(safeguard.protect(pipe, config=accept), None, prompt_embeds=embeds, output_type="np")
    assert len(out.prompt_verdicts) == 1 and not out.prompt_verdicts[0].flagged
    with pytest.raises(ConfigError, match="requires prompt text"):
        _run(safeguard.protect(make_pipeline(), preset="strict"), None, prompt_embeds=embeds)
    with pytest.raises(InputError, match="give a prompt"):
        _run(safeguard.protect(make_pipeline()), None)


@pytest.mark.parametrize(("redaction", "expect"), [("blur", "changed"), ("withhold", "none"), ("flag", "same")])
def test_blocked_images_are_redacted_per_preset(redaction, expect):
    from safeguard.testing import tiny

    pipe = tiny.sd_pipeline()
    plain = _run(pipe, "a lighthouse").images[0]
    # A zero image threshold makes the real open_nsfw backend block every image.
    config = {"output": {"redaction": redaction, "thresholds": {"default": {"block": 0.0}}}}
    out = _run(safeguard.protect(pipe, preset="research", config=config), "a lighthouse")
    verdict = out.verdicts[0]
    assert verdict.blocked
    finding = next(f for f in verdict.findings if f.category == "sexual")
    assert (finding.stage, finding.source, finding.threshold) == ("image", "opennsfw", 0.0)
    image = out.images[0]
    if expect == "none":
        assert image is None
    elif expect == "same":
        assert np.array_equal(np.asarray(image), np.asarray(plain))
    else:
        assert image.size == plain.size and not np.array_equal(np.asarray(image), np.asarray(plain))


def test_img2img_pipelines_are_protected_too():
    from diffusers import StableDiffusionImg2ImgPipeline

    from safeguard.testing import tiny

    pipe = StableDiffusionImg2ImgPipeline(**tiny.sd_pipeline().components)
    init = Image.new("RGB", (64, 64), (120, 80, 200))
    plain = pipe("a lighthouse", image=init, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    guarded = safeguard.protect(pipe, disclosure=False)  # bit-identity holds with the watermark off
    out = guarded("a lighthouse", image=init, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(np.asarray(out.images[0]), np.asarray(plain.images[0]))
    with count_denoiser_calls(pipe) as calls, pytest.raises(PromptBlocked):
        guarded("a pipe bomb", image=init, num_inference_steps=4)
    assert calls[0] == 0


# -- per-call toggles ----------------------------------------------------------------------------------
def test_per_call_toggles_switch_stages_for_one_call_where_the_preset_allows(make_pipeline):
    pipe = make_pipeline()
    guarded = safeguard.protect(pipe, preset="research")
    plain = _run(pipe, "a watercolor painting of a lighthouse", output_type="np").images
    off = _run(
        guarded,
        "a watercolor painting of a lighthouse",
        output_type="np",
        safeguard={"prompt": False, "steering": False, "output": False},
    )
    assert np.array_equal(off.images, plain) and off.verdicts[0].stages == ("locked",)  # the locked rule runs
    only_output = _run(guarded, "a watercolor painting", output_type="np", safeguard={"prompt": False})
    assert set(only_output.verdicts[0].stages) == {"locked", "output"}
    # The toggles were for that call alone: the next call has every stage of the preset again.
    stages = set(_run(guarded, "a watercolor painting", output_type="np").verdicts[0].stages)
    assert {"prompt", "output"} <= stages
    # A prompt the prompt stage blocks goes through with the stage off for the call (the locked rule still runs).
    with pytest.raises(PromptBlocked):
        _run(guarded, "a pipe bomb on a workbench", output_type="np")
    assert (
        not _run(guarded, "a pipe bomb on a workbench", output_type="np", safeguard={"prompt": False})
        .verdicts[0]
        .blocked
    )
    with pytest.raises(PromptBlocked) as locked:
        _run(guarded, "a naked child", output_type="np", safeguard={"prompt": False})
    assert locked.value.verdict.locked


def test_per_call_toggles_are_refused_where_the_preset_locks_them(make_pipeline):
    guarded = safeguard.protect(make_pipeline(), preset="strict")
    for toggles, locked in (
        ({"output": False}, "output.enabled"),
        ({"prompt": False}, "prompt.enabled"),
        ({"redaction": "flag"}, "output.redaction"),
        ({"disclosure": False}, "disclosure.enabled"),
        ({"on_block": "return"}, "on_block"),
    ):
        with pytest.raises(ConfigError, match=locked.replace(".", r"\.")):
            _run(guarded, "a watercolor painting", safeguard=toggles)
    # Stricter is fine: strict already blurs nothing (withhold); raise is stricter still.
    assert _run(guarded, "a watercolor painting", safeguard={"redaction": "raise"}).verdicts[0].action.value == "allow"


def test_per_call_toggles_reject_unknown_names_and_wrong_shapes(make_pipeline):
    guarded = safeguard.protect(make_pipeline(), preset="research")
    with pytest.raises(ConfigError, match=r"unknown safeguard= toggle\(s\) 'ouput'; known: prompt"):
        _run(guarded, "a lighthouse", safeguard={"ouput": False})
    with pytest.raises(ConfigError, match="image_model"):
        _run(guarded, "a lighthouse", safeguard={"image_model": "/models/clip"})
    with pytest.raises(ConfigError, match="takes a mapping"):
        _run(guarded, "a lighthouse", safeguard=["output"])
    with pytest.raises(ConfigError, match="output"):
        _run(guarded, "a lighthouse", safeguard={"output": "no"})


def test_per_call_toggles_are_read_once_so_a_hostile_mapping_cannot_poison_the_cache(make_pipeline):
    from collections.abc import Mapping

    class Flipping(Mapping):
        """Answers "blur" to the first read of its value and "flag" to every later one."""

        def __init__(self):
            self.reads = 0

        def __iter__(self):
            return iter(["redaction"])

        def __len__(self):
            return 1

        def __getitem__(self, key):
            self.reads += 1
            return "blur" if self.reads == 1 else "flag"

    class Sly(str):
        def __repr__(self):
            return "'black'"

    guarded = safeguard.protect(make_pipeline(), preset="balanced")
    first = guarded._guard_for(Flipping())
    honest = guarded._guard_for({"redaction": "blur"})
    assert first.settings.output.redaction == honest.settings.output.redaction == "blur"
    guarded._guard_for({"redaction": Sly("flag")})
    assert guarded._guard_for({"redaction": "black"}).settings.output.redaction == "black"
    with pytest.raises(ConfigError, match="must be True, False or a name"):
        guarded._guard_for({"output": 0})

    class Keys(dict):
        """Lists one key when iterated and another through keys()."""

        def __iter__(self):
            return iter(["output"])

    with pytest.raises(ConfigError, match="image_model"):
        guarded._guard_for(Keys(output=True, image_model="/nonexistent"))


def test_latent_output_is_refused_while_disclosure_is_on(make_pipeline):
    guarded = safeguard.protect(make_pipeline(), output=False)  # balanced: disclosure on
    with pytest.raises(ConfigError, match="watermark cannot be added"):
        _run(guarded, "a lighthouse", output_type="latent")
    plain = safeguard.protect(make_pipeline(), output=False, disclosure=False)
    assert _run(plain, "a lighthouse", output_type="latent").images is not None
