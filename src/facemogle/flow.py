"""Rectified flow: timestep sampling, noisy latents, velocity target, loss and per-t buckets
(METHOD.md section 5). The training maths lives here and nowhere else.

Model-agnostic: the functions take plain tensors of any shape ``(B, ...)``::

    t      = sample_timesteps(B)                 # (B,) sigmoid(randn), in (0, 1)
    t      = shift_timesteps(t, shift)           # optional: towards noise (shift > 1)
    x_t    = noisy_latents(x_0, noise, t)        # (1 - t) x_0 + t noise
    target = velocity_target(x_0, noise)         # noise - x_0
    loss   = RectifiedFlowLoss()(pred, target)   # mean squared error
    w      = part_token_weights(part_tokens, 4)  # optional (B, N): more weight on eyes, brows, lips

:class:`RectifiedFlow` bundles them as one small object (the way minRF does), which the sample
stream (t) and the trainer (x_t, target, loss, buckets) call::

    flow = RectifiedFlow()
    x_t, target = flow.training_pair(x_0, noise, t)
    loss, per_sample = flow.loss(model(x_t, t, ...), target)

t = 0 is the clean latent and t = 1 pure noise; the transformer sees ``1000 t`` and MoGLE sees
``t`` itself (facemogle.mogle).
"""

from __future__ import annotations

import torch
from torch import nn

from facemogle.errors import InputError


def sample_timesteps(
    batch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Logit-normal timesteps ``sigmoid(randn)``: (batch_size,) in (0, 1), mass around 0.5.

    ``generator`` (if given) must live on ``device``; the same seed gives the same timesteps.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    return torch.sigmoid(torch.randn(batch_size, generator=generator, device=device, dtype=dtype))


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """``shift t / (1 + (shift - 1) t)``: the resolution shift of SD3 / FLUX (diffusers' exponential
    ``time_shift`` with ``mu = ln shift``), moving t towards noise for ``shift > 1``.

    Monotone, keeps 0 and 1 in place, the identity at ``shift = 1``; any shape.
    """
    if not shift > 0:
        raise InputError(f"timestep shift must be > 0, got {shift}")
    if shift == 1:
        return t
    return shift * t / (1 + (shift - 1) * t)


def _broadcast_timestep(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) or (1,) -> (B, 1, ..., 1) with ``like.ndim`` dimensions."""
    t = torch.as_tensor(t, device=like.device).reshape(-1)
    if t.numel() not in (1, like.shape[0]):
        raise InputError(f"{t.numel()} timesteps for a batch of {like.shape[0]}")
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) x0 + t noise``.

    Args:
        x0: (B, ...) clean latents (e.g. packed tokens (B, N, D)).
        noise: same shape as ``x0``, standard normal.
        t: (B,) or (1,) in [0, 1], broadcast over the other dimensions.

    Returns:
        (B, ...) noisy latents, in ``x0``'s dtype.
    """
    if x0.shape != noise.shape:
        raise InputError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} differ in shape")
    t = _broadcast_timestep(t, x0).to(x0.dtype)  # (B, 1, ..., 1)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity the model predicts, ``d x_t / d t = noise - x0``: (B, ...)."""
    if x0.shape != noise.shape:
        raise InputError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} differ in shape")
    return noise - x0


