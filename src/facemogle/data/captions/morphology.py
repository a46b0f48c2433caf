"""Binary morphology on ``(H, W)`` bool masks (numpy only): erosion, dilation, opening, specks.

The captioner erodes regions before reading their colours (no blending at the borders) and removes
specks before measuring accessories: an opening for solid ones, :func:`drop_isolated` for thin ones.
"""

from __future__ import annotations

import numpy as np


def erode(region: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion of an ``(H, W)`` bool map by a ``(2r+1)`` square (outside = False)."""
    height, width = region.shape
    for _ in range(radius):
        padded = np.pad(region, 1, constant_values=False)
        eroded = padded[1:-1, 1:-1].copy()
        for dy in range(3):
            for dx in range(3):
                eroded &= padded[dy : dy + height, dx : dx + width]
        region = eroded
    return region


def dilate(region: np.ndarray, radius: int) -> np.ndarray:
    return ~erode(~region, radius)


def opening(region: np.ndarray, radius: int) -> np.ndarray:
    """Morphological opening: removes parts of ``region`` thinner than ``2 * radius + 1`` pixels."""
    return dilate(erode(region, radius), radius) & region


def drop_isolated(region: np.ndarray) -> np.ndarray:
    """``region`` without its pixels that have no 8-neighbour in ``region``."""
    height, width = region.shape
    padded = np.pad(region, 1, constant_values=False).astype(np.uint8)
    neighbours = sum(
        padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)
    ) - region  # (H, W)
    return region & (neighbours > 0)
