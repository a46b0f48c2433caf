"""The 19 CelebAMask-HQ face classes: ids, names, colour palette and label orders.

This is the one place that defines the label set. Everything else derives its counts from here:
``NUM_CLASSES`` classes (background included) and ``NUM_CONDITIONS`` condition images per mask
(one global colour map plus one binary map per class, METHOD.md section 2).

Two label orders exist in the wild:

* the **official** CelebAMask-HQ order (used by the dataset's palette PNGs and by Face-MoGLE);
* the **face-parsing.PyTorch / BiSeNet** order (used by the popular BiSeNet parser's outputs).

``BISENET_TO_OFFICIAL[b]`` is the official id of BiSeNet id ``b``; ``OFFICIAL_TO_BISENET`` is the
inverse. Both are plain tuples so this module needs neither numpy nor torch.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Class names in the official CelebAMask-HQ order (index = class id).
CLASS_NAMES: tuple[str, ...] = (
    "background",
    "face skin",
    "nose",
    "eyeglasses",
    "left eye",
    "right eye",
    "left eyebrow",
    "right eyebrow",
    "left ear",
    "right ear",
    "inner mouth",
    "upper lip",
    "lower lip",
    "hair",
    "hat",
    "earring",
    "necklace",
    "neck",
    "cloth",
)

NUM_CLASSES: int = len(CLASS_NAMES)
#: Condition images per mask: the global colour map + one binary map per class.
NUM_CONDITIONS: int = NUM_CLASSES + 1
BACKGROUND: int = 0

#: CelebAMask-HQ colour palette (RGB), index = official class id.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (204, 0, 0),
    (76, 153, 0),
    (204, 204, 0),
    (51, 51, 255),
    (204, 0, 204),
    (0, 255, 255),
    (255, 204, 204),
    (102, 51, 0),
    (255, 0, 0),
    (102, 204, 0),
    (255, 255, 0),
    (0, 0, 153),
    (0, 0, 204),
    (255, 51, 153),
    (0, 204, 204),
    (0, 51, 0),
    (255, 153, 51),
    (0, 204, 0),
)

#: Class names in the face-parsing.PyTorch / BiSeNet order (index = BiSeNet id).
BISENET_CLASS_NAMES: tuple[str, ...] = (
    "background",
    "skin",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "eye_g",
    "l_ear",
    "r_ear",
    "ear_r",
    "nose",
    "mouth",
    "u_lip",
    "l_lip",
    "neck",
    "neck_l",
    "cloth",
    "hair",
    "hat",
)

# BiSeNet name -> official name.
_BISENET_NAME_TO_OFFICIAL = {
    "background": "background",
    "skin": "face skin",
    "l_brow": "left eyebrow",
    "r_brow": "right eyebrow",
    "l_eye": "left eye",
    "r_eye": "right eye",
    "eye_g": "eyeglasses",
    "l_ear": "left ear",
    "r_ear": "right ear",
    "ear_r": "earring",
    "nose": "nose",
    "mouth": "inner mouth",
    "u_lip": "upper lip",
    "l_lip": "lower lip",
    "neck": "neck",
    "neck_l": "necklace",
    "cloth": "cloth",
    "hair": "hair",
    "hat": "hat",
}

#: ``BISENET_TO_OFFICIAL[bisenet_id] == official_id``.
BISENET_TO_OFFICIAL: tuple[int, ...] = tuple(
    CLASS_NAMES.index(_BISENET_NAME_TO_OFFICIAL[name]) for name in BISENET_CLASS_NAMES
)
#: ``OFFICIAL_TO_BISENET[official_id] == bisenet_id``.
OFFICIAL_TO_BISENET: tuple[int, ...] = tuple(
    BISENET_TO_OFFICIAL.index(official) for official in range(NUM_CLASSES)
)

#: Label orders a mask may arrive in.
LABEL_ORDERS: tuple[str, ...] = ("official", "bisenet")


def class_id(name: str) -> int:
    """Official id of a class name (``"hair"`` -> 13). Raises ``KeyError`` for unknown names."""
    try:
        return CLASS_NAMES.index(name)
    except ValueError:
        raise KeyError(f"unknown class name {name!r}; known: {', '.join(CLASS_NAMES)}") from None


def class_ids(names: str | Sequence[str] | None) -> list[int]:
    """Sorted official ids of class names (a list, or one comma-separated string; None: none).

    Raises ``InputError`` naming every unknown name and listing the known ones.
    """
    from facemogle.errors import InputError

    if names is None:
        return []
    given = [n.strip() for n in names.split(",")] if isinstance(names, str) else [str(n).strip() for n in names]
    unknown = [n for n in given if n and n not in CLASS_NAMES]
    if unknown:
        raise InputError(f"unknown class name(s) {', '.join(repr(n) for n in unknown)}; "
                         f"known: {', '.join(CLASS_NAMES)}")
    return sorted({CLASS_NAMES.index(n) for n in given if n})