class RectifiedFlowLoss(nn.Module):
    """Mean squared error between predicted and target velocity, computed in float32.

    ``forward(pred, target)`` -> scalar mean over all elements (the official loss).
    With ``return_per_sample=True`` also returns the (B,) per-sample means, e.g. to log the loss
    per timestep bucket; their mean equals the scalar loss.

    ``channel_weights`` (D,), mean 1 (:func:`token_channel_weights`): each token channel's squared
    error is weighted before the mean; ``None``: every channel alike (the official loss).
    """

    def __init__(self, channel_weights: torch.Tensor | None = None):
        super().__init__()
        self.channel_weights = None if channel_weights is None else channel_weights.float()

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, return_per_sample: bool = False,
        token_weights: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``token_weights`` (B, N) (:func:`part_token_weights`) weigh each token's squared error
        of (B, N, D) tokens; None: every token alike."""
        if pred.shape != target.shape:
            raise InputError(
                f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
            )
        squared_error = (pred.float() - target.float()).square()  # (B, ..., D)
        if token_weights is not None:
            if tuple(token_weights.shape) != tuple(squared_error.shape[:2]) or squared_error.ndim != 3:
                raise InputError(f"token weights {tuple(token_weights.shape)} for tokens {tuple(squared_error.shape)}: "
                                 "expected (B, N) for (B, N, D)")
            squared_error = squared_error * token_weights.float().to(squared_error.device)[..., None]
        if self.channel_weights is not None:
            if squared_error.shape[-1] != self.channel_weights.numel():
                raise InputError(f"{self.channel_weights.numel()} loss channel weights for tokens of width "
                                 f"{squared_error.shape[-1]}")
            squared_error = squared_error * self.channel_weights.to(squared_error.device)
        loss = squared_error.mean()
        if return_per_sample:
            return loss, squared_error.flatten(start_dim=1).mean(dim=1)  # (), (B,)
        return loss


def token_channel_weights(channel_gain: torch.Tensor, power: float, patch: int = 2) -> torch.Tensor:
    """(C * patch^2,) loss weights of packed tokens from the autoencoder's (C,) per-latent-channel
    decoder gain (how far in pixels a unit step of the channel moves the image; the PCA patch
    codec's ``component_std``): ``gain ** power``, normalised to mean 1, repeated over the
    ``patch x patch`` positions of each channel (:func:`facemogle.latents.pack_latents` order).

    ``power`` 0 weighs every channel alike (the plain MSE); 2 is the pixel-space MSE of a linear,
    orthogonal decoder; values between move weight to the channels that carry most of the image
    (a whitened codec's first channel is the patch's brightness, its colour).
    """
    gain = channel_gain.detach().float().clamp_min(1e-12)
    weights = gain**power
    weights = weights / weights.mean()
    return weights.repeat_interleave(patch * patch)  # (C * patch^2,)


def part_token_weights(part_tokens: torch.Tensor, weight: float) -> torch.Tensor:
    """(B, N) loss weights that put ``1 + weight`` on the tokens of the small face parts
    (``part_tokens`` (B, N) bool, :meth:`facemogle.condition_tokens.MaskLatents.covered_tokens`)
    and 1 on the others, normalised to mean 1 per sample (the loss keeps its scale).

    An eye is 2-4 of a 128 px face's 256 tokens: with a uniform loss a face drawn without it costs
    next to nothing, and text-only faces do miss an eye. ``weight`` 0 gives every token 1.
    """
    if weight < 0:
        raise InputError(f"part loss weight must be >= 0, got {weight}")
    weights = 1 + weight * part_tokens.float()  # (B, N)
    return weights / weights.mean(dim=1, keepdim=True)


class RectifiedFlow:
    """The rectified-flow training objective as one object: what to draw, what to predict, how to
    score it, and how to bucket the per-sample losses by t for the training log."""

    def __init__(self, channel_weights: torch.Tensor | None = None, timestep_shift: float = 1.0):
        self.criterion = RectifiedFlowLoss(channel_weights)
        shift_timesteps(torch.zeros(()), timestep_shift)  # refuses a shift <= 0 now, not at the first step
        self.timestep_shift = float(timestep_shift)

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None,
                         device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(B,) logit-normal t in (0, 1): :func:`sample_timesteps` (the stream's draw, before the shift)."""
        return sample_timesteps(batch_size, generator=generator, device=device, dtype=dtype)

    def shift(self, t: torch.Tensor) -> torch.Tensor:
        """The t the model is trained at for a drawn ``t``: :func:`shift_timesteps` by ``timestep_shift``."""
        return shift_timesteps(t, self.timestep_shift)

    def training_pair(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_t, target)``: the model's input at t and the velocity it must predict, (B, ...) each."""
        return noisy_latents(x0, noise, t), velocity_target(x0, noise)

    def loss(self, pred: torch.Tensor, target: torch.Tensor,
             token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, per_sample)``: the scalar MSE (float32) and the (B,) per-sample means;
        ``token_weights`` (B, N): see :class:`RectifiedFlowLoss`."""
        return self.criterion(pred, target, return_per_sample=True, token_weights=token_weights)

    @staticmethod
    def bucket_edges(num_buckets: int) -> torch.Tensor:
        """(K + 1,) edges of ``num_buckets`` equal t ranges over [0, 1]."""
        return torch.linspace(0, 1, num_buckets + 1)

    @staticmethod
    def bucket(t: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """(B,) index in 0..K-1 of the t range of each t (edges from :meth:`bucket_edges`)."""
        return torch.bucketize(t, edges[1:-1], right=True)
