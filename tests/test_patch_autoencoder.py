"""The PCA patch autoencoder (the bundled model's): exact PCA, whitened latents, the AutoencoderKL
interface the pipeline uses, saving and loading by class name."""

from __future__ import annotations

import json

import pytest
import torch

from facemogle.errors import CheckpointError
from facemogle.latents import decode_tokens, encode_images, vae_downsample_factor
from facemogle.patch_autoencoder import (PatchAutoencoder, fit_patch_autoencoder, load_autoencoder,
                                         reconstruction_psnr)


def smooth_images(count: int = 12, side: int = 32, seed: int = 0) -> torch.Tensor:
    """(count, 3, side, side) uint8 images with more structure than noise (low-pass random fields)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, side // 8, side // 8, generator=generator)
    fine = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    fine = fine + 0.05 * torch.rand(count, 3, side, side, generator=generator)
    return (fine.clamp(0, 1) * 255).round().to(torch.uint8)


def test_all_components_reconstruct_exactly():
    images = smooth_images()
    codec = fit_patch_autoencoder(images, latent_channels=48, downsample_factor=4)  # 3 * 4 * 4 = 48: full rank
    assert reconstruction_psnr(codec, images) > 90


def test_latents_are_whitened_and_ordered_by_variance():
    images = smooth_images()
    codec = fit_patch_autoencoder(images, latent_channels=16, downsample_factor=4)
    latents = codec.encode(images.float() / 127.5 - 1).latent_dist.mode()  # (B, 16, 8, 8)
    assert latents.shape == (12, 16, 8, 8)
    std = latents.permute(1, 0, 2, 3).flatten(1).std(dim=1)
    assert torch.allclose(std, torch.ones(16), atol=0.02)
    assert torch.all(codec.component_std[:-1] >= codec.component_std[1:])
    rows = codec.components @ codec.components.T
    assert torch.allclose(rows, torch.eye(16), atol=1e-5)  # orthonormal directions


def test_fewer_components_lose_detail_but_keep_most():
    images = smooth_images()
    full = reconstruction_psnr(fit_patch_autoencoder(images, latent_channels=48), images)
    few = reconstruction_psnr(fit_patch_autoencoder(images, latent_channels=8), images)
    assert 20 < few < full


def test_deterministic_posterior_and_decode_shapes():
    codec = fit_patch_autoencoder(smooth_images(), latent_channels=16, downsample_factor=4)
    x = smooth_images(2, seed=1).float() / 127.5 - 1
    posterior = codec.encode(x).latent_dist
    assert torch.equal(posterior.sample(), posterior.mode())
    assert codec.decode(posterior.mode()).sample.shape == x.shape
    (tuple_posterior,) = codec.encode(x, return_dict=False)
    assert torch.equal(tuple_posterior.mode(), posterior.mode())


def test_odd_sizes_are_refused():
    with pytest.raises(ValueError, match="multiples of 4"):
        PatchAutoencoder().encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="latent_channels"):
        PatchAutoencoder(latent_channels=49)


def test_the_latents_helpers_treat_it_like_a_vae():
    """latents.encode_images / decode_tokens (the pipeline's path) at factor 4: 32 px -> 4 x 4 tokens."""
    images = smooth_images(4)
    codec = fit_patch_autoencoder(images, latent_channels=16, downsample_factor=4)
    assert vae_downsample_factor(codec) == 4
    tokens = encode_images(codec, images)  # (4, 16, 64)
    assert tokens.shape == (4, 16, 64)
    decoded = decode_tokens(codec, tokens, 32, 32)
    direct = codec.decode(codec.encode(images.float() / 127.5 - 1).latent_dist.mode()).sample
    assert torch.allclose(decoded, direct, atol=1e-5)


def test_save_and_load_by_class_name(tmp_path):
    codec = fit_patch_autoencoder(smooth_images(), latent_channels=16)
    codec.save_pretrained(str(tmp_path / "vae"))
    assert json.loads((tmp_path / "vae" / "config.json").read_text())["_class_name"] == "PatchAutoencoder"
    loaded = load_autoencoder(tmp_path / "vae")
    assert isinstance(loaded, PatchAutoencoder)
    for name in ("patch_mean", "components", "component_std"):
        assert torch.equal(getattr(loaded, name), getattr(codec, name))
    assert not any(p.requires_grad for p in loaded.parameters())


def test_load_names_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_autoencoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "Mystery"}))
    with pytest.raises(CheckpointError, match="unknown autoencoder class 'Mystery'"):
        load_autoencoder(tmp_path)


def test_smoothing_keeps_the_latents_and_fills_in_the_discarded_detail():
    """Decoder smoothing moves only the directions the latents do not fix: the decoded image
    encodes to the same latents, and on smooth images the reconstruction gets closer."""
    images = smooth_images(8, side=32)
    plain = fit_patch_autoencoder(images, latent_channels=8)
    smooth = fit_patch_autoencoder(images, latent_channels=8, smoothing_steps=5)
    z = plain.encode(images.float() / 127.5 - 1).latent_dist.mode()
    decoded = smooth.decode(z).sample
    assert not torch.allclose(decoded, plain.decode(z).sample, atol=1e-3)
    torch.testing.assert_close(smooth.encode(decoded).latent_dist.mode(), z, atol=1e-4, rtol=0)
    assert reconstruction_psnr(smooth, images) > reconstruction_psnr(plain, images)
