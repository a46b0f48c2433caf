"""Attribute-balanced sampling weights from the captioner's sentences."""

from __future__ import annotations

import pytest

from facemogle.data.balance import MAX_WEIGHT, attribute_shares, attribute_weights, caption_attributes
from facemogle.data.captions.phrasing import phrase


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
