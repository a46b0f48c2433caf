"""Training augmentation of the face parser, batch-level in torch, seeded by a ``torch.Generator``.

* ``augment``: horizontal flip with the left/right classes swapped (``FLIP_LUT``), small
  rotation/scale/shift, brightness/contrast/saturation jitter, rare greyscale.
* ``copy_paste``: Simple Copy-Paste of rare objects (necklace, hat, ...) from other training photos,
  at their own place (CelebA-HQ faces are aligned), before ``augment``.

Photos are (B, S, S, 3) uint8 and masks (B, S, S) uint8 official ids, as the recipe keeps them in memory.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from facemogle.labels import NUM_CLASSES
from facemogle.parser.mirror import mirrored_class_ids

if TYPE_CHECKING:
    from facemogle.parser.training import TrainingSettings


def flip_lut() -> torch.Tensor:
    """``lut[id]`` = the id after a horizontal flip (left/right eye, eyebrow and ear swapped)."""
    return mirrored_class_ids()


FLIP_LUT = flip_lut()


def augment(
    photos: torch.Tensor, masks: torch.Tensor, settings: TrainingSettings, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, S, 3) uint8 + (B, S, S) uint8 -> (B, 3, S, S) float in [-1, 1] + (B, S, S) int64.

    The strengths are ``settings.max_rotation`` (degrees), ``max_scale``, ``max_shift`` (fraction of
    the half-width), ``color_jitter`` and ``greyscale_prob``; the flip happens with probability 1/2.
    """
    batch = photos.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator)

    images = photos.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, S, S)
    labels = masks.long()  # (B, S, S)

    flip = torch.rand(batch, generator=generator) < 0.5
    images[flip] = images[flip].flip(-1)
    labels[flip] = FLIP_LUT[labels[flip].flip(-1)]

    # Rotation / scale / shift; theta maps output coordinates to input coordinates.
    angle = torch.deg2rad(uniform(-settings.max_rotation, settings.max_rotation))
    zoom = torch.exp(uniform(-math.log(settings.max_scale), math.log(settings.max_scale)))
    shift = torch.stack([uniform(-settings.max_shift, settings.max_shift),
                         uniform(-settings.max_shift, settings.max_shift)], 1)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (B, S, S, 2)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    labels = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="reflection", align_corners=False)
    labels = labels[:, 0].round().long()

    # Colour: brightness, contrast, saturation, occasional greyscale.
    grey = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)  # (B, 1, S, S)
    saturation = uniform(1 - settings.color_jitter, 1 + settings.color_jitter).view(batch, 1, 1, 1)
    saturation[torch.rand(batch, generator=generator) < settings.greyscale_prob] = 0.0
    images = grey + saturation * (images - grey)
    contrast = uniform(1 - settings.color_jitter, 1 + settings.color_jitter).view(batch, 1, 1, 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = mean + contrast * (images - mean)
    images = images * uniform(1 - settings.color_jitter, 1 + settings.color_jitter).view(batch, 1, 1, 1)
    images = images.clamp(0.0, 1.0) * 2.0 - 1.0
    return images, labels


def copy_paste_pool(masks: torch.Tensor, class_ids: list[int], min_pixels: int) -> dict[int, list[int]]:
    """class id -> indices of the training images in which that class covers at least ``min_pixels``
    pixels: the objects ``copy_paste`` may paste (classes with none are left out). masks: (N, S, S) uint8 ids."""
    counts = torch.stack([torch.bincount(m.reshape(-1).long(), minlength=NUM_CLASSES) for m in masks])  # (N, C)
    pool = {c: torch.nonzero(counts[:, c] >= min_pixels)[:, 0].tolist() for c in class_ids}
    return {c: images for c, images in pool.items() if images}


def copy_paste(
    photos: torch.Tensor,
    masks: torch.Tensor,
    source_photos: torch.Tensor,
    source_masks: torch.Tensor,
    pool: dict[int, list[int]],
    probability: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Simple Copy-Paste (Ghiasi et al., CVPR 2021) for rare classes: with ``probability``, each image
    gets one object pasted where it was in its own photo, mirrored half the time (left/right classes
    swapped then): a class drawn uniformly from ``pool``, then one of that class's images; the
    object's pixels take that photo's colours and the class.

    CelebA-HQ faces are aligned, so an object's own place (a necklace below the chin, glasses over the
    eyes, a hat above the forehead) is a plausible place on another face. Hard edges, no blending.
    photos (B, S, S, 3) uint8 and masks (B, S, S) uint8 are the batch; source_* the whole training set.
    Returns new tensors; the inputs are not modified.
    """
    photos, masks = photos.clone(), masks.clone()
    classes = sorted(pool)
    for i in range(len(photos)):
        if not classes or torch.rand((), generator=generator) >= probability:
            continue
        class_index = classes[int(torch.randint(len(classes), (), generator=generator))]
        images = pool[class_index]
        source = images[int(torch.randint(len(images), (), generator=generator))]
        region = source_masks[source] == class_index  # (S, S)
        pixels = source_photos[source]  # (S, S, 3)
        label = class_index
        if torch.rand((), generator=generator) < 0.5:  # mirrored: a left eye would become a right eye
            region, pixels, label = region.flip(-1), pixels.flip(-2), int(FLIP_LUT[class_index])
        photos[i][region] = pixels[region]
        masks[i][region] = label
    return photos, masks
