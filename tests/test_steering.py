"""The steering stage on tiny real SD 1.x, SDXL, SD3 and Flux pipelines: projection, safety guidance, adaptivity."""

from __future__ import annotations

import contextlib
import dataclasses
import threading

import numpy as np
import pytest
import torch
from conftest import hook_count
from diffusers import StableDiffusionPipeline

import safeguard
from safeguard.config import resolve_settings
from safeguard.errors import ConfigError, UnsupportedPipelineError
from safeguard.steering import (
    adapter_for,
    available_steering_presets,
    load_steering_preset,
    neutral_phrase,
    orthonormal_basis,
    project,
    sld_term,
)
from safeguard.steering.stage import ConceptSteeringStage
from safeguard.toy import POLICY_PATH
from safeguard.verdict import Action

STEPS = 2
# Keyword hits on the toy policy's "red" are steered, never blocked: `block: null` means "only steer".
STEER_ONLY = {"prompt": {"thresholds": {"default": {"steer": 0.5, "block": None}}}}


def _run(pipe, prompt, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "np")
    return pipe(prompt, generator=torch.Generator().manual_seed(0), **kwargs)


def _protect(pipe, steering, config=STEER_ONLY, **kwargs):
    kwargs.setdefault("output", False)
    return safeguard.protect(pipe, policy=POLICY_PATH, preset="research", config=config, steering=steering, **kwargs)


def _components(pipe):
    return {k: c for k, c in pipe.components.items() if isinstance(c, torch.nn.Module)}


def _snapshot(pipe):
    return {
        name: (
            {k: v.clone() for k, v in c.state_dict().items()},
            hook_count(c),
            sorted(vars(c)),
            [sorted(vars(m)) for m in c.modules()],
        )
        for name, c in _components(pipe).items()
    }


def _assert_same(before, after):
    assert before.keys() == after.keys()
    for name, (state, hooks, attrs, sub_attrs) in before.items():
        state2, hooks2, attrs2, sub_attrs2 = after[name]
        assert hooks == hooks2, name
        assert attrs == attrs2 and sub_attrs == sub_attrs2, name
        assert all(torch.equal(state[k], state2[k]) for k in state), name


def _with_method(guarded, projection: bool, guidance: bool):
    stage = guarded.guard.steering_stage
    preset = stage.preset
    stage.preset = dataclasses.replace(
        preset,
        projection=dataclasses.replace(preset.projection, enabled=projection),
        guidance=dataclasses.replace(preset.guidance, enabled=guidance),
    )
    return guarded


@contextlib.contextmanager
def _rows_seen(pipe):
    """Record the batch size of every denoiser call, as run (registered first, so it sees the raw output)."""
    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    rows: list[int] = []

    def hook(module, args, output):
        rows.append((output[0] if isinstance(output, tuple) else output.sample).shape[0])

    handle = denoiser.register_forward_hook(hook)
    try:
        yield rows
    finally:
        handle.remove()


# -- all four families ---------------------------------------------------------------------------------
def test_steering_changes_a_flagged_prompt_and_leaves_a_benign_one_bit_identical(family, make_pipeline):
    pipe = make_pipeline()
    plain = _run(pipe, "a red circle").images
    plain_benign = _run(pipe, "a blue circle").images
    guarded = _protect(pipe, "strong")
    out = _run(guarded, "a red circle")
    assert out.prompt_verdicts[0].action is Action.STEER
    assert not np.array_equal(out.images, plain)
    with _rows_seen(pipe) as rows:
        benign = _run(guarded, "a blue circle")
    assert np.array_equal(benign.images, plain_benign)
    assert not benign.prompt_verdicts[0].flagged
    # a benign prompt runs the denoiser exactly as without steering: no extra rows, no hook
    assert rows == [1 if family == "flux" else 2] * STEPS


@pytest.mark.parametrize(("projection", "guidance"), [(True, False), (False, True)])
def test_each_method_alone_changes_the_flagged_output(family, make_pipeline, projection, guidance):
    pipe = make_pipeline()
    plain = _run(pipe, "a red circle").images
    guarded = _with_method(_protect(pipe, "strong"), projection, guidance)
    with _rows_seen(pipe) as rows:
        out = _run(guarded, "a red circle").images
    assert not np.array_equal(out, plain)
    base = 1 if family == "flux" else 2
    extra = (2 if family == "flux" else 1) if guidance else 0  # concept row (+ empty-prompt row without CFG)
    assert rows == [base + extra] * STEPS


