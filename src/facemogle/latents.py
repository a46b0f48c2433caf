"""Moving between pixels and the transformer's packed latent tokens.

FLUX-style models see an image as a sequence of tokens: the VAE maps a (3, H, W) image in [-1, 1]
to (C, H/f, W/f) latents (C = 16, f = 8 for FLUX), which are normalised with the VAE's shift and
scaling factors and packed into 2x2 patches of C*4 values each:

    image (B, 3, H, W) --VAE--> (B, C, h, w) --normalise--> --pack--> tokens (B, h/2 * w/2, 4C)

Every encoding here uses the posterior **mean** (``latent_dist.mode()``), never a sample, so the
same image always gives the same tokens (METHOD.md section 2). The pipeline and the trainer both
call these functions, so generation and training see identical condition tokens.
"""

from __future__ import annotations

import torch

PATCH = 2  # tokens are 2x2 patches of latent pixels


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents -> (B, h/2 * w/2, 4C) tokens (row-major patches, channel-major inside)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH)  # (B, C, h/2, 2, w/2, 2)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, h/2, w/2, C, 2, 2)
    return x.reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpack_latents(tokens: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """(B, h/2 * w/2, 4C) tokens -> (B, C, h, w) latents; the inverse of :func:`pack_latents`."""
    b, _, d = tokens.shape
    c = d // (PATCH * PATCH)
    x = tokens.view(b, latent_height // PATCH, latent_width // PATCH, c, PATCH, PATCH)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, h/2, 2, w/2, 2)
    return x.reshape(b, c, latent_height, latent_width)


def latent_image_ids(latent_height: int, latent_width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Rotary position ids of the packed tokens: (h/2 * w/2, 3) rows of (0, row, col)."""
    rows, cols = latent_height // PATCH, latent_width // PATCH
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3).to(device=device, dtype=dtype)


def vae_downsample_factor(vae) -> int:
    """Spatial down-sampling of an autoencoder: its config's ``downsample_factor`` when it states
    one (:class:`facemogle.patch_autoencoder.PatchAutoencoder`), else diffusers' ``AutoencoderKL``
    rule, 2 ** (blocks - 1) (8 for FLUX's VAE)."""
    factor = getattr(vae.config, "downsample_factor", None)
    return int(factor) if factor is not None else 2 ** (len(vae.config.block_out_channels) - 1)


def normalise_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Raw posterior latents -> the normalised space the transformer works in."""
    shift = vae.config.shift_factor or 0.0
    return (latents - shift) * vae.config.scaling_factor


def denormalise_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalise_latents`: what the VAE decoder takes."""
    shift = vae.config.shift_factor or 0.0
    return latents / vae.config.scaling_factor + shift


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where ``module`` computes: the execution device of accelerate's offloading hooks if it has
    them (its weights may then sit on ``meta`` or the CPU), else the device of its weights."""
    for part in module.modules():
        device = getattr(getattr(part, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device(device)
    return next(module.parameters()).device


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, *, chunk_size: int = 32) -> torch.Tensor:
    """Encode images in [0, 1] to normalised, packed latent tokens, deterministically.

    Args:
        vae: a diffusers ``AutoencoderKL``.
        images: (B, 3, H, W) float in [0, 1] (or uint8 in [0, 255]).
        chunk_size: images per VAE call (bounds peak memory; the result does not depend on it).

    Returns:
        (B, H/f/2 * W/f/2, 4C) tokens in the VAE's dtype.
    """
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    pixels = (images * 2.0 - 1.0).to(device=execution_device(vae), dtype=vae.dtype)  # (B, 3, H, W) in [-1, 1]
    means = [vae.encode(part).latent_dist.mode() for part in pixels.split(chunk_size)]
    latents = normalise_latents(vae, torch.cat(means))  # (B, C, h, w)
    return pack_latents(latents)


@torch.no_grad()
def encode_condition_images(vae, condition_images: torch.Tensor, *, chunk_size: int = 32) -> torch.Tensor:
    """Encode a batch of condition-image stacks to MoGLE's input tokens, every image through the VAE.

    The dense reference form (the reference implementation's way, which Golden B checks). The
    project turns masks into tokens with :func:`facemogle.condition_tokens.encode_mask_latents`,
    which gives the same tokens while encoding absent classes' black maps only once; its tests
    compare against this function.

    Args:
        condition_images: (B, E, 3, H, W) uint8 (or float in [0, 1]); E = global + local masks.

    Returns:
        (B, E, N, 4C) tokens, N = (H/f/2) * (W/f/2). All B*E images go through the VAE in
        ``chunk_size`` batches.
    """
    b, e = condition_images.shape[:2]
    tokens = encode_images(vae, condition_images.flatten(0, 1), chunk_size=chunk_size)  # (B*E, N, 4C)
    return tokens.view(b, e, *tokens.shape[1:])


@torch.no_grad()
def decode_tokens(vae, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Packed tokens (B, N, 4C) of an H x W image -> decoded images (B, 3, H, W) in [-1, 1] (unclamped).

    The image decoder of the project: the pipeline and every tool that shows latents call it. The
    tokens stay on their device (offloading hooks move the VAE there); they take the VAE's dtype."""
    f = vae_downsample_factor(vae)
    latents = denormalise_latents(vae, unpack_latents(tokens, height // f, width // f))
    return vae.decode(latents.to(vae.dtype), return_dict=False)[0]
