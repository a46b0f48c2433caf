"""The shipped example mask (``facemogle.masks.EXAMPLE_MASK``), drawn from simple shapes.

A plausible frontal face label map (512 x 512, official CelebAMask-HQ ids) built only from
ellipses and polygons, so the project ships a mask that is its own data. Shapes are painted back
to front; coordinates are pixels of the 512 x 512 canvas ("left"/"right" are the person's, as in
CelebAMask-HQ: the person's left eye is on the image's right). ``scripts/make_example_mask.py``
writes it to ``src/facemogle/assets/masks/example.png``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from facemogle.labels import class_id

SIZE = 512
CENTRE_X = SIZE // 2


def mirror(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The same polygon reflected about the vertical centre line (person's right <-> left)."""
    return [(SIZE - x, y) for x, y in points]


def mirror_box(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    left, top, right, bottom = box
    return (SIZE - right, top, SIZE - left, bottom)


def draw_example_mask(features: bool = True) -> np.ndarray:
    """Return the example mask as (SIZE, SIZE) uint8 official ids; ``features=False``: the blank face
    template the app starts from (hair, face skin, ears, neck, clothes; no eyes, brows, nose or mouth)."""
    canvas = Image.new("L", (SIZE, SIZE), class_id("background"))
    draw = ImageDraw.Draw(canvas)

    # Hair behind the head, falling to the shoulders.
    draw.ellipse((124, 48, 388, 380), fill=class_id("hair"))
    draw.rounded_rectangle((124, 214, 388, 364), radius=36, fill=class_id("hair"))
    # Neck, then clothes with a V-neckline over it.
    draw.polygon([(208, 320), (304, 320), (314, 480), (198, 480)], fill=class_id("neck"))
    draw.polygon(
        [(24, 512), (54, 452), (170, 414), (212, 424), (CENTRE_X, 472), (300, 424), (342, 414),
         (458, 452), (488, 512)],
        fill=class_id("cloth"),
    )
    # Ears (image left = person's right), then the face over them.
    right_ear = (134, 212, 166, 286)
    draw.ellipse(right_ear, fill=class_id("right ear"))
    draw.ellipse(mirror_box(right_ear), fill=class_id("left ear"))
    draw.ellipse((152, 96, 360, 392), fill=class_id("face skin"))
    # Fringe over the forehead: the upper half of an ellipse, swept to one side.
    draw.chord((136, 60, 376, 236), start=180, end=360, fill=class_id("hair"))
    draw.polygon([(150, 148), (236, 148), (168, 186)], fill=class_id("hair"))
    if not features:
        return np.asarray(canvas).copy()
    # Eyebrows and eyes.
    right_brow = [(178, 186), (196, 172), (222, 168), (242, 174), (240, 182), (220, 178), (198, 182)]
    draw.polygon(right_brow, fill=class_id("right eyebrow"))
    draw.polygon(mirror(right_brow), fill=class_id("left eyebrow"))
    right_eye = (190, 198, 234, 216)
    draw.ellipse(right_eye, fill=class_id("right eye"))
    draw.ellipse(mirror_box(right_eye), fill=class_id("left eye"))
    # Nose: bridge and nostril wings.
    draw.polygon(
        [(246, 206), (266, 206), (274, 260), (288, 276), (CENTRE_X, 288), (224, 276), (238, 260)],
        fill=class_id("nose"),
    )
    # Mouth: upper lip, lower lip, and the gap between them.
    draw.chord((212, 300, 300, 332), start=180, end=360, fill=class_id("upper lip"))
    draw.chord((218, 298, 294, 342), start=0, end=180, fill=class_id("lower lip"))
    draw.ellipse((232, 313, 280, 321), fill=class_id("inner mouth"))
    return np.asarray(canvas).copy()