def test_components_are_unchanged_after_a_call_and_after_a_call_that_raises(make_pipeline):
    pipe = make_pipeline()
    _run(pipe, "a red circle")  # transformers installs its own output-capturing hooks on the first call
    guarded = _protect(pipe, "max")
    _run(guarded, "a red circle")  # and the stage's concept encodings run the text encoders once
    before = _snapshot(pipe)
    _run(guarded, "a red circle")
    _assert_same(before, _snapshot(pipe))

    def explode(*args, **kwargs):
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        _run(guarded, "a red circle", callback_on_step_end=explode)
    _assert_same(before, _snapshot(pipe))
    assert "postprocess" not in vars(pipe.image_processor)


def test_batches_steer_only_the_flagged_prompts(family, make_pipeline):
    pipe = make_pipeline()
    prompts = ["a blue circle", "a red circle"]
    plain = _run(pipe, prompts, num_images_per_prompt=2).images
    with _rows_seen(pipe) as rows:
        out = _run(_protect(pipe, "medium"), prompts, num_images_per_prompt=2)
    assert [v.action for v in out.prompt_verdicts] == [Action.ALLOW, Action.STEER]
    base = 4 if family == "flux" else 8
    assert rows == [base + (4 if family == "flux" else 2)] * STEPS
    # the unflagged prompt's images do not depend on the flagged ones' steering
    assert np.allclose(out.images[:2], plain[:2], atol=1e-5)
    assert not np.allclose(out.images[2:], plain[2:], atol=1e-3)


# -- adaptivity and own concept scores -----------------------------------------------------------------
def test_benign_calls_install_nothing():
    from safeguard.testing import tiny

    pipe = tiny.sd_pipeline()
    stage = _protect(pipe, "max").guard.steering_stage
    verdicts = _protect(pipe, "max").guard.check_prompts(["a blue circle"])
    assert isinstance(stage.apply(pipe, {}, verdicts, {"prompt": "a blue circle"}), contextlib.nullcontext)


def test_with_the_prompt_stage_off_the_own_concept_score_decides_block_level_included():
    from safeguard.testing import tiny

    pipe = tiny.sd_pipeline()
    # Random encoders make the score meaningless, so the thresholds pin the decision: every score is >= 0.
    for thresholds in ({"steer": 0.0, "block": 1.0}, {"steer": None, "block": 0.0}):
        config = {"prompt": {"thresholds": {"default": thresholds}}}
        guarded = _protect(pipe, "weak", config=config, prompt=False)
        stage = guarded.guard.steering_stage
        verdicts = guarded.guard.check_prompts(["a blue circle"])
        assert not verdicts[0].flagged
        assert stage.categories_to_steer(pipe, verdicts, {"prompt": "a blue circle"}) == [("red",)]
    scores = stage.concept_scores(pipe, ["a red shape", "a blue circle"])["red"]
    assert scores.shape == (2,) and bool(((scores >= 0) & (scores <= 1)).all())
    strict = _protect(pipe, "weak", config={"prompt": {"thresholds": {"default": {"steer": 1.0, "block": 1.0}}}},
                      prompt=False)  # fmt: skip
    # at most a perfect concept score reaches 1.0; a blue circle never does with these weights
    assert strict.guard.steering_stage.categories_to_steer(pipe, verdicts, {"prompt": "a blue circle"}) in (
        [()],
        [("red",)],
    )


def _count_encodes(monkeypatch):
    """Every text the steering adapters encode, in order (concept phrases and prompts alike)."""
    from safeguard.steering.adapters import FamilyAdapter

    seen: list[str] = []
    encode = FamilyAdapter.encode

    def counting(self, pipe, texts, length=None):
        seen.extend(texts)
        return encode(self, pipe, texts, length)

    monkeypatch.setattr(FamilyAdapter, "encode", counting)
    return seen


