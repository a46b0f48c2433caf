"""Mirrored faces: the classes that trade places when a face is flipped horizontally.

Used by the test-time flip of ``FaceParser.parse`` (``facemogle.parser.model``) and by the flip and
copy-paste augmentations of the training recipe (``facemogle.parser.augment``).
"""

from __future__ import annotations

import torch

from facemogle.labels import NUM_CLASSES, class_id

#: Left/right class pairs that trade places when a face is mirrored horizontally.
MIRRORED_CLASS_PAIRS: tuple[tuple[str, str], ...] = (
    ("left eye", "right eye"),
    ("left eyebrow", "right eyebrow"),
    ("left ear", "right ear"),
)


def mirrored_class_ids() -> torch.Tensor:
    """``(NUM_CLASSES,)`` int64: ``ids[k]`` is class ``k``'s id in the mirrored face (an involution)."""
    ids = torch.arange(NUM_CLASSES)
    for left, right in MIRRORED_CLASS_PAIRS:
        ids[class_id(left)], ids[class_id(right)] = class_id(right), class_id(left)
    return ids
