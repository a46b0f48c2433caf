"""Pixel <-> packed-token conversion, checked against the reference implementation's tensors."""

import pytest
import torch
from safetensors.torch import load_file

from facemogle.latents import (
    decode_tokens,
    encode_condition_images,
    encode_images,
    latent_image_ids,
    pack_latents,
    unpack_latents,
)


@pytest.fixture(scope="module")
def golden_vae(golden_dir):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(golden_dir / "tiny-flux" / "vae").eval()


@pytest.fixture(scope="module")
def golden_b(golden_dir):
    return load_file(golden_dir / "golden_B_train_forward.safetensors")


def test_pack_unpack_round_trip_and_layout():
    latents = torch.randn(2, 16, 6, 8)
    tokens = pack_latents(latents)
    assert tokens.shape == (2, 3 * 4, 64)
    # token 0 holds the top-left 2x2 patch, channel-major: (c0: p00 p01 p10 p11, c1: ...)
    assert torch.equal(tokens[0, 0, :4], latents[0, 0, :2, :2].reshape(-1))
    assert torch.equal(tokens[0, 1, :4], latents[0, 0, :2, 2:4].reshape(-1))
    assert torch.equal(unpack_latents(tokens, 6, 8), latents)


def test_latent_image_ids_are_row_col_grid(golden_b):
    ids = latent_image_ids(8, 8)
    assert torch.equal(ids, golden_b["img_ids"])
    assert ids[5].tolist() == [0.0, 1.0, 1.0]


def test_encode_images_matches_reference(golden_vae, golden_b):
    tokens = encode_images(golden_vae, golden_b["images"])
    torch.testing.assert_close(tokens, golden_b["x_0"], atol=1e-5, rtol=1e-5)


def test_encode_condition_images_matches_reference_and_ignores_chunking(golden_vae, golden_b):
    cond = golden_b["condition_images_u8"]  # (2, 20, 3, 64, 64) uint8
    tokens = encode_condition_images(golden_vae, cond, chunk_size=7)
    assert tokens.shape == (2, 20, 16, 64)
    torch.testing.assert_close(tokens, golden_b["condition_latents_vae"], atol=1e-5, rtol=1e-5)
    again = encode_condition_images(golden_vae, cond, chunk_size=40)
    torch.testing.assert_close(again, tokens, atol=1e-6, rtol=0)


def test_decode_tokens_matches_reference(golden_vae, golden_dir):
    golden_c = load_file(golden_dir / "golden_C_generate_64_mogle_t_div1000.safetensors")
    decoded = decode_tokens(golden_vae, golden_c["latents_final"], 64, 64)
    torch.testing.assert_close(decoded, golden_c["vae_decoded_raw"], atol=1e-4, rtol=1e-4)