def test_concept_encodings_are_built_once_per_text_encoder_not_per_stage_or_call(monkeypatch):
    from safeguard.policy import load_policy
    from safeguard.steering.projection import concept_pairs
    from safeguard.testing import tiny

    pipe = tiny.sd_pipeline()
    phrases = {p for texts in concept_pairs(load_policy(POLICY_PATH)["red"]) for p in texts}
    seen = _count_encodes(monkeypatch)
    config = {"prompt": {"thresholds": {"default": {"steer": 0.0, "block": 1.0}}}}  # every prompt is steered
    _run(_protect(pipe, "max", config=config, prompt=False), "a blue circle")
    first = [t for t in seen if t in phrases]
    assert first and set(first) == phrases
    seen.clear()
    # A second call, a second guard (another protect(), a per-call toggle) and the encoder prompt stage's scorer
    # reuse them: only the prompt itself is encoded.
    guarded = _protect(pipe, "max", config=config, prompt=False)
    _run(guarded, "a blue circle")
    _run(guarded, "a blue circle", safeguard={"steering": "strong"})
    from safeguard.stages.encoder import _Scores

    scores = _Scores(pipe, load_policy(POLICY_PATH), ["red"])
    scores.scores(scores.summaries(["a blue circle"]))
    assert [t for t in seen if t in phrases] == []
    assert seen.count("a blue circle") == 3


def test_another_text_encoder_never_reads_the_first_ones_concept_encodings(monkeypatch):
    import gc

    from diffusers import StableDiffusionPipeline

    from safeguard.policy import load_policy
    from safeguard.steering import concepts
    from safeguard.steering.projection import ConceptScorer, concept_pairs
    from safeguard.testing import tiny

    red = load_policy(POLICY_PATH)["red"]
    phrases = {p for texts in concept_pairs(red) for p in texts}

    def fresh_scores(pipe, texts):
        """The scores from scratch: the category's phrases encoded now with this pipeline's encoder."""
        adapter = adapter_for(type(pipe))
        concept_texts, neutral_texts = concept_pairs(red)
        scorer = ConceptScorer.fit(
            adapter.encode(pipe, concept_texts).summary(), adapter.encode(pipe, neutral_texts).summary()
        )
        return scorer.score(adapter.encode(pipe, texts).summary())

    texts = ["a red circle", "a blue circle", "a green square"]
    first = tiny.sd_pipeline()
    second = tiny.sd_pipeline()
    with torch.no_grad():
        for p in second.text_encoder.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    seen = _count_encodes(monkeypatch)
    on_first = concepts.concept_scores(first, [red], adapter_for(type(first)).encode(first, texts).summary())["red"]
    assert phrases <= set(seen)
    seen.clear()
    on_second = concepts.concept_scores(second, [red], adapter_for(type(second)).encode(second, texts).summary())
    assert phrases <= set(seen)  # built again, for this encoder
    assert torch.allclose(on_second["red"], fresh_scores(second, texts))
    assert torch.allclose(on_first, fresh_scores(first, texts))
    assert not torch.allclose(on_first, on_second["red"])

    # The same encoder in another pipeline shares them; an encoder swapped into a pipeline gets its own.
    seen.clear()
    sharing = StableDiffusionPipeline(**first.components)
    concepts.concept_scorer(sharing, red)
    assert not phrases & set(seen)
    first.text_encoder = second.text_encoder
    assert torch.equal(concepts.concept_scorer(first, red).direction, concepts.concept_scorer(second, red).direction)
    first.text_encoder = tiny.sd_pipeline().text_encoder
    seen.clear()
    concepts.concept_scorer(first, red)
    assert phrases <= set(seen)

    # Weakly held: a collected encoder takes its entry with it.
    held = len(concepts._CACHES)
    del first, second, sharing
    gc.collect()
    assert len(concepts._CACHES) < held


def test_prompt_embeds_are_steered_from_their_own_concept_score():
    from safeguard.testing import tiny

    pipe = tiny.sd_pipeline()
    embeds, _ = pipe.encode_prompt("a red circle", "cpu", 1, False)
    # prompt_embeds need an explicit yes in a user layer, and an image check (here the toy policy's CLIP).
    config = {"accept_prompt_embeds": True, "prompt": {"thresholds": {"default": {"steer": 0.0, "block": 1.0}}}}
    plain = _run(pipe, None, prompt_embeds=embeds).images
    out = _run(_protect(pipe, "weak", config=config, output=True), None, prompt_embeds=embeds).images
    assert not np.array_equal(out, plain)
    never = {"accept_prompt_embeds": True, "prompt": {"thresholds": {"default": {"steer": None, "block": 1.0}}}}
    with contextlib.suppress(AssertionError):  # a score of exactly 1.0 would be steered; random weights
        unsteered = _run(_protect(pipe, "weak", config=never, output=True), None, prompt_embeds=embeds).images
        assert np.array_equal(unsteered, plain)


