"""Which training images an epoch draws: plain shuffling, or repeat-factor sampling of rare classes.

masks are (N, S, S) uint8 official ids (the training set in memory).
"""

from __future__ import annotations

import torch

from facemogle.labels import NUM_CLASSES


def repeat_factors(masks: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N,) draw weight per training image: max over the classes it holds of max(1, sqrt(threshold / f_c)).

    ``f_c`` is the fraction of images holding class c (LVIS-style repeat-factor sampling), so images
    with rare classes (necklace, hat, eyeglasses) are drawn more often. masks: (N, S, S) uint8 ids.
    """
    present = torch.stack([torch.bincount(m.reshape(-1).long(), minlength=NUM_CLASSES) > 0 for m in masks])  # (N, C)
    fraction = present.float().mean(0).clamp_min(1.0 / len(masks))  # (C,)
    per_class = (threshold / fraction).sqrt().clamp_min(1.0)  # (C,)
    return torch.where(present, per_class, torch.zeros(())).amax(1).clamp_min(1.0)  # (N,)


def epoch_order(num_images: int, weights: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """One epoch of training indices: a permutation, or ``num_images`` weighted draws with replacement."""
    if weights is None:
        return torch.randperm(num_images, generator=generator)
    return torch.multinomial(weights, num_images, replacement=True, generator=generator)
