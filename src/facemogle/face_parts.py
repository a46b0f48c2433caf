"""The parts that make a face, and whether a label map (a mask or a parse) shows each of them.

One definition for the two places that ask: the text-only evaluation (does a generated face have
both eyes? :mod:`facemogle.eval.text_control`) and training (``data.complete_faces_only``: which
training masks show a whole face, :mod:`facemogle.data.balance`).
"""

from __future__ import annotations

import numpy as np

from facemogle.labels import class_id

#: Parts that make a face: each must cover at least :data:`MIN_PART_PIXELS` of the map (a part
#: named by several classes: together).
FACE_PARTS = (("face skin",), ("hair",), ("left eye",), ("right eye",), ("nose",), ("upper lip", "lower lip"))
#: Pixels (at 128 x 128) a part needs to count as present (about 0.03 % of the image).
MIN_PART_PIXELS = 5
#: Side the counts are taken at (label maps of another size are resized to it first).
PARTS_SIDE = 128


def parts_found(ids: np.ndarray, min_pixels: int = MIN_PART_PIXELS) -> dict[str, bool]:
    """Which of :data:`FACE_PARTS` an (H, W) id map holds: ``{"left eye": True, ...}``."""
    found = {}
    for names in FACE_PARTS:
        pixels = sum(int((ids == class_id(name)).sum()) for name in names)
        found[" / ".join(names)] = pixels >= min_pixels
    return found


def is_complete_face(ids: np.ndarray) -> bool:
    """Every face part present once the (H, W) id map is resized (nearest) to :data:`PARTS_SIDE`."""
    from facemogle.masks import resize_mask

    if ids.shape != (PARTS_SIDE, PARTS_SIDE):
        ids = resize_mask(ids, PARTS_SIDE)
    return all(parts_found(ids).values())
