"""The parts that make a face, and whether a label map (a mask or a parse) shows each of them.

One definition for the two places that ask: the text-only evaluation (does a generated face have
both eyes? :mod:`facemogle.eval.text_control`) and training (``data.complete_faces_only``: which
training masks show a whole face, :mod:`facemogle.data.balance`).

Training may let an accessory stand in for the part it covers (:data:`COVERED_BY`: eyeglasses over
the eyes, a hat over the hair): such a face is whole, its caption names what hides the part. The
evaluation of generated faces does not (``covered_parts_count=False``): it asks for the parts.
"""

from __future__ import annotations

import numpy as np

from facemogle.labels import class_id

#: Parts that make a face: each must cover at least :data:`MIN_PART_PIXELS` of the map (a part
#: named by several classes: together).
FACE_PARTS = (("face skin",), ("hair",), ("left eye",), ("right eye",), ("nose",), ("upper lip", "lower lip"))
#: part -> the accessory class that may cover it (``covered_parts_count=True``).
COVERED_BY = {"left eye": "eyeglasses", "right eye": "eyeglasses", "hair": "hat"}
#: Pixels (at 128 x 128) a part needs to count as present (about 0.03 % of the image).
MIN_PART_PIXELS = 5
#: Side the counts are taken at (label maps of another size are resized to it first).
PARTS_SIDE = 128


def parts_found(ids: np.ndarray, min_pixels: int = MIN_PART_PIXELS,
                covered_parts_count: bool = False) -> dict[str, bool]:
    """Which of :data:`FACE_PARTS` an (H, W) id map holds: ``{"left eye": True, ...}``; with
    ``covered_parts_count`` a part's :data:`COVERED_BY` accessory counts as the part."""
    found = {}
    for names in FACE_PARTS:
        counted = names + (tuple(COVERED_BY[n] for n in names if n in COVERED_BY) if covered_parts_count else ())
        pixels = sum(int((ids == class_id(name)).sum()) for name in counted)
        found[" / ".join(names)] = pixels >= min_pixels  # keyed by the part, whatever counted for it
    return found


def is_complete_face(ids: np.ndarray, covered_parts_count: bool = False) -> bool:
    """Every face part present once the (H, W) id map is resized (nearest) to :data:`PARTS_SIDE`
    (``covered_parts_count``: see :func:`parts_found`)."""
    from facemogle.masks import resize_mask

    if ids.shape != (PARTS_SIDE, PARTS_SIDE):
        ids = resize_mask(ids, PARTS_SIDE)
    return all(parts_found(ids, covered_parts_count=covered_parts_count).values())