def test_global_torch_state_is_untouched_by_steering():
    from safeguard.testing import tiny

    pipe = tiny.flux_pipeline()
    threads, dtype, rng = torch.get_num_threads(), torch.get_default_dtype(), torch.random.get_rng_state()
    _run(_protect(pipe, "max"), "a red circle")
    assert torch.get_num_threads() == threads and torch.get_default_dtype() == dtype
    assert torch.equal(torch.random.get_rng_state(), rng)


# -- presets, config and math --------------------------------------------------------------------------
def test_presets_load_with_documented_costs():
    assert available_steering_presets() == ["max", "medium", "strong", "weak"]
    presets = {name: load_steering_preset(name) for name in ("weak", "medium", "strong", "max")}
    assert [p.extra_rows(cfg=True) for p in presets.values()] == [0, 1, 1, 1]
    assert [p.extra_rows(cfg=False) for p in presets.values()] == [0, 2, 2, 2]
    scales = [p.guidance.scale for p in presets.values()]
    assert scales == sorted(scales)
    settings = resolve_settings(preset="research", steering="max")
    assert ConceptSteeringStage(safeguard.load_policy(), settings).preset.name == "max"


def test_bad_steering_preset_values_are_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("projection: {alpha: 3}\nguidance: {enabled: true}\n")
    with pytest.raises(ConfigError, match=r"projection\.alpha"):
        load_steering_preset(bad)
    bad.write_text("projection: {}\nguidance: {warmup: 1.0}\n")
    with pytest.raises(ConfigError, match=r"guidance\.warmup"):
        load_steering_preset(bad)
    with pytest.raises(ConfigError, match="unknown steering preset"):
        load_steering_preset("gentle")


def test_block_null_means_steer_only():
    settings = resolve_settings(config=STEER_ONLY)
    assert settings.prompt.thresholds.for_category("red") == (0.5, float("inf"))
    with pytest.raises(ConfigError, match="expected a number"):
        resolve_settings(config={"prompt": {"thresholds": {"default": {"steer": 0.5, "block": 1.5}}}})


def test_unknown_pipeline_classes_have_no_adapter():
    class NotAPipeline:
        pass

    with pytest.raises(UnsupportedPipelineError, match="NotAPipeline"):
        adapter_for(NotAPipeline)


def test_neutral_phrases_drop_the_keywords():
    assert neutral_phrase("a crimson shape", ("red", "crimson")) == "a shape"
    assert neutral_phrase("two reds", ("red",)) == "two"
    assert neutral_phrase("a gory scene", ("gor*",)) == "a scene"
    assert neutral_phrase("a bloody scene", ("blood*",)) == "a scene"


def test_projection_removes_the_concept_and_keeps_the_rest():
    generator = torch.Generator().manual_seed(0)
    concept = torch.randn(3, 16, generator=generator)
    basis = orthonormal_basis(concept, energy=0.999, max_rank=8)
    assert basis.shape == (16, 3)
    assert torch.allclose(basis.T @ basis, torch.eye(3), atol=1e-5)
    reference = torch.randn(5, 16, generator=generator)
    tokens = reference + torch.randn(5, 16, generator=generator)
    out = project(tokens, basis, reference, alpha=1.0, token_threshold=0.0)
    assert torch.allclose((out - reference) @ basis, torch.zeros(5, 3), atol=1e-5)
    outside = torch.eye(16) - basis @ basis.T
    assert torch.allclose(out @ outside, tokens @ outside, atol=1e-5)
    # a threshold above every token's share keeps every token
    assert torch.equal(project(tokens, basis, reference, alpha=1.0, token_threshold=1.01), tokens)


def test_sld_term_follows_the_paper():
    e_u, e_p = torch.zeros(3), torch.tensor([1.0, 1.0, 1.0])
    e_s = torch.tensor([1.0005, 0.5, 2.0])
    term = sld_term(e_p, e_s, e_u, scale=1000.0, threshold=0.01, weight=1.0)
    # where e_p - e_S < lambda the mask is min(1, s_S |e_p - e_S|); elsewhere 0
    assert torch.allclose(term, torch.tensor([0.5 * 1.0005, 0.0, 2.0]), atol=1e-3)
    assert torch.allclose(sld_term(e_p, e_s, e_u, 1000.0, 0.01, weight=2.0), 2 * term)


