"""Attribute-balanced sampling weights from the captioner's sentences."""

from __future__ import annotations

import numpy as np
import pytest

from facemogle.data.balance import (MAX_WEIGHT, attribute_shares, attribute_weights, caption_attributes,
                                    complete_face_weights)
from facemogle.data.captions.phrasing import phrase
from facemogle.face_parts import FACE_PARTS
from facemogle.labels import class_id


def attributes(**values) -> dict:
    return {key: {"value": value} for key, value in values.items()}


def test_the_first_sentence_of_the_captioner_is_read_back():
    """The patterns follow the phrasing module: its first sentence names every face fact."""
    face = attributes(hair="hair", hair_colour="blond", hair_length="long", eyeglasses=True, hat=True,
                      smiling=True, mouth_open=True, background_colour="white")
    face["mouth_open"]["inner_mouth_vs_face"] = 0.05  # wide open: "an open mouth"
    first = phrase(face, seed=3)[0]
    assert caption_attributes(first) == {"hair_colour=blond", "eyeglasses", "hat", "smiling", "mouth_open"}
    slightly = attributes(hair="hair", hair_colour="black", mouth_open=True)
    slightly["mouth_open"]["inner_mouth_vs_face"] = 0.0
    assert caption_attributes(phrase(slightly)[0]) == {"hair_colour=black"}  # "slightly open" is not open
    sunglasses = attributes(eyeglasses=True)
    sunglasses["eyeglasses"]["sunglasses"] = True
    assert caption_attributes(phrase(sunglasses)[0]) == {"eyeglasses"}
    assert caption_attributes("The photo has a black background.") == frozenset()
    assert caption_attributes("This person wears earrings and has a smile.") == {"smiling"}


def test_rare_attributes_get_more_weight_common_ones_none():
    captions = ([["This person wears eyeglasses."]] * 2 + [["This person has black hair."]] * 10
                + [["This person is smiling."]] * 8)
    weights = attribute_weights(captions, target_share=0.3)
    assert weights[:2] == [pytest.approx(0.3 / 0.1)] * 2  # eyeglasses: 2 of 20 -> 3x
    assert weights[2:] == [1.0] * 18  # black hair 50 %, smiling 40 %: above the share
    shares = attribute_shares(captions, weights)
    assert shares["eyeglasses"] == pytest.approx(6 / 24, abs=1e-4)
    assert attribute_shares(captions)["eyeglasses"] == pytest.approx(0.1)


def test_weights_are_capped_and_faces_without_captions_weigh_one():
    captions = [["This person wears a hat."]] + [["This person has brown hair."]] * 99 + [[]]
    weights = attribute_weights(captions, target_share=0.5)
    assert weights[0] == MAX_WEIGHT  # 1 % would give 50x
    assert weights[-1] == 1.0 and weights[1] == 1.0  # brown hair: 99 % > 50 %


def test_equal_hair_colours_draws_every_colour_as_often_as_the_commonest():
    captions = ([["This person has black hair."]] * 6 + [["This person has brown hair."]] * 3
                + [["This person has blond hair."]] * 2 + [["This person wears a hat."]] * 9)
    assert attribute_weights(captions, None) == [1.0] * 20  # neither option: every face once
    weights = attribute_weights(captions, None, equal_hair_colours=True)
    assert weights == [1.0] * 6 + [2.0] * 3 + [3.0] * 2 + [1.0] * 9
    shares = attribute_shares(captions, weights)
    assert shares["hair_colour=black"] == shares["hair_colour=brown"] == shares["hair_colour=blond"]
    both = attribute_weights(captions, 0.5, equal_hair_colours=True)  # the larger boost wins
    assert both[9:11] == [pytest.approx(0.5 / 0.1)] * 2 and both[6:9] == [pytest.approx(0.5 / 0.15)] * 3
    lone = [["This person has red hair."]] + [["This person has black hair."]] * 99
    assert attribute_weights(lone, None, equal_hair_colours=True)[0] == MAX_WEIGHT  # 99x capped


def whole_face(side: int = 128, missing: str | None = None) -> np.ndarray:
    """Every face part as an 8 x 8 block at 128 px (scaled with ``side``), ``missing`` left out."""
    ids, r = np.zeros((side, side), np.uint8), side // 128
    for k, names in enumerate(FACE_PARTS):
        if missing not in names:
            ids[k * 8 * r:(k * 8 + 8) * r, 8 * r:16 * r] = class_id(names[0])
    return ids


def test_complete_face_weights_drop_masks_missing_a_part_at_any_size():
    masks = [whole_face(), whole_face(missing="right eye"), whole_face(512), whole_face(512, missing="nose")]
    assert complete_face_weights(masks) == [1.0, 0.0, 1.0, 0.0]
    speck = whole_face(512, missing="left eye")
    speck[100:104, 100:104] = class_id("left eye")  # 16 pixels at 512 px: 1 at 128 px, under MIN_PART_PIXELS
    assert complete_face_weights([speck]) == [0.0]
    speck[100:112, 100:112] = class_id("left eye")  # 9 at 128 px
    assert complete_face_weights([speck]) == [1.0]


def test_covered_parts_count_lets_eyeglasses_stand_for_the_eyes_and_a_hat_for_the_hair():
    glasses = whole_face()
    glasses[np.isin(glasses, [class_id("left eye"), class_id("right eye")])] = class_id("eyeglasses")
    hat = whole_face()
    hat[hat == class_id("hair")] = class_id("hat")
    hat_no_nose = hat.copy()
    hat_no_nose[hat_no_nose == class_id("nose")] = 0
    masks = [glasses, hat, hat_no_nose, whole_face(missing="left eye")]
    assert complete_face_weights(masks) == [0.0, 0.0, 0.0, 0.0]
    # an accessory covers only its own parts: a hat is no nose, eyeglasses no lips
    assert complete_face_weights(masks, covered_parts_count=True) == [1.0, 1.0, 0.0, 0.0]
    from facemogle.face_parts import parts_found
    assert set(parts_found(glasses, covered_parts_count=True)) == set(parts_found(glasses))  # same part names
    lips_as_glasses = whole_face()
    lips_as_glasses[np.isin(lips_as_glasses, [class_id("upper lip")])] = class_id("eyeglasses")
    assert complete_face_weights([lips_as_glasses], covered_parts_count=True) == [0.0]
