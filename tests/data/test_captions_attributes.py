"""Tests of facemogle.data.captions.attributes (``describe``): synthetic faces with known attributes,
and what ``phrase`` then says (or does not say) about them."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from facemogle.data.captions import ACCESSORY_MIN_AREA, COLOUR_NAMES, HAIR_COLOURS, describe, phrase
from facemogle.errors import InputError
from facemogle.labels import class_id

from .caption_faces import AMBIGUOUS_DARK_HAIR, HAIR_RGB, SIZE, synthetic_face


def words(sentences: list[str]) -> set[str]:
    return {word for sentence in sentences for word in re.findall(r"[a-z]+", sentence.lower())}


@pytest.mark.parametrize("colour", HAIR_COLOURS)
def test_hair_colour_of_synthetic_photo(colour):
    photo, ids = synthetic_face(hair_rgb=HAIR_RGB[colour])
    attributes = describe(photo, ids)
    assert attributes["hair"]["value"] == "hair"
    assert attributes["hair_colour"]["value"] == colour
    assert attributes["hair_colour"]["pixels_used"] > 1000
    assert f"{colour} hair" in phrase(attributes, 3, 0)[0]


def test_ambiguous_hair_colour_is_not_named():
    photo, ids = synthetic_face(hair_rgb=AMBIGUOUS_DARK_HAIR, background_rgb=(40, 160, 60))  # blue cloth
    attributes = describe(photo, ids)
    lightness, chroma, _ = attributes["hair_colour"]["median_lch"]
    assert 10 < lightness < 14 and 5 < chroma < 9  # the evidence is kept ...
    assert attributes["hair_colour"]["value"] is None  # ... but no colour is named
    assert not words(phrase(attributes, 10, 0)) & set(HAIR_COLOURS)


def test_hair_colour_ignores_border_pixels_and_highlights():
    photo, ids = synthetic_face(hair_rgb=HAIR_RGB["black"])
    hair = ids == class_id("hair")
    border = hair & ~np.roll(hair, 2, axis=0)  # the top rows of every hair region: blended pixels
    photo[border] = (250, 250, 250)
    highlights = hair & (np.arange(SIZE)[None, :] % 9 == 0)  # ~11% specular streaks
    photo[highlights] = (200, 200, 200)
    assert describe(photo, ids)["hair_colour"]["value"] == "black"


def test_long_hair_and_hair_ending_above_the_chin():
    long_hair = describe(*synthetic_face(hair="long"))
    short_hair = describe(*synthetic_face(hair="short"))
    assert long_hair["hair_length"]["value"] == "long"
    assert long_hair["hair_length"]["extent_below_chin"] > 0.5
    assert long_hair["hair_length"]["reaches_image_bottom"] is True
    assert "long brown hair" in phrase(long_hair, 1)[0]
    # Hair ending above the chin may be short or tied back: measured, never called "short".
    assert short_hair["hair_length"]["value"] is None
    assert short_hair["hair_length"]["extent_below_chin"] < -0.5
    assert phrase(short_hair, 1)[0].startswith("This person has brown hair")
    assert "short" not in words(phrase(short_hair, 10, 0))


def test_no_hair_pixels_is_bald():
    attributes = describe(*synthetic_face(hair=None))
    assert attributes["hair"]["value"] == "bald"
    assert attributes["hair"]["area_vs_face"] == 0
    assert attributes["hair_colour"]["value"] is None and attributes["hair_length"]["value"] is None
    first = phrase(attributes, 5, 0)[0]
    assert "bald" in first or "no hair" in first


def test_hat_is_mentioned_and_hidden_hair_is_not_called_bald():
    attributes = describe(*synthetic_face(hair=None, hat=True))
    assert attributes["hat"]["value"] is True
    assert attributes["hair"]["value"] is None  # no hair visible under a hat: maybe not bald
    sentences = phrase(attributes, 10, 0)
    assert "hat" in sentences[0]
    assert "bald" not in words(sentences)


@pytest.mark.parametrize("kind", ["eyeglasses", "sunglasses"])
def test_glasses(kind):
    attributes = describe(*synthetic_face(glasses=kind))
    assert attributes["eyeglasses"]["value"] is True
    assert attributes["eyeglasses"]["sunglasses"] is (kind == "sunglasses")
    assert kind in phrase(attributes, 1)[0]


def test_earrings_and_necklace():
    attributes = describe(*synthetic_face(earrings=True, necklace=True))
    assert attributes["earrings"]["value"] and attributes["necklace"]["value"]
    first = phrase(attributes, 1)[0]
    assert "earrings" in first and "necklace" in first


@pytest.mark.parametrize(
    "accessory, class_name, speck",
    [("earrings", "earring", 1), ("necklace", "necklace", 1), ("eyeglasses", "eyeglasses", 3), ("hat", "hat", 4)],
)
def test_tiny_spurious_accessory_regions_are_ignored(accessory, class_name, speck):
    photo, ids = synthetic_face()
    # Hundreds of separate specks in the background strips beside the head: together far more
    # than the accessory's area threshold, but each one thinner than what the captioner keeps.
    for row in range(4, 200, 8):
        for col in (*range(4, 56, 8), *range(200, 252, 8)):
            ids[row : row + speck, col : col + speck] = class_id(class_name)
    attributes = describe(photo, ids)
    assert attributes[accessory]["area_vs_face"] >= ACCESSORY_MIN_AREA[accessory]  # in the mask ...
    assert attributes[accessory]["area_without_specks_vs_face"] == 0
    assert attributes[accessory]["value"] is False  # ... but ignored
    assert not words(phrase(attributes, 10, 0)) & {accessory, "sunglasses"}


def test_smile_and_open_mouth():
    smiling = describe(*synthetic_face(mouth="smile"))
    neutral = describe(*synthetic_face(mouth="closed"))
    assert smiling["mouth_open"]["value"] is True and smiling["smiling"]["value"] is True
    assert smiling["smiling"]["mouth_width_vs_face"] > 0.6
    assert neutral["mouth_open"]["value"] is False and neutral["smiling"]["value"] is False
    assert neutral["smiling"]["mouth_width_vs_face"] < 0.41
    assert "smil" in phrase(smiling, 1)[0]
    assert not words(phrase(neutral, 10, 0)) & {"smiling", "smile", "open", "mouth"}


def test_hidden_mouth_is_not_described():
    photo, ids = synthetic_face(mouth="smile")
    ids[np.isin(ids, [class_id(n) for n in ("upper lip", "lower lip", "inner mouth")])] = class_id("face skin")
    attributes = describe(photo, ids)
    assert attributes["mouth_open"]["value"] is None and attributes["smiling"]["value"] is None


def test_clothing_and_background_colours():
    attributes = describe(*synthetic_face(cloth_rgb=(200, 30, 30), background_rgb=(40, 160, 60)))
    assert attributes["clothing_colour"]["value"] == "red"
    assert attributes["background_colour"]["value"] == "green"
    assert attributes["background_colour"]["share"] > 0.95
    second = phrase(attributes, 2, 0)[1]
    assert "red" in second and "green background" in second


def test_mixed_background_colour_is_not_named():
    photo, ids = synthetic_face()
    background = ids == class_id("background")
    photo[background & (np.arange(SIZE)[None, :] < SIZE // 2)] = (200, 30, 30)  # half red, half white
    attributes = describe(photo, ids)
    assert attributes["background_colour"]["value"] is None
    assert attributes["background_colour"]["share"] < 0.6


def test_black_and_white_photo_names_no_colours():
    photo, ids = synthetic_face(hair_rgb=HAIR_RGB["blond"], cloth_rgb=(200, 30, 30))
    grey = np.asarray(Image.fromarray(photo).convert("L").convert("RGB"))
    attributes = describe(grey, ids)
    assert attributes["photo"]["value"] == "monochrome"
    assert attributes["hair_colour"]["value"] is None
    assert attributes["clothing_colour"]["value"] is None and attributes["background_colour"]["value"] is None
    assert not words(phrase(attributes, 10, 0)) & (set(COLOUR_NAMES) | {"blond"})
    assert attributes["hair_length"]["value"] == "long"  # shape facts are still reported


def test_photo_larger_than_mask_is_resized_and_other_aspect_refused():
    photo, ids = synthetic_face(hair_rgb=HAIR_RGB["red"])
    large = Image.fromarray(photo).resize((2 * SIZE, 2 * SIZE), Image.NEAREST)
    assert describe(large, ids)["hair_colour"]["value"] == "red"
    with pytest.raises(InputError, match="aspect ratios differ"):
        describe(Image.fromarray(photo).resize((2 * SIZE, SIZE)), ids)


def test_describe_is_json_serialisable_and_keeps_evidence():
    attributes = describe(*synthetic_face(glasses="eyeglasses", earrings=True))
    decoded = json.loads(json.dumps(attributes))
    assert decoded == attributes
    assert set(attributes) >= {"eyeglasses", "hat", "earrings", "necklace", "hair", "hair_colour", "hair_length",
                               "mouth_open", "smiling", "clothing_colour", "background_colour"}
    assert all("value" in entry for entry in attributes.values())
