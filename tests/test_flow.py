"""Rectified flow: Golden B numbers (x_t, target, loss) and the sampling / loss contracts."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from facemogle.errors import InputError
from facemogle.flow import (RectifiedFlow, RectifiedFlowLoss, noisy_latents, part_token_weights, sample_timesteps,
                            shift_timesteps, token_channel_weights, velocity_target)

GOLDEN_B_LOSS = 1.3515936  # GOLDEN.md, Golden B step 7


@pytest.fixture(scope="module")
def golden_b(golden_dir):
    return load_file(golden_dir / "golden_B_train_forward.safetensors")


def test_golden_b_noisy_latents_target_and_loss(golden_b):
    x_t = noisy_latents(golden_b["x_0"], golden_b["noise"], golden_b["t"])
    target = velocity_target(golden_b["x_0"], golden_b["noise"])
    loss = RectifiedFlowLoss()(golden_b["pred"], golden_b["target"])
    assert torch.allclose(x_t, golden_b["x_t"], atol=1e-6, rtol=0)
    assert torch.allclose(target, golden_b["target"], atol=1e-6, rtol=0)
    assert loss.shape == ()
    assert abs(loss.item() - golden_b["loss"].item()) < 1e-6
    assert abs(loss.item() - GOLDEN_B_LOSS) < 1e-6


def test_per_sample_loss_averages_to_the_loss(golden_b):
    loss, per_sample = RectifiedFlowLoss()(golden_b["pred"], golden_b["target"], return_per_sample=True)
    assert per_sample.shape == (2,)
    assert torch.allclose(per_sample.mean(), loss, atol=1e-6)
    expected_first = (golden_b["pred"][0] - golden_b["target"][0]).square().mean()
    assert torch.allclose(per_sample[0], expected_first, atol=1e-6)
    assert per_sample[0] != per_sample[1]


def test_sample_timesteps_are_logit_normal_and_seeded():
    t = sample_timesteps(4096, generator=torch.Generator().manual_seed(0))
    assert t.shape == (4096,) and t.dtype == torch.float32
    assert bool(((t > 0) & (t < 1)).all())
    assert abs(t.mean().item() - 0.5) < 0.02  # symmetric around 0.5
    assert abs(t.median().item() - 0.5) < 0.02
    # logit-normal(0, 1): logit(t) is standard normal
    logits = torch.logit(t.double())
    assert abs(logits.std().item() - 1.0) < 0.05
    again = sample_timesteps(4096, generator=torch.Generator().manual_seed(0))
    other = sample_timesteps(4096, generator=torch.Generator().manual_seed(1))
    assert torch.equal(t, again)
    assert not torch.equal(t, other)
    assert sample_timesteps(3, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(InputError):
        sample_timesteps(0)


def test_timestep_shift_is_the_schedulers_time_shift_and_moves_t_towards_noise():
    """shift_timesteps(t, s) is diffusers' exponential time_shift with mu = ln s (the shift FLUX's
    sampler applies to its sigmas); monotone, endpoints fixed, identity at s = 1."""
    import math

    from diffusers import FlowMatchEulerDiscreteScheduler

    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    for shift in (0.5, 1.65, 3.0):
        expected = torch.as_tensor(scheduler.time_shift(math.log(shift), 1.0, t[1:-1]))
        assert torch.allclose(shift_timesteps(t, shift)[1:-1], expected, atol=1e-12, rtol=0)
        shifted = shift_timesteps(t, shift)
        assert shifted[0] == 0 and shifted[-1] == 1 and bool((shifted.diff() > 0).all())
    assert shift_timesteps(t, 1.0) is t
    drawn = sample_timesteps(4096, generator=torch.Generator().manual_seed(0))
    assert (drawn > 0.6).float().mean() < 0.4 < (shift_timesteps(drawn, 3.0) > 0.6).float().mean()
    assert RectifiedFlow(timestep_shift=3.0).shift(torch.tensor([0.5])).item() == pytest.approx(0.75)
    for bad in (0.0, -1.0):
        with pytest.raises(InputError, match="timestep shift must be > 0"):
            RectifiedFlow(timestep_shift=bad)


def test_noisy_latents_endpoints_and_broadcast():
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 5, 3, generator=generator)
    noise = torch.randn(2, 5, 3, generator=generator)
    assert torch.equal(noisy_latents(x0, noise, torch.zeros(2)), x0)
    assert torch.equal(noisy_latents(x0, noise, torch.ones(2)), noise)
    half = noisy_latents(x0, noise, torch.tensor([0.5]))  # (1,) broadcasts over the batch
    assert torch.allclose(half, (x0 + noise) / 2)
    mixed = noisy_latents(x0, noise, torch.tensor([0.0, 1.0]))  # one t per sample
    assert torch.equal(mixed[0], x0[0]) and torch.equal(mixed[1], noise[1])
    with pytest.raises(InputError, match="3 timesteps for a batch of 2"):
        noisy_latents(x0, noise, torch.rand(3))
    with pytest.raises(InputError, match="differ in shape"):
        noisy_latents(x0, noise[:, :4], torch.rand(2))


def test_exact_velocity_moves_x_t_back_to_x0():
    """The straight path: x_0 = x_t - t * (noise - x_0) for any t (one Euler step from t to 0)."""
    generator = torch.Generator().manual_seed(3)
    x0 = torch.randn(4, 16, 64, generator=generator, dtype=torch.float64)
    noise = torch.randn(4, 16, 64, generator=generator, dtype=torch.float64)
    t = sample_timesteps(4, generator=generator, dtype=torch.float64)
    x_t = noisy_latents(x0, noise, t)
    recovered = x_t - t[:, None, None] * velocity_target(x0, noise)
    assert torch.allclose(recovered, x0, atol=1e-12)


def test_loss_is_float32_zero_for_perfect_prediction_and_checks_shapes():
    target = torch.randint(-8, 8, (2, 4, 8)).bfloat16()  # exact in bf16, also after + 1
    loss_fn = RectifiedFlowLoss()
    assert loss_fn(target, target).item() == 0.0
    assert loss_fn(target, target + 1).dtype == torch.float32
    assert loss_fn(target, target + 1).item() == pytest.approx(1.0)
    with pytest.raises(InputError, match="differ in shape"):
        loss_fn(target, target[:1])


def test_channel_weights_have_mean_one_and_follow_the_packing_order():
    gain = torch.tensor([4.0, 1.0, 0.25])
    assert torch.equal(token_channel_weights(gain, 0.0), torch.ones(12))  # power 0: the plain loss
    weights = token_channel_weights(gain, 1.0)
    assert weights.shape == (12,) and weights.mean().item() == pytest.approx(1.0)
    # pack_latents puts channel c's 2 x 2 positions at c*4 .. c*4+3
    assert torch.equal(weights.view(3, 4), weights.view(3, 4)[:, :1].expand(3, 4))
    assert weights[0] / weights[4] == pytest.approx(4.0) and weights[4] / weights[8] == pytest.approx(4.0)


def test_weighted_loss_weighs_each_channel_and_checks_the_width():
    target = torch.zeros(2, 3, 8)
    pred = torch.zeros(2, 3, 8)
    pred[..., 0] = 1.0  # error only in channel 0
    weights = torch.tensor([3.0] + [1.0] * 7)
    assert RectifiedFlowLoss()(pred, target).item() == pytest.approx(1 / 8)
    loss, per_sample = RectifiedFlowLoss(weights)(pred, target, return_per_sample=True)
    assert loss.item() == pytest.approx(3 / 8)
    assert torch.allclose(per_sample, torch.full((2,), 3 / 8))
    with pytest.raises(InputError, match="8 loss channel weights for tokens of width 4"):
        RectifiedFlowLoss(weights)(pred[..., :4], target[..., :4])


def test_power_two_is_the_pixel_mse_of_the_patch_codec():
    """The PCA codec's decoder is linear with orthonormal components: weighting each latent channel
    by its gain squared makes the token loss the decoded images' pixel MSE (up to a constant)."""
    from facemogle.latents import pack_latents
    from facemogle.patch_autoencoder import fit_patch_autoencoder

    from test_patch_autoencoder import smooth_images

    codec = fit_patch_autoencoder(smooth_images(side=32), latent_channels=16, downsample_factor=4)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(2, 16, 8, 8, generator=generator)
    b = a + torch.randn(2, 16, 8, 8, generator=generator) * torch.linspace(0.1, 2.0, 16).view(1, 16, 1, 1)  # texture errs most
    pixel_mse = (codec.decode(a).sample - codec.decode(b).sample).square().mean().item()
    gain = codec.channel_gain()
    weighted = RectifiedFlowLoss(token_channel_weights(gain, 2.0))(pack_latents(a), pack_latents(b)).item()
    plain = RectifiedFlowLoss()(pack_latents(a), pack_latents(b)).item()
    assert weighted * gain.square().mean().item() / 3 == pytest.approx(pixel_mse, rel=1e-4)
    assert plain * gain.square().mean().item() / 3 != pytest.approx(pixel_mse, rel=0.1)  # so the test can tell


