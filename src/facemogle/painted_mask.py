"""Masks painted in a browser: the app's editor canvas (RGBA) -> official class ids, and back.

A browser brush antialiases its edges, so a painted canvas holds, besides the 19 class colours,
blends along every stroke. :func:`ids_from_canvas` snaps every pixel to its nearest palette colour
(:func:`facemogle.masks.snap_to_palette`); a pixel farther than :data:`SNAP_DISTANCE` (the bound
``facemogle.masks`` uses for colour maps) from every class colour is a blend, and a canvas where
more than :data:`MAX_OFF_PALETTE_SHARE` of the pixels are such blends is not a mask (a photo, a
drawing in other colours) and is refused with :class:`~facemogle.errors.MaskError`.
Transparent pixels (alpha < 128: erased, or never painted on a transparent layer) are background.

The canvas the app starts from: :func:`canvas_from_ids` puts a mask on the editor's one layer
over an all-background backdrop, so the editor's eraser paints background.
"""

from __future__ import annotations

import numpy as np

from facemogle.errors import MaskError
from facemogle.labels import NUM_CLASSES, PALETTE, class_id
from facemogle.masks import DEFAULT_MAX_COLOR_DISTANCE, render_mask, snap_to_palette

#: Per-channel distance within which a painted colour is a class colour.
SNAP_DISTANCE = DEFAULT_MAX_COLOR_DISTANCE
#: Largest share of blended (off-palette) pixels a canvas may hold.
MAX_OFF_PALETTE_SHARE = 0.25
#: Smallest and largest canvas side accepted (pixels).
MIN_CANVAS_SIDE, MAX_CANVAS_SIDE = 32, 4096


def ids_from_canvas(canvas: np.ndarray, *, name: str = "the painted mask") -> np.ndarray:
    """(H, W) official ids of an editor canvas: (H, W, 4) RGBA or (H, W, 3) RGB uint8."""
    canvas = np.asarray(canvas)
    if canvas.ndim != 3 or canvas.shape[2] not in (3, 4):
        raise MaskError(f"{name} must be an RGB or RGBA image, got an array of shape {canvas.shape}")
    height, width = canvas.shape[:2]
    if not (MIN_CANVAS_SIDE <= height <= MAX_CANVAS_SIDE and MIN_CANVAS_SIDE <= width <= MAX_CANVAS_SIDE):
        raise MaskError(f"{name} is {width}x{height} pixels; each side must be in "
                        f"{MIN_CANVAS_SIDE}..{MAX_CANVAS_SIDE}")
    if height != width:
        raise MaskError(f"{name} is {width}x{height} pixels; the canvas must be square")
    if canvas.dtype != np.uint8:
        raise MaskError(f"{name} must hold 8-bit colours, got {canvas.dtype}")
    ids, distance = snap_to_palette(canvas[..., :3])
    if canvas.shape[2] == 4:
        clear = canvas[..., 3] < 128
        ids[clear] = class_id("background")
        distance[clear] = 0
    off = float((distance > SNAP_DISTANCE).mean())
    if off > MAX_OFF_PALETTE_SHARE:
        raise MaskError(f"{name}: {100 * off:.0f}% of its pixels are not class colours (at most "
                        f"{100 * MAX_OFF_PALETTE_SHARE:.0f}% may be brush edges); paint with the palette's "
                        "colours or start from a mask")
    return ids


def canvas_from_ids(ids: np.ndarray) -> dict:
    """The editor's value for a mask: an all-background backdrop, the mask's colour render as the
    one layer (RGBA, opaque), and their composite."""
    render = render_mask(ids)  # (H, W, 3)
    layer = np.concatenate([render, np.full(render.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    backdrop = np.zeros_like(layer)
    backdrop[..., :3] = PALETTE[class_id("background")]
    backdrop[..., 3] = 255
    return {"background": backdrop, "layers": [layer], "composite": layer.copy()}


def palette_hex() -> list[str]:
    """The 19 class colours as ``#rrggbb``, in official id order (the editor's brush colours)."""
    return ["#%02x%02x%02x" % tuple(PALETTE[i]) for i in range(NUM_CLASSES)]
