"""Semi-automatic captions for face datasets that have masks but no text (``facemogle caption``).

A CelebAMask-HQ-style folder (``images/<stem>.jpg`` + ``masks/<stem>.png``) has no sentences, but
Face-MoGLE trains on mask + text. This module writes captions in the MM-CelebA-HQ layout
(``text/<stem>.txt``, one sentence per line, and ``text.json`` = ``{"<stem>.jpg": [sentences]}``,
METHOD.md section 7) from what the mask and the photo show:

* **accessories** (eyeglasses or sunglasses, hat, earrings, necklace): the class covers enough of
  the face once specks are removed (an opening; for thin earrings and chains, isolated pixels);
* **hair**: colour from the median CIELAB colour of the (eroded, luminance-trimmed) hair pixels,
  *long* when the hair reaches below the chin, *bald* when there is (almost) no hair and no hat;
* **mouth**: *open* from the inner-mouth area, *smiling* from a wide mouth (a less wide one only
  with the inner mouth, i.e. teeth, showing);
* **clothing** and **background** colour: the basic colour name that a clear majority of the
  region's pixels share.

Every measurement is kept with the decision in the dict ``describe`` returns, so a caption can be
audited. Rules are deliberately conservative: an attribute whose evidence falls between the
thresholds is ``None`` and never mentioned. Colours are not named at all for black-and-white photos.

The captions never guess gender, age or ethnicity: subjects are "This person", "The person" (also "The
person in the photo") and "They" only (``FORBIDDEN_WORDS`` lists words that must never appear; the tests scan for them).

Thresholds were set by looking at photos of ``../shared/data/celebamask-hq-mini``; see
``docs/captions.md`` for the check and the known limits.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from facemogle.errors import InputError, MaskError
from facemogle.labels import BACKGROUND, class_id

ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray]

# --------------------------------------------------------------------------------------------
# Classes
# --------------------------------------------------------------------------------------------

HAIR = class_id("hair")
HAT = class_id("hat")
EYEGLASSES = class_id("eyeglasses")
EARRING = class_id("earring")
NECKLACE = class_id("necklace")
CLOTH = class_id("cloth")
FACE_SKIN = class_id("face skin")
INNER_MOUTH = class_id("inner mouth")
LIPS = (class_id("upper lip"), class_id("lower lip"))
EYES = (class_id("left eye"), class_id("right eye"))
BROWS = (class_id("left eyebrow"), class_id("right eyebrow"))
#: Classes that make up the visible face; its area is the unit for every area threshold.
FACE_CLASSES: tuple[int, ...] = (
    FACE_SKIN,
    class_id("nose"),
    EYEGLASSES,
    *EYES,
    *BROWS,
    INNER_MOUTH,
    *LIPS,
)

# --------------------------------------------------------------------------------------------
# Thresholds (all relative: areas to the face area, lengths to the eye-to-chin distance)
# --------------------------------------------------------------------------------------------

#: Below this share of the image the face is too small (or absent) to describe.
MIN_FACE_FRACTION = 0.02
#: Radius of the erosion / opening, as a fraction of the mask side (4 px at 512).
EROSION_RADIUS_FRACTION = 1 / 128

#: Accessory -> smallest area (after speck removal), as a fraction of the face area. Earrings
#: and necklaces are small: a stud is ~0.05% of the face, a thin chain ~0.1%.
ACCESSORY_MIN_AREA: dict[str, float] = {
    "eyeglasses": 0.03,
    "hat": 0.10,
    "earrings": 0.0004,
    "necklace": 0.0005,
}
ACCESSORY_CLASSES: dict[str, int] = {
    "eyeglasses": EYEGLASSES,
    "hat": HAT,
    "earrings": EARRING,
    "necklace": NECKLACE,
}
#: Thin accessories (a chain is 1-2 pixels wide) would not survive an opening: for them only
#: isolated pixels (no 8-neighbour of the same class) are dropped; the others are opened.
THIN_ACCESSORIES = ("earrings", "necklace")
#: Glasses hiding this little of the eyes (eye area / glasses area) are sunglasses.
SUNGLASSES_MAX_EYE_AREA = 0.01

#: Hair area / face area: up to BALD_MAX_HAIR the person is bald (without a hat; shaved heads and
#: a thin fringe included), from HAIR_MIN_AREA they have hair; in between (buzz cuts, receding
#: hairlines, hair pulled back) nothing is said.
BALD_MAX_HAIR = 0.10
HAIR_MIN_AREA = 0.25
#: Hair pixels needed (after erosion) to name a colour.
MIN_COLOUR_PIXELS = 300
#: Luminance percentiles kept for the hair colour (drops highlights and deep shadows).
HAIR_TRIM_PERCENTILES = (10.0, 90.0)
#: How far the hair reaches below the chin, in eye-to-chin distances: at least LONG_HAIR_EXTENT
#: (or down to the bottom of the photo and below the chin) -> long. CelebA-HQ crops leave little
#: room below the chin (about 0.25 eye-to-chin distances). Hair that ends above the chin is never
#: called short: from the front, long hair tied back or up looks exactly like short hair (a third
#: of the "short" calls were wrong when checked by eye), so only the evidence is kept.
LONG_HAIR_EXTENT = 0.12
#: The hair's lowest row is this percentile of the hair pixels' rows: a long-hair call needs a real
#: mass of hair below the chin (the last row holding a few pixels made chin-length bobs "long").
HAIR_BOTTOM_PERCENTILE = 99.0

#: Inner-mouth area / face area from which the mouth counts as open (lips visibly parted).
MOUTH_OPEN_MIN_AREA = 0.006
#: Smile (mouth width / face width): a mouth this wide is smiling ...
SMILE_CLOSED_WIDTH = 0.47
#: ... and so is a narrower one that is this wide and shows the inner mouth (teeth).
SMILE_OPEN_WIDTH = 0.42
SMILE_OPEN_MIN_AREA = 0.01
#: Fewer lip + inner-mouth pixels than this: the mouth is hidden, nothing is said about it.
MIN_MOUTH_PIXELS = 20

#: Photos whose 95th percentile of pixel chroma (CIELAB) is below this are black-and-white or
#: nearly so: no colour words at all.
MONOCHROME_MAX_CHROMA = 10.5
#: A region's colour is named when this share of its pixels has that colour name.
COLOUR_MIN_SHARE = 0.6
#: Smallest clothing area (fraction of the face area) and background area (fraction of the image).
CLOTHING_MIN_AREA = 0.15
BACKGROUND_MIN_AREA = 0.1

#: Basic colour names ``colour_names`` can return (index = code).
COLOUR_NAMES: tuple[str, ...] = (
    "black", "white", "grey", "red", "pink", "orange", "brown", "beige",
    "yellow", "green", "blue", "purple",
)
HAIR_COLOURS: tuple[str, ...] = ("black", "brown", "blond", "red", "grey", "white")

#: Words no caption may contain (gender, age, ethnicity); checked by the tests.
FORBIDDEN_WORDS: frozenset[str] = frozenset(
    """
    he she him her hers his himself herself man men woman women boy boys girl girls guy guys gal
    lady ladies gentleman gentlemen male female masculine feminine mr mrs ms miss sir madam
    husband wife father mother son daughter brother sister
    young younger youth youthful old older elderly aged age teen teenager teenage child children
    kid kids baby adult senior middle-aged
    asian african caucasian european hispanic latino latina indian arab ethnic ethnicity race racial
    beard moustache mustache makeup lipstick
    """.split()
)


# --------------------------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------------------------

_SRGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])
_LAB_EPSILON = (6 / 29) ** 3


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB colours: ``(..., 3)`` uint8 -> ``(..., 3)`` float64 ``(L, a, b)``."""
    linear = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(linear <= 0.04045, linear / 12.92, ((linear + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _D65_WHITE  # (..., 3)
    f = np.where(xyz > _LAB_EPSILON, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lightness = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return np.stack([lightness, a, b], axis=-1)


def lch(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lightness, chroma and hue angle (degrees, 0..360) of CIELAB colours ``(..., 3)``."""
    lab = np.asarray(lab, dtype=np.float64)
    chroma = np.hypot(lab[..., 1], lab[..., 2])
    hue = np.degrees(np.arctan2(lab[..., 2], lab[..., 1])) % 360
    return lab[..., 0], chroma, hue


def colour_names(lab: np.ndarray) -> np.ndarray:
    """Basic colour name of each CIELAB colour: ``(..., 3)`` -> ``(...)`` int codes into ``COLOUR_NAMES``.

    Achromatic colours (chroma < 12) are black / grey / white by lightness; the others are named by
    hue angle, with dark oranges and yellows called brown, light desaturated ones beige, and light
    reds and purples pink.
    """
    lightness, chroma, hue = lch(lab)
    code = np.full(lightness.shape, COLOUR_NAMES.index("grey"), dtype=np.int64)

    def name(condition: np.ndarray, colour: str) -> None:
        code[condition] = COLOUR_NAMES.index(colour)

    chromatic = chroma >= 12
    # Hue sectors in CIELAB (sRGB red ~40, orange ~70, yellow ~100, green ~136, blue ~306 degrees).
    name(chromatic & ((hue >= 345) | (hue < 45)), "red")
    name(chromatic & (hue >= 45) & (hue < 85), "orange")
    name(chromatic & (hue >= 85) & (hue < 110), "yellow")
    name(chromatic & (hue >= 110) & (hue < 200), "green")
    name(chromatic & (hue >= 200) & (hue < 315), "blue")
    name(chromatic & (hue >= 315) & (hue < 345), "purple")
    warm = chromatic & (hue >= 45) & (hue < 110)
    name(warm & (lightness < 45), "brown")
    name(warm & (lightness >= 60) & (chroma < 30), "beige")
    reddish = chromatic & ((hue >= 315) | (hue < 45))
    name(reddish & (lightness >= 65), "pink")
    name(chromatic & (hue < 45) & (lightness < 30) & (chroma < 30), "brown")
    name(~chromatic & (lightness < 25), "black")
    name(~chromatic & (lightness > 80), "white")
    return code


def dominant_colour(lab: np.ndarray) -> tuple[str, float]:
    """The most frequent basic colour name of ``(N, 3)`` CIELAB pixels and the share it has."""
    counts = np.bincount(colour_names(lab).ravel(), minlength=len(COLOUR_NAMES))
    best = int(counts.argmax())
    return COLOUR_NAMES[best], float(counts[best] / max(1, counts.sum()))


def hair_colour_name(lightness: float, chroma: float, hue: float) -> str | None:
    """Hair colour from the median CIELAB colour (L, C, hue angle) of the hair, or ``None`` if unsure.

    The named regions leave gaps on purpose (dark brown vs black, light brown vs dark blond,
    auburn vs red vs strawberry blond, ash blond vs grey): no colour beats a wrong one. Hair in
    warm light picks up chroma, so grey and white need a nearly neutral median, and red needs a
    strong, red-leaning one.
    """
    if chroma < 4 and lightness >= 72:
        return "white"
    if chroma < 4 and lightness >= 45:
        return "grey"
    if lightness < 12 and chroma < 6:
        return "black"
    if chroma >= 29 and hue < 52.5 and 15 <= lightness < 60:
        return "red"
    if lightness >= 50 and chroma >= 15 and 60 <= hue < 100:
        return "blond"
    if 14 <= lightness < 32 and chroma >= 10 and 30 <= hue < 90:
        return "brown"
    return None


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------


def _erode(region: np.ndarray, radius: int) -> np.ndarray:
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


def _dilate(region: np.ndarray, radius: int) -> np.ndarray:
    return ~_erode(~region, radius)


def _open(region: np.ndarray, radius: int) -> np.ndarray:
    """Morphological opening: removes parts of ``region`` thinner than ``2 * radius + 1`` pixels."""
    return _dilate(_erode(region, radius), radius) & region


def _drop_isolated(region: np.ndarray) -> np.ndarray:
    """``region`` without its pixels that have no 8-neighbour in ``region``."""
    height, width = region.shape
    padded = np.pad(region, 1, constant_values=False).astype(np.uint8)
    neighbours = sum(
        padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)
    ) - region  # (H, W)
    return region & (neighbours > 0)


def _percentile_span(values: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    lo, hi = np.percentile(values, [low, high])
    return float(lo), float(hi)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


# --------------------------------------------------------------------------------------------
# describe
# --------------------------------------------------------------------------------------------


def describe(image: ImageSource, ids: np.ndarray) -> dict[str, dict[str, Any]]:
    """Measure the captionable attributes of one photo and its mask.

    Args:
        image: the photo, ``(H', W', 3)`` uint8 RGB array, PIL image or path. It is resized (box
            filter) to the mask size when they differ (MM-CelebA-HQ pairs 1024 photos with 512 masks);
            the aspect ratios must agree.
        ids: ``(H, W)`` official class ids (``facemogle.masks.load_mask``).

    Returns:
        ``{attribute: {"value": ..., <evidence>...}}``, JSON-serialisable. ``value`` is ``None`` when
        the evidence is not clear enough to say anything. Attributes: ``photo`` (monochrome?),
        ``face``, ``eyeglasses``, ``hat``, ``earrings``, ``necklace`` (bool), ``hair``
        (``"hair"``/``"bald"``/``None``), ``hair_colour``, ``hair_length`` (``"long"``),
        ``mouth_open``, ``smiling`` (bool), ``clothing_colour``, ``background_colour`` (colour names).
    """
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise MaskError(f"class ids must be an (H, W) integer array, got shape {ids.shape} dtype {ids.dtype}")
    rgb = _rgb_at_mask_size(image, ids.shape)  # (H, W, 3) uint8
    height, width = ids.shape
    radius = max(1, round(min(height, width) * EROSION_RADIUS_FRACTION))
    lab = srgb_to_lab(rgb)  # (H, W, 3)
    _, image_chroma, _ = lch(lab)
    photo_chroma = float(np.percentile(image_chroma, 95))
    monochrome = photo_chroma < MONOCHROME_MAX_CHROMA

    face = np.isin(ids, FACE_CLASSES)
    face_area = int(face.sum())
    face_fraction = face_area / ids.size
    attributes: dict[str, dict[str, Any]] = {
        "photo": {
            "value": "monochrome" if monochrome else "colour",
            "chroma_95th_percentile": _round(photo_chroma, 2),
            "size": [height, width],
        },
        "face": {"value": face_fraction >= MIN_FACE_FRACTION, "area_fraction": _round(face_fraction)},
    }
    if face_fraction < MIN_FACE_FRACTION:  # nothing to measure relative to
        for key in ("eyeglasses", "hat", "earrings", "necklace", "hair", "hair_colour", "hair_length",
                    "mouth_open", "smiling", "clothing_colour", "background_colour"):
            attributes[key] = {"value": None, "reason": "no face large enough in the mask"}
        return attributes

    geometry = _face_geometry(ids, face)
    attributes["face"].update({k: _round(v, 1) for k, v in geometry.items()})

    for name, class_index in ACCESSORY_CLASSES.items():
        region = ids == class_index
        raw = int(region.sum())
        if raw == 0:
            kept = 0
        elif name in THIN_ACCESSORIES:
            kept = int(_drop_isolated(region).sum())
        else:
            kept = int(_open(region, radius).sum())
        attributes[name] = {
            "value": kept / face_area >= ACCESSORY_MIN_AREA[name],
            "area_vs_face": _round(raw / face_area),
            "area_without_specks_vs_face": _round(kept / face_area),
        }
    eyes_vs_glasses = float(np.isin(ids, EYES).sum() / max(1, int((ids == EYEGLASSES).sum())))
    attributes["eyeglasses"]["eyes_visible_vs_glasses"] = _round(eyes_vs_glasses)
    attributes["eyeglasses"]["sunglasses"] = bool(
        attributes["eyeglasses"]["value"] and eyes_vs_glasses < SUNGLASSES_MAX_EYE_AREA
    )

    attributes.update(_describe_hair(ids, lab, face_area, geometry, radius, monochrome,
                                     hat=attributes["hat"]["value"]))
    attributes.update(_describe_mouth(ids, face_area, geometry))
    attributes["clothing_colour"] = _region_colour(
        _erode(ids == CLOTH, radius), lab, monochrome,
        area=float((ids == CLOTH).sum() / face_area), min_area=CLOTHING_MIN_AREA, area_key="area_vs_face",
    )
    attributes["background_colour"] = _region_colour(
        _erode(ids == BACKGROUND, radius), lab, monochrome,
        area=float((ids == BACKGROUND).mean()), min_area=BACKGROUND_MIN_AREA, area_key="area_vs_image",
    )
    return attributes


def _rgb_at_mask_size(image: ImageSource, shape: tuple[int, int]) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise InputError(f"the photo must be an (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}")
        if image.shape[:2] == tuple(shape):
            return image
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise InputError(f"cannot read a photo from a {type(image).__name__}")
    height, width = shape
    if abs(image.width * height - image.height * width) > max(image.width, width):
        raise InputError(
            f"the photo is {image.width}x{image.height} but the mask is {width}x{height}: "
            "their aspect ratios differ, so they cannot be a pair"
        )
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.BOX)
    return np.asarray(image)


def _face_geometry(ids: np.ndarray, face: np.ndarray) -> dict[str, float]:
    """Rows/columns of the face in pixels: eye row, chin row, face height (eye to chin), face width."""
    rows, columns = np.nonzero(face)
    skin_rows, skin_columns = np.nonzero(ids == FACE_SKIN)
    if len(skin_rows) == 0:
        skin_rows, skin_columns = rows, columns
    chin_row = float(np.percentile(skin_rows, 99.5))
    eye_rows = np.nonzero(np.isin(ids, EYES + (EYEGLASSES,)))[0]
    if len(eye_rows) == 0:
        eye_rows = np.nonzero(np.isin(ids, BROWS))[0]
    top_row = float(np.percentile(rows, 0.5))
    # Eyes sit about 45% down a face whose eye row is unknown.
    eye_row = float(np.median(eye_rows)) if len(eye_rows) else top_row + 0.45 * (chin_row - top_row)
    left, right = _percentile_span(skin_columns, 2.0, 98.0)
    return {
        "eye_row": eye_row,
        "chin_row": chin_row,
        "face_height": max(1.0, chin_row - eye_row),
        "face_width": max(1.0, right - left),
    }


def _describe_hair(
    ids: np.ndarray,
    lab: np.ndarray,
    face_area: int,
    geometry: dict[str, float],
    radius: int,
    monochrome: bool,
    *,
    hat: bool,
) -> dict[str, dict[str, Any]]:
    hair = ids == HAIR
    hair_area = float(hair.sum() / face_area)
    if hair_area >= HAIR_MIN_AREA:
        state = "hair"
    elif hair_area <= BALD_MAX_HAIR and not hat:
        state = "bald"
    else:  # a little hair, or no hair under a hat: could be a hairline, a cap, a shaved head
        state = None
    result: dict[str, dict[str, Any]] = {"hair": {"value": state, "area_vs_face": _round(hair_area)}}

    # Colour: eroded hair (no blending with skin/background at the border), luminance-trimmed.
    core = _erode(hair, radius)
    colour: dict[str, Any] = {"value": None, "pixels_used": 0}
    if state == "hair" and int(core.sum()) >= MIN_COLOUR_PIXELS:
        pixels = lab[core]  # (N, 3)
        low, high = np.percentile(pixels[:, 0], HAIR_TRIM_PERCENTILES)
        pixels = pixels[(pixels[:, 0] >= low) & (pixels[:, 0] <= high)]
        median = np.median(pixels, axis=0)  # (3,)
        lightness, chroma, hue = (float(v) for v in lch(median))
        colour.update(
            value=None if monochrome else hair_colour_name(lightness, chroma, hue),
            pixels_used=int(len(pixels)),
            median_lab=[_round(v, 2) for v in median],
            median_lch=[_round(lightness, 2), _round(chroma, 2), _round(hue, 1)],
        )
        if monochrome:
            colour["reason"] = "black-and-white photo"
    result["hair_colour"] = colour

    length: dict[str, Any] = {"value": None}
    if state == "hair":
        bottom = float(np.percentile(np.nonzero(hair)[0], HAIR_BOTTOM_PERCENTILE))
        extent = (bottom - geometry["chin_row"]) / geometry["face_height"]
        reaches_edge = bottom >= ids.shape[0] - 1 - radius
        long_hair = extent >= LONG_HAIR_EXTENT or (reaches_edge and extent > 0)
        length.update(
            value="long" if long_hair else None,
            extent_below_chin=_round(extent, 3),
            reaches_image_bottom=bool(reaches_edge),
        )
    result["hair_length"] = length
    return result


def _describe_mouth(ids: np.ndarray, face_area: int, geometry: dict[str, float]) -> dict[str, dict[str, Any]]:
    inner_area = float((ids == INNER_MOUTH).sum() / face_area)
    columns = np.nonzero(np.isin(ids, LIPS + (INNER_MOUTH,)))[1]
    if len(columns) < MIN_MOUTH_PIXELS:  # mouth hidden (a hand, a microphone) or not labelled
        reason = "mouth not visible"
        return {
            "mouth_open": {"value": None, "inner_mouth_vs_face": _round(inner_area), "reason": reason},
            "smiling": {"value": None, "reason": reason},
        }
    left, right = _percentile_span(columns)
    width_ratio = (right - left) / geometry["face_width"]
    smiling = width_ratio >= SMILE_CLOSED_WIDTH or (
        width_ratio >= SMILE_OPEN_WIDTH and inner_area >= SMILE_OPEN_MIN_AREA
    )
    return {
        "mouth_open": {"value": inner_area >= MOUTH_OPEN_MIN_AREA, "inner_mouth_vs_face": _round(inner_area)},
        "smiling": {"value": bool(smiling), "mouth_width_vs_face": _round(width_ratio)},
    }


def _region_colour(
    region: np.ndarray, lab: np.ndarray, monochrome: bool, *, area: float, min_area: float, area_key: str
) -> dict[str, Any]:
    result: dict[str, Any] = {"value": None, area_key: _round(area)}
    if area < min_area or int(region.sum()) < MIN_COLOUR_PIXELS:
        result["reason"] = "region too small"
        return result
    name, share = dominant_colour(lab[region])
    result.update(dominant=name, share=_round(share, 3))
    if monochrome:
        result["reason"] = "black-and-white photo"
    elif share >= COLOUR_MIN_SHARE:
        result["value"] = name
    return result


# --------------------------------------------------------------------------------------------
# phrase
# --------------------------------------------------------------------------------------------

#: Sentences per image by default (MM-CelebA-HQ has about ten).
DEFAULT_SENTENCES = 10
#: Subjects of the sentences and whether they take a plural verb. Nothing else names the person.
SUBJECTS: tuple[tuple[str, bool], ...] = (
    ("This person", False),
    ("The person", False),
    ("The person in the photo", False),
    ("They", True),
)
#: Possessives for sentences about one thing (``{Their}`` at the start, ``{their}`` inside).
POSSESSIVES: tuple[str, ...] = ("This person's", "The person's", "Their")
_VERBS = {"is": "are", "has": "have", "wears": "wear"}
#: Most facts one generated sentence joins (the first sentence joins all facts about the face).
MAX_FACTS_PER_SENTENCE = 3
#: Inner-mouth area / face area from which an open mouth is "open" rather than "slightly open".
MOUTH_WIDE_OPEN_AREA = 0.03
#: Sentences used when nothing could be said with confidence.
FALLBACK_SENTENCES: tuple[str, ...] = (
    "A photo of the face of a person.",
    "This is a portrait photo of a person.",
    "The photo shows the face of a person.",
    "A close-up portrait of a person.",
    "This person is photographed in a close-up portrait.",
    "The person is seen in a face photo.",
    "The face of a person fills this photo.",
    "A headshot of a person.",
    "This is a headshot photo of a person.",
    "The photo is a close-up of the face of a person.",
)


@dataclass(frozen=True)
class _Fact:
    """One thing to say. ``clauses`` follow a subject and use ``{is}``/``{has}``/``{wears}``
    (agreeing with it); ``sentences`` stand alone and use ``{Their}``/``{their}`` possessives."""

    group: str  # "face" (first sentence) or "scene" (clothing, background)
    clauses: tuple[str, ...]
    sentences: tuple[str, ...] = ()


def _facts(attributes: dict[str, dict[str, Any]]) -> list[_Fact]:
    """A ``_Fact`` for every attribute whose value is worth saying (not ``None``/``False``)."""

    def value(key: str) -> Any:
        return attributes.get(key, {}).get("value")

    facts: list[_Fact] = []
    hair, colour, length = value("hair"), value("hair_colour"), value("hair_length")
    if hair == "bald":
        facts.append(_Fact("face", ("{is} bald", "{has} no hair", "{has} a bald head"),
                           ("There is no hair on {their} head.", "{Their} head is bald.")))
    elif hair == "hair" and (colour or length):
        words = " ".join(word for word in (length, colour) if word)
        described = " and ".join(word for word in (length, colour) if word)
        facts.append(_Fact("face", (f"{{has}} {words} hair", f"{{has}} hair that is {described}"),
                           (f"{{Their}} hair is {described}.", f"{{Their}} hair looks {described}.")))
    if value("eyeglasses"):
        kind = "sunglasses" if attributes["eyeglasses"].get("sunglasses") else "eyeglasses"
        facts.append(_Fact("face", (f"{{wears}} {kind}", f"{{is}} wearing {kind}", f"{{has}} {kind} on"),
                           (f"{{Their}} eyes are behind {kind}.",)))
    if value("hat"):
        facts.append(_Fact("face", ("{wears} a hat", "{is} wearing a hat", "{has} a hat on"),
                           ("There is a hat on {their} head.",)))
    if value("earrings"):
        facts.append(_Fact("face", ("{wears} earrings", "{is} wearing earrings"),
                           ("Earrings are visible on {their} ears.",)))
    if value("necklace"):
        facts.append(_Fact("face", ("{wears} a necklace", "{is} wearing a necklace"),
                           ("A necklace is visible around {their} neck.",)))
    if value("smiling"):
        facts.append(_Fact("face", ("{is} smiling", "{has} a smile", "{has} a smiling face")))
    if value("mouth_open"):
        wide = (attributes["mouth_open"].get("inner_mouth_vs_face") or 0) >= MOUTH_WIDE_OPEN_AREA
        clauses = ("{has} an open mouth", "{has} the mouth open") if wide else (
            "{has} the mouth slightly open", "{has} slightly parted lips")
        facts.append(_Fact("face", clauses, ("{Their} mouth is open.",) if wide else ("{Their} mouth is slightly open.",)))
    clothing = value("clothing_colour")
    if clothing:
        facts.append(_Fact("scene", (f"{{wears}} {clothing} clothes", f"{{is}} dressed in {clothing}"),
                           (f"{{Their}} clothes are {clothing}.",)))
    background = value("background_colour")
    if background:
        facts.append(_Fact("scene", (f"{{is}} in front of a {background} background",
                                     f"{{is}} photographed against a {background} background"),
                           (f"The background is {background}.", f"The photo has a {background} background.")))
    return facts


def _join(clauses: list[str]) -> str:
    if len(clauses) == 1:
        return clauses[0]
    return ", ".join(clauses[:-1]) + " and " + clauses[-1]


def _sentence(clauses: list[str], subject: str, plural: bool) -> str:
    verbs = {singular: (plural_form if plural else singular) for singular, plural_form in _VERBS.items()}
    return f"{subject} {_join([clause.format(**verbs) for clause in clauses])}."


def _standalone(template: str, possessive: str) -> str:
    return template.format(Their=possessive, their=possessive[0].lower() + possessive[1:])


def phrase(attributes: dict[str, dict[str, Any]], n: int = DEFAULT_SENTENCES, seed: int = 0) -> list[str]:
    """``n`` caption sentences for the attributes ``describe`` measured; same seed, same sentences.

    The first sentence states every fact about the face (hair, accessories, mouth), the second
    (when there are any) the clothing and background; the others are random combinations of up to
    ``MAX_FACTS_PER_SENTENCE`` facts (or one fact in a sentence of its own) with random wordings and
    subjects. Sentences are distinct while the facts allow it. Attributes whose value is ``None`` or
    ``False`` are never mentioned; with nothing to say, ``FALLBACK_SENTENCES`` are used.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"the number of sentences must be a positive integer, got {n!r}")
    rng = random.Random(seed)
    facts = _facts(attributes)
    if not facts:
        start = rng.randrange(len(FALLBACK_SENTENCES))
        return [FALLBACK_SENTENCES[(start + i) % len(FALLBACK_SENTENCES)] for i in range(n)]

    def make(chosen: list[_Fact], subject: tuple[str, bool]) -> str:
        return _sentence([rng.choice(fact.clauses) for fact in chosen], *subject)

    sentences: list[str] = []
    for group in ("face", "scene"):  # the plainest wording: the first sentence is the one evaluated
        chosen = [fact.clauses[0] for fact in facts if fact.group == group]
        if chosen and len(sentences) < n:
            sentences.append(_sentence(chosen, *SUBJECTS[len(sentences)]))  # "This person", "The person"
    attempts = 0
    while len(sentences) < n:
        size = rng.randint(1, min(MAX_FACTS_PER_SENTENCE, len(facts)))
        chosen = [facts[i] for i in sorted(rng.sample(range(len(facts)), size))]
        if size == 1 and chosen[0].sentences and rng.random() < 0.5:
            candidate = _standalone(rng.choice(chosen[0].sentences), rng.choice(POSSESSIVES))
        else:
            candidate = make(chosen, rng.choice(SUBJECTS))
        attempts += 1
        # Distinct sentences while possible; repeats once the facts are exhausted.
        if candidate not in sentences or attempts > 50 * n:
            sentences.append(candidate)
    return sentences


_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


def forbidden_words_in(sentence: str) -> list[str]:
    """The words of ``sentence`` that are in ``FORBIDDEN_WORDS`` (gender, age, ethnicity)."""
    return [word for word in _WORD.findall(sentence.lower()) if word in FORBIDDEN_WORDS]


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------

#: Sub-folders searched for photos and masks, in order (CelebAMask-HQ style, then MM-CelebA-HQ).
IMAGE_FOLDERS: tuple[str, ...] = ("images", "face")
MASK_FOLDERS: tuple[str, ...] = ("masks", "mask")
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
TEXT_FOLDER = "text"
TEXT_JSON = "text.json"
EVIDENCE_JSON = "caption_attributes.json"
_PHOTO_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def read_image(path: str | os.PathLike) -> Image.Image:
    """Read a photo as an RGB PIL image; an unreadable file raises ``InputError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"photo {path} does not exist or is not a file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except _PHOTO_ERRORS as err:
        raise InputError(f"cannot read photo {path}: {err}") from err


def _pick_folder(root: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise InputError(
        f"no {what} folder in {root}: expected one of {', '.join(n + '/' for n in names)} "
        "(a dataset holds images/<stem>.jpg + masks/<stem>.png, or face/ + mask/)"
    )


def _files_by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.stem in files:
            raise InputError(f"{folder} has two files with stem {path.stem!r}: {files[path.stem].name} and {path.name}")
        files[path.stem] = path
    return files


def find_pairs(root: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """``(stem, photo, mask)`` for every stem that has both, sorted by stem.

    Photos come from ``images/`` (else ``face/``), masks from ``masks/`` (else ``mask/``); files
    pair up by stem. Raises ``InputError`` when the folders are missing or no stem has both.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder {root} does not exist or is not a folder")
    image_folder = _pick_folder(root, IMAGE_FOLDERS, "photo")
    mask_folder = _pick_folder(root, MASK_FOLDERS, "mask")
    images, masks = _files_by_stem(image_folder), _files_by_stem(mask_folder)
    stems = sorted(images.keys() & masks.keys())
    if not stems:
        raise InputError(
            f"no photo/mask pairs in {root}: {image_folder.name}/ has {len(images)} images and "
            f"{mask_folder.name}/ {len(masks)} masks, but no file stem is in both"
        )
    return [(stem, images[stem], masks[stem]) for stem in stems]


def image_seed(seed: int, stem: str) -> int:
    """Seed of one image's sentences: depends on ``seed`` and the stem only, never on the order of
    the files (a shared generator would make a caption depend on which images came before it)."""
    digest = hashlib.sha256(f"{seed}:{stem}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def caption_folder(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    sentences: int = DEFAULT_SENTENCES,
    seed: int = 0,
    overwrite: bool = False,
    evidence: bool = False,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Caption every photo/mask pair of a dataset folder in the MM-CelebA-HQ layout.

    Writes ``<out>/text/<stem>.txt`` (one sentence per line) and ``<out>/text.json``
    (``{"<photo file name>": [sentences]}``); with ``evidence``, also ``<out>/caption_attributes.json``
    (``{"<photo file name>": describe(...)}``). ``out`` defaults to ``root``. Every pair is read and
    described before anything is written, so a bad file leaves no half-written captions.

    Returns:
        ``{"<photo file name>": [sentences]}`` in stem order.

    Raises:
        InputError: no pairs, an unreadable photo, a photo and mask of different shapes, or existing
            captions in ``out`` without ``overwrite``.
        MaskError: an unreadable or invalid mask (the message names the file).
    """
    from tqdm import tqdm

    from facemogle.masks import load_mask

    if isinstance(sentences, bool) or not isinstance(sentences, int) or sentences < 1:
        raise InputError(f"the number of sentences must be a positive integer, got {sentences!r}")
    pairs = find_pairs(root)
    out = Path(root if out is None else out)
    text_folder = out / TEXT_FOLDER
    existing = [out / TEXT_JSON] + [text_folder / f"{stem}.txt" for stem, _, _ in pairs]
    if evidence:
        existing.append(out / EVIDENCE_JSON)
    clash = next((path for path in existing if path.exists()), None)
    if clash is not None and not overwrite:
        raise InputError(f"{clash} already exists; pass overwrite=True (--overwrite) to replace captions in {out}")

    captions: dict[str, list[str]] = {}
    measured: dict[str, dict[str, Any]] = {}
    for stem, image_path, mask_path in tqdm(pairs, desc="captioning", unit="image", disable=not progress):
        ids = load_mask(mask_path)
        photo = read_image(image_path)
        try:
            attributes = describe(photo, ids)
        except InputError as err:  # e.g. the photo and the mask do not have the same aspect ratio
            raise InputError(f"{image_path} and {mask_path}: {err}") from err
        captions[image_path.name] = phrase(attributes, sentences, image_seed(seed, stem))
        if evidence:
            measured[image_path.name] = attributes

    try:
        text_folder.mkdir(parents=True, exist_ok=True)
        for (stem, image_path, _), lines in zip(pairs, captions.values()):
            (text_folder / f"{stem}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (out / TEXT_JSON).write_text(json.dumps(captions, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        if evidence:
            (out / EVIDENCE_JSON).write_text(json.dumps(measured, indent=1) + "\n", encoding="utf-8")
    except OSError as err:
        raise InputError(f"cannot write captions to {out}: {err.strerror or err}") from err
    return captions
