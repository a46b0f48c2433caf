"""What the mask and the photo show: ``describe`` measures the captionable attributes of one pair.

* **accessories** (eyeglasses or sunglasses, hat, earrings, necklace): the class covers enough of
  the face once specks are removed (an opening; for thin earrings and chains, isolated pixels);
* **hair**: colour from the median CIELAB colour of the (eroded, luminance-trimmed) hair pixels,
  *long* when the hair reaches below the chin, *bald* when there is (almost) no hair and no hat;
* **mouth**: *open* from the inner-mouth area, *smiling* from a wide mouth (a less wide one only
  with the inner mouth, i.e. teeth, showing);
* **clothing** and **background** colour: the basic colour name that a clear majority of the
  region's pixels share.

Every measurement is kept with the decision, so a caption can be audited. An attribute whose
evidence falls between the thresholds below is ``None`` (never mentioned). Colours are not named
at all for black-and-white photos.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facemogle.data.captions.colour import dominant_colour, hair_colour_name, lch, srgb_to_lab
from facemogle.data.captions.morphology import drop_isolated, erode, opening
from facemogle.data.captions.photo import ImageSource, rgb_at_mask_size
from facemogle.errors import MaskError
from facemogle.labels import BACKGROUND, class_id

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
    rgb = rgb_at_mask_size(image, ids.shape)  # (H, W, 3) uint8
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
            kept = int(drop_isolated(region).sum())
        else:
            kept = int(opening(region, radius).sum())
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
        erode(ids == CLOTH, radius), lab, monochrome,
        area=float((ids == CLOTH).sum() / face_area), min_area=CLOTHING_MIN_AREA, area_key="area_vs_face",
    )
    attributes["background_colour"] = _region_colour(
        erode(ids == BACKGROUND, radius), lab, monochrome,
        area=float((ids == BACKGROUND).mean()), min_area=BACKGROUND_MIN_AREA, area_key="area_vs_image",
    )
    return attributes



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
    core = erode(hair, radius)
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


def _percentile_span(values: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    lo, hi = np.percentile(values, [low, high])
    return float(lo), float(hi)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)