def test_part_token_weights_put_more_weight_on_the_part_tokens_with_mean_one():
    parts = torch.zeros(2, 8, dtype=torch.bool)
    parts[0, :2] = True  # sample 1 has no part tokens: every token 1
    weights = part_token_weights(parts, 3.0)
    assert weights.shape == (2, 8)
    assert torch.allclose(weights.mean(dim=1), torch.ones(2))
    assert weights[0, 0] / weights[0, 5] == pytest.approx(4.0)
    assert torch.equal(weights[1], torch.ones(8))
    assert torch.equal(part_token_weights(parts, 0.0), torch.ones(2, 8))
    with pytest.raises(InputError, match="part loss weight"):
        part_token_weights(parts, -1.0)


def test_token_weighted_loss_weighs_each_tokens_error_and_checks_the_shape():
    target = torch.zeros(2, 4, 3)
    pred = torch.zeros(2, 4, 3)
    pred[:, 0] = 1.0  # error only at token 0
    parts = torch.tensor([[True, False, False, False], [False, True, False, False]])
    weights = part_token_weights(parts, 4.0)  # 5 / 2 on the part token, 1 / 2 on the others
    plain = RectifiedFlowLoss()(pred, target).item()
    loss, per_sample = RectifiedFlow().loss(pred, target, weights)
    assert plain == pytest.approx(1 / 4)
    assert per_sample[0].item() == pytest.approx(2.5 / 4)  # the error sits on sample 0's part token
    assert per_sample[1].item() == pytest.approx(0.5 / 4)  # ... and off sample 1's
    assert loss.item() == pytest.approx(per_sample.mean().item())
    with pytest.raises(InputError, match=r"token weights \(2, 3\)"):
        RectifiedFlowLoss()(pred, target, token_weights=weights[:, :3])
