"""The mask -> condition tokens path, written once (METHOD.md section 2).

Generation, training without a cache and the training cache all turn masks into MoGLE's input
through :func:`encode_mask_latents`::

    ids (M, H, W) --condition_images--> (M, E, 3, H, W) uint8     E = 1 global colour map + 19 class maps
                  --VAE posterior mean, normalised, packed--> (M, E, N, D) tokens

A class that is absent from a mask has an all-black map, and every all-black map has the same
latents: the *blank* latents. They are encoded once per call (or given, e.g. from a cache) and
used for every absent class and for local-mask dropout in training (a dropped local mask is a
zeroed map, METHOD.md section 5), so only the global map and the classes present reach the VAE:
about half of the 20 images of a typical face. :class:`MaskLatents` keeps this sparse form (what
the training cache stores); :meth:`MaskLatents.dense` gives the (M, E, N, D) tokens MoGLE reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from facemogle.labels import NUM_CLASSES
from facemogle.latents import encode_images
from facemogle.masks import condition_images


@dataclass
class MaskLatents:
    """Encoded masks in sparse form.

    ``global_tokens`` (M, N, D): the colour maps' tokens. ``local_present`` (M, C) bool: which
    classes each mask holds. ``local_tokens`` (K, N, D): the present classes' maps, in (mask,
    class) order, K = ``local_present.sum()``. ``blank_tokens`` (N, D): an all-black map's tokens.
    """

    global_tokens: torch.Tensor
    local_present: torch.Tensor
    local_tokens: torch.Tensor
    blank_tokens: torch.Tensor

    def dense(self, dropped: torch.Tensor | None = None) -> torch.Tensor:
        """MoGLE's input (M, E, N, D): the global map, then one map per class; absent classes and
        ``dropped`` (M, C) bool local masks get the blank tokens."""
        count, num_local = self.local_present.shape
        local = self.blank_tokens.expand(count, num_local, *self.blank_tokens.shape).clone()  # (M, C, N, D)
        local[self.local_present] = self.local_tokens.to(local.dtype)
        if dropped is not None:
            local[dropped.to(torch.bool)] = self.blank_tokens
        return torch.cat([self.global_tokens.to(local.dtype)[:, None], local], dim=1)

    def covered_tokens(self, classes, tolerance: float = 1e-3) -> torch.Tensor:
        """(M, N) bool: the tokens any of ``classes`` (class ids) covers in each mask, read off the
        encoded maps: a class map's token differs from the blank map's where the class has pixels
        (by more than ``tolerance`` x the largest difference; the patch codec is local, so these
        are exactly the 8 x 8 px tokens the class touches). Dropout plays no part: the mask's own
        classes, what a loss weight on them needs even for a sample trained without its mask."""
        count, num_local = self.local_present.shape
        hits = torch.zeros(count, self.blank_tokens.shape[0], dtype=torch.int32)
        wanted = torch.zeros(num_local, dtype=torch.bool)
        wanted[list(classes)] = True
        rows = self.local_present & wanted  # (M, C)
        if not rows.any():
            return hits.bool()
        picked = rows[self.local_present]  # (K,): which stored maps are wanted
        difference = (self.local_tokens[picked].float() - self.blank_tokens.float()).abs().amax(dim=-1)  # (K', N)
        hit = difference > tolerance * difference.max().clamp_min(1e-12)
        owner = torch.arange(count)[:, None].expand(count, num_local)[rows]  # (K',) mask of each picked map
        hits.index_add_(0, owner, hit.cpu().to(torch.int32))
        return hits > 0


def present_classes(ids: np.ndarray) -> torch.Tensor:
    """(M, C) bool: which of the C classes occur in each of the (M, H, W) id masks."""
    return torch.stack([torch.from_numpy(np.bincount(m.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES] > 0)
                        for m in ids])


@torch.no_grad()
def encode_in_chunks(vae, images: torch.Tensor, chunk_size: int, *, fixed_shape: bool = False) -> torch.Tensor:
    """:func:`facemogle.latents.encode_images` of (B, 3, H, W) images, ``chunk_size`` per VAE call.

    ``fixed_shape`` zero-pads the last chunk to ``chunk_size`` images, so every call has one batch
    shape (CPU kernels are then prepared once for a long run, e.g. a cache build). Each image's
    tokens do not depend on the others. Returns (B, N, D) on the VAE's device.
    """
    count = len(images)
    if fixed_shape and count % chunk_size:
        images = torch.cat([images, images.new_zeros(chunk_size - count % chunk_size, *images.shape[1:])])
    return encode_images(vae, images, chunk_size=chunk_size)[:count]


@torch.no_grad()
def encode_mask_latents(vae, ids: np.ndarray, *, blank_tokens: torch.Tensor | None = None, chunk_size: int = 40,
                        fixed_shape: bool = False, empty=None) -> MaskLatents:
    """Encode (M, H, W) official-id masks: the global maps and the present classes' maps go through
    the VAE together (``chunk_size`` images per call, see :func:`encode_in_chunks`); the blank map
    too, unless ``blank_tokens`` (N, D) are given.

    ``empty`` (M,) bool marks rows with *no mask* (text-only generation, and the empty-mask dropout
    of training): all 20 maps of such a row are the blank map, the background class's too (a mask
    that is all background has a white background map; no mask has none), as in the reference's
    text-only inference."""
    ids = np.asarray(ids)
    count = len(ids)
    conditions = condition_images(ids)  # (M, E, 3, H, W) uint8
    present = present_classes(ids)  # (M, C)
    empty = torch.zeros(count, dtype=torch.bool) if empty is None else torch.as_tensor(np.asarray(empty, dtype=bool))
    present[empty] = False
    images = [conditions[:, 0][~empty], conditions[:, 1:][present]]  # (M - empty, 3, H, W), (K, 3, H, W)
    if blank_tokens is None:
        images.append(torch.zeros_like(conditions[:1, 0]))  # (1, 3, H, W): the blank map
    images = torch.cat(images)
    if len(images):
        tokens = encode_in_chunks(vae, images, chunk_size, fixed_shape=fixed_shape)  # (M - empty + K [+ 1], N, D)
    else:  # only empty masks, blank given: nothing for the VAE
        tokens = blank_tokens.new_zeros((0, *blank_tokens.shape))
    if blank_tokens is None:
        blank_tokens = tokens[-1]
    blank_tokens = blank_tokens.to(tokens)
    given = count - int(empty.sum())
    global_tokens = blank_tokens.expand(count, *blank_tokens.shape).clone()  # no global map for an empty mask
    global_tokens[~empty.to(global_tokens.device)] = tokens[:given]
    return MaskLatents(global_tokens=global_tokens, local_present=present,
                       local_tokens=tokens[given : given + int(present.sum())], blank_tokens=blank_tokens)


@torch.no_grad()
def encode_blank(vae, height: int, width: int, chunk_size: int = 1, *, fixed_shape: bool = False) -> torch.Tensor:
    """Tokens (N, D) of an all-black condition map (an absent class, or a dropped local mask)."""
    black = torch.zeros(1, 3, height, width, dtype=torch.uint8)
    return encode_in_chunks(vae, black, chunk_size, fixed_shape=fixed_shape)[0]
