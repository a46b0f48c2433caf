"""The forward cache (:mod:`facemogle.forward_cache`): exact savings change nothing; the condition
cache and the step cache reuse what they claim, exactly when the inputs do not change, and are
counted; bad settings are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tolerances import EXACT, ROUNDOFF

from facemogle.condition import condition_forward
from facemogle.errors import InputError
from facemogle.forward_cache import CachePolicy, ForwardCache, cache_policy, parse_condition_cache, parse_step_cache
from facemogle.specs import load_pipeline

STEPS = 6


@pytest.fixture(scope="module")
def pipe():
    """tiny-random with a non-zero condition LoRA (so the condition stream matters), text guidance."""
    pipe = load_pipeline("tiny-random", seed=0)
    generator = torch.Generator().manual_seed(1)
    for name, parameter in pipe.transformer.named_parameters():
        if "lora_B" in name:
            parameter.data = 0.05 * torch.randn(parameter.shape, generator=generator)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, mask, **kwargs):
    kwargs = {"prompt": "a face with blond hair", "seed": 3, "num_inference_steps": STEPS, "output_type": "pt",
              "mask_guidance_scale": 3.0, "text_guidance": True, **kwargs}
    return pipe(mask=mask, **kwargs).images


@pytest.fixture(scope="module")
def exact(pipe, mask_27000_ids):
    return generate(pipe, mask_27000_ids)


@pytest.fixture(scope="module")
def mask_27000_ids(fixtures_dir):
    from facemogle.masks import load_mask, resize_mask

    return resize_mask(load_mask(fixtures_dir / "masks" / "27000.png"), (64, 64))


@pytest.mark.parametrize("mask", ["given", None])
def test_exact_savings_leave_the_output_unchanged(pipe, mask_27000_ids, mask):
    mask = mask_27000_ids if mask == "given" else None
    with_savings = generate(pipe, mask)
    pipe.exact_savings = frozenset()
    try:
        without = generate(pipe, mask)
    finally:
        del pipe.exact_savings  # back to the class default
    # the kept blank map was encoded in a batch of its own: VAE round-off, nothing more
    torch.testing.assert_close(with_savings, without, **ROUNDOFF)
    assert pipe.forward_cache_counts is None  # nothing kept between steps without the step invariants


def test_each_exact_saving_alone_leaves_the_output_unchanged(pipe, mask_27000_ids):
    outputs = {}
    for saving in ("none", *FaceMoGLEPipelineSavings):
        pipe.exact_savings = frozenset() if saving == "none" else frozenset({saving})
        try:
            outputs[saving] = generate(pipe, mask_27000_ids)
        finally:
            del pipe.exact_savings
    for saving in FaceMoGLEPipelineSavings:
        tolerance = ROUNDOFF if saving == "condition_images" else EXACT  # see above
        torch.testing.assert_close(outputs[saving], outputs["none"], **tolerance)


FaceMoGLEPipelineSavings = ("condition_images", "experts", "step_invariants")


def test_savings_named_here_are_the_pipelines(pipe):
    assert set(FaceMoGLEPipelineSavings) == set(type(pipe).exact_savings)


def test_condition_cache_every_1_is_exact_and_every_k_reuses_k_minus_1_steps(pipe, mask_27000_ids, exact):
    torch.testing.assert_close(generate(pipe, mask_27000_ids, condition_cache="every:1"), exact, **EXACT)
    assert pipe.forward_cache_counts == {"full": STEPS, "condition_reused": 0, "blocks_skipped": 0}
    for setting in ("every:3", "every:3+first"):
        cached = generate(pipe, mask_27000_ids, condition_cache=setting)
        assert pipe.forward_cache_counts == {"full": 2, "condition_reused": 4, "blocks_skipped": 0}
        difference = (cached - exact).abs()
        assert 0 < difference.max() < 0.2, setting  # an approximation, but close
    refreshed = generate(pipe, mask_27000_ids, condition_cache="every:3+first")
    assert not torch.equal(refreshed, generate(pipe, mask_27000_ids, condition_cache="every:3"))


def test_step_cache_skips_steps_only_above_the_threshold(pipe, mask_27000_ids, exact):
    tiny = generate(pipe, mask_27000_ids, step_cache="first-block:1e-9")
    assert pipe.forward_cache_counts["blocks_skipped"] == 0
    torch.testing.assert_close(tiny, exact, **EXACT)
    loose = generate(pipe, mask_27000_ids, step_cache="first-block:10")
    # the first step has nothing to compare with; every later one is within a threshold of 10
    assert pipe.forward_cache_counts == {"full": 1, "condition_reused": 0, "blocks_skipped": STEPS - 1}
    assert (loose - exact).abs().max() > 1e-3


def forward_inputs(pipe, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    config = pipe.transformer.config
    n, length = 16, 8
    return dict(
        hidden_states=torch.randn(batch, n, config.in_channels, generator=generator),
        condition_tokens=torch.randn(batch, n, config.in_channels, generator=generator),
        encoder_hidden_states=torch.randn(batch, length, config.joint_attention_dim, generator=generator),
        pooled_projections=torch.randn(batch, config.pooled_projection_dim, generator=generator),
        timestep=torch.full((batch,), 0.6),
        img_ids=torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"),
                            -1).reshape(n, 3),
        txt_ids=torch.zeros(length, 3),
        guidance=torch.full((batch,), 3.5) if config.guidance_embeds else None,
    )


@pytest.mark.parametrize("policy", [CachePolicy(condition_every=2), CachePolicy(condition_every=2, refresh_first_block=True),
                                    CachePolicy(first_block_threshold=0.5)])
def test_reused_parts_equal_recomputed_ones_when_the_inputs_repeat(pipe, policy):
    """The same inputs twice: the second call reuses kept keys/values (or skips the blocks after the
    first) and must give what the full forward gives, up to round-off."""
    inputs = forward_inputs(pipe)
    with torch.no_grad():
        full = condition_forward(pipe.transformer, **inputs)
        cache = ForwardCache(policy)
        first = condition_forward(pipe.transformer, **inputs, cache=cache)
        second = condition_forward(pipe.transformer, **inputs, cache=cache)
    torch.testing.assert_close(first, full, **EXACT)
    torch.testing.assert_close(second, full, **ROUNDOFF)
    reused = cache.counts["condition_reused"] + cache.counts["blocks_skipped"]
    assert cache.counts["full"] == 1 and reused == 1


def test_kept_keys_values_follow_the_condition_tokens(pipe):
    """Reuse is visible: new condition tokens at a reused step change nothing without the refresh,
    and change the output with ``+first``."""
    inputs = forward_inputs(pipe)
    other = {**inputs, "condition_tokens": inputs["condition_tokens"] + 1.0}
    with torch.no_grad():
        for refresh, changes in ((False, False), (True, True)):
            cache = ForwardCache(CachePolicy(condition_every=2, refresh_first_block=refresh))
            condition_forward(pipe.transformer, **inputs, cache=cache)
            reused = condition_forward(pipe.transformer, **other, cache=cache)
            same = condition_forward(pipe.transformer, **inputs, cache=ForwardCache(CachePolicy(condition_every=2)))
            assert (not torch.allclose(reused, same, atol=1e-6)) == changes


def test_text_only_without_condition_stream(pipe, mask_27000_ids):
    base = generate(pipe, None, condition_cache="none")
    assert base.shape == (1, 3, 64, 64)
    assert (base - generate(pipe, None)).abs().max() > 1e-4  # the empty mask's condition stream matters here
    with pytest.raises(InputError, match="no condition stream"):
        generate(pipe, mask_27000_ids, condition_cache="none")


@pytest.mark.parametrize("text", ["every:0", "every:-1", "every", "every:2+last", "sometimes", "every:1001"])
def test_bad_condition_cache_refused(text):
    with pytest.raises(InputError, match="condition_cache must be"):
        parse_condition_cache(text)


@pytest.mark.parametrize("text", ["first-block:0", "first-block:nan", "first-block:inf", "first-block:-1", "taylor",
                                  "first-block:11"])
def test_bad_step_cache_refused(text):
    with pytest.raises(InputError, match="step_cache must be"):
        parse_step_cache(text)


def test_policies_parse():
    assert cache_policy().exact and cache_policy("every:1", "off").exact
    assert cache_policy("every:4+first", "first-block:0.1") == CachePolicy(4, True, 0.1)
    assert not cache_policy("none").condition_stream


def test_diffusers_cache_hooks_are_refused_with_the_alternative(mask_27000_ids):
    from diffusers import FirstBlockCacheConfig

    pipe = load_pipeline("tiny-random", seed=0)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    with pytest.raises(InputError, match="step_cache='first-block:T'"):
        pipe(mask=mask_27000_ids, num_inference_steps=2, seed=0, output_type="latent")
    pipe.transformer.disable_cache()
    pipe(mask=mask_27000_ids, num_inference_steps=2, seed=0, output_type="latent", step_cache="first-block:0.1")


def test_cached_images_record_their_cache_settings(pipe, mask_27000_ids):
    from facemogle.provenance import PARAMETERS_KEY
    import json

    marked = pipe(mask=mask_27000_ids, seed=0, num_inference_steps=2, condition_cache="every:2").images[0]
    assert json.loads(marked.info[PARAMETERS_KEY])["condition_cache"] == "every:2"
    exact = pipe(mask=mask_27000_ids, seed=0, num_inference_steps=2).images[0]
    assert "condition_cache" not in json.loads(exact.info[PARAMETERS_KEY])
    assert np.asarray(marked).shape == np.asarray(exact).shape
