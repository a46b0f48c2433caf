"""Colour science for the captions: sRGB to CIELAB, basic colour names, hair colour names.

Regions are named by the basic colour that most of their pixels share (:func:`dominant_colour`);
hair by its median CIELAB colour (:func:`hair_colour_name`), which leaves gaps between the names
on purpose: no colour beats a wrong one.
"""

from __future__ import annotations

import numpy as np

#: Basic colour names ``colour_names`` can return (index = code).
COLOUR_NAMES: tuple[str, ...] = (
    "black", "white", "grey", "red", "pink", "orange", "brown", "beige",
    "yellow", "green", "blue", "purple",
)
#: Hair colour names ``hair_colour_name`` can return.
HAIR_COLOURS: tuple[str, ...] = ("black", "brown", "blond", "red", "grey", "white")

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