# -- what steering did is in the verdict ---------------------------------------------------------------
def _steering_findings(verdict):
    return [f for f in verdict.findings if f.stage == "steering"]


@pytest.mark.parametrize(("strength", "source"), [("weak", "projection"), ("strong", "projection+guidance")])
def test_a_steered_image_verdict_names_the_category_method_and_strength(family, make_pipeline, strength, source):
    guarded = _protect(make_pipeline(), strength)
    out = _run(guarded, ["a blue circle", "a red circle"])
    benign, steered = out.verdicts
    assert not benign.flagged and not _steering_findings(benign)
    assert steered.action is Action.STEER
    (finding,) = _steering_findings(steered)
    assert (finding.category, finding.action, finding.source) == ("red", Action.STEER, source)
    # the keyword hit that put it in the steer band: score 1, steer threshold 0.5 (STEER_ONLY)
    assert (finding.score, finding.threshold) == (1.0, 0.5)
    assert strength in finding.detail and "prompt/keyword" in finding.detail
    record = steered.to_dict()
    assert "steering" in record["stages"] and record["action"] == "steer"
    assert {"stage": "steering", "action": "steer", "source": source, "category": "red"}.items() <= next(
        f for f in record["findings"] if f["stage"] == "steering"
    ).items()


def test_with_the_prompt_stage_off_a_steered_image_is_not_reported_as_allowed():
    from safeguard.testing import tiny

    # The prompt stage is off, so the prompt verdict is allow; the stage's own concept score steers it.
    config = {"prompt": {"thresholds": {"default": {"steer": 0.0, "block": 1.0}}}}
    guarded = _protect(tiny.sd_pipeline(), "weak", config=config, prompt=False)
    out = _run(guarded, "a blue circle")
    assert not out.prompt_verdicts[0].flagged
    assert out.verdicts[0].action is Action.STEER
    (finding,) = _steering_findings(out.verdicts[0])
    assert finding.source == "projection" and finding.threshold == 0.0 and 0.0 <= finding.score <= 1.0
    assert "steering/concept-score" in finding.detail


def test_only_the_methods_that_ran_are_recorded():
    from safeguard.testing import tiny

    pipe = tiny.sd_pipeline()
    # strong warms guidance up for ceil(0.1 * steps) steps: with one step, guidance never acts.
    out = _run(_protect(pipe, "strong"), "a red circle", num_inference_steps=1)
    assert [f.source for f in _steering_findings(out.verdicts[0])] == ["projection"]
    guided = _run(_with_method(_protect(pipe, "strong"), projection=False, guidance=True), "a red circle")
    assert [f.source for f in _steering_findings(guided.verdicts[0])] == ["guidance"]


def test_a_prompt_meant_to_be_steered_that_nothing_steered_is_withheld():
    from safeguard.testing import tiny

    pipe = tiny.sd_pipeline()
    # Guidance alone, for one step inside its warm-up: the hooks run but change nothing.
    guarded = _with_method(_protect(pipe, "strong"), projection=False, guidance=True)
    out = _run(guarded, ["a blue circle", "a red circle"], num_inference_steps=1)
    assert not out.verdicts[0].flagged and out.images[0].any()
    assert out.verdicts[1].blocked
    assert not any(f.action is Action.STEER for f in _steering_findings(out.verdicts[1]))
    failure = next(f for f in out.verdicts[1].findings if f.category == "stage_failure")
    assert failure.source == "steering" and "changed nothing" in failure.detail and "red" in failure.detail
    assert not out.images[1].any(), "withheld, even under research"


class _ThreadedSD(StableDiffusionPipeline):
    """Runs its whole call in a worker thread of its own, where the call's steering hooks do not act."""

    def __call__(self, *args, **kwargs):
        result = []
        worker = threading.Thread(target=lambda: result.append(super(_ThreadedSD, self).__call__(*args, **kwargs)))
        worker.start()
        worker.join()
        return result[0]


def test_a_pipeline_whose_denoiser_the_hooks_never_reach_is_not_reported_as_steered():
    from safeguard.testing import tiny

    pipe = _ThreadedSD(**tiny.sd_pipeline().components)
    out = _run(_protect(pipe, "strong"), "a red circle")
    verdict = out.verdicts[0]
    assert verdict.blocked and not any(f.action is Action.STEER and f.stage == "steering" for f in verdict.findings)
    assert any(f.category == "stage_failure" and f.source == "steering" for f in verdict.findings)
    assert not out.images.any()
