"""Tests of facemogle.data.captions.colour: CIELAB values and basic colour names of sRGB colours."""

from __future__ import annotations

import numpy as np

from facemogle.data.captions import COLOUR_NAMES, colour_names, srgb_to_lab


def test_colour_names_of_basic_srgb_colours():
    colours = {
        "red": (200, 30, 30), "blue": (30, 60, 200), "green": (40, 160, 60), "white": (245, 245, 245),
        "black": (10, 10, 10), "grey": (128, 128, 128), "yellow": (230, 210, 40), "orange": (240, 140, 20),
        "purple": (120, 40, 150), "pink": (240, 160, 190), "brown": (110, 70, 40), "beige": (220, 200, 170),
    }
    lab = srgb_to_lab(np.array(list(colours.values()), np.uint8))  # (12, 3)
    assert [COLOUR_NAMES[code] for code in colour_names(lab)] == list(colours)


def test_srgb_to_lab_reference_values():
    lab = srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0]], np.uint8))
    np.testing.assert_allclose(lab, [[100, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20]], atol=0.05)
