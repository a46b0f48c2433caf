"""facemogle.labels: the class set, the palette and the two label orders."""

from __future__ import annotations

import itertools

import pytest

from facemogle import labels


def test_class_counts_follow_the_class_list():
    assert labels.NUM_CLASSES == len(labels.CLASS_NAMES) == 19
    assert labels.NUM_CONDITIONS == labels.NUM_CLASSES + 1 == 20
    assert len(labels.PALETTE) == labels.NUM_CLASSES
    assert len(labels.BISENET_CLASS_NAMES) == labels.NUM_CLASSES
    assert labels.CLASS_NAMES[labels.BACKGROUND] == "background"


def test_official_ids_of_named_classes():
    # METHOD.md section 1.
    expected = {"background": 0, "face skin": 1, "nose": 2, "eyeglasses": 3, "left eye": 4, "right eye": 5,
                "left eyebrow": 6, "right eyebrow": 7, "left ear": 8, "right ear": 9, "inner mouth": 10,
                "upper lip": 11, "lower lip": 12, "hair": 13, "hat": 14, "earring": 15, "necklace": 16,
                "neck": 17, "cloth": 18}
    assert {name: labels.class_id(name) for name in expected} == expected


def test_unknown_class_name_is_a_key_error_naming_it():
    with pytest.raises(KeyError, match="beard"):
        labels.class_id("beard")


def test_palette_colours_are_distinct_rgb_bytes():
    assert len(set(labels.PALETTE)) == labels.NUM_CLASSES
    assert all(len(colour) == 3 and all(0 <= c <= 255 for c in colour) for colour in labels.PALETTE)
    assert labels.PALETTE[labels.class_id("hair")] == (0, 0, 204)
    assert labels.PALETTE[labels.class_id("face skin")] == (204, 0, 0)
    assert labels.PALETTE[labels.BACKGROUND] == (0, 0, 0)


def test_smallest_palette_distance_is_51():
    # masks.DEFAULT_MAX_COLOR_DISTANCE (24) relies on this: below half of it, snapping is unambiguous.
    distances = [max(abs(a - b) for a, b in zip(p, q)) for p, q in itertools.combinations(labels.PALETTE, 2)]
    assert min(distances) == 51


def test_bisenet_maps_are_inverse_permutations():
    assert sorted(labels.BISENET_TO_OFFICIAL) == list(range(labels.NUM_CLASSES))
    for bisenet_id, official_id in enumerate(labels.BISENET_TO_OFFICIAL):
        assert labels.OFFICIAL_TO_BISENET[official_id] == bisenet_id


@pytest.mark.parametrize(
    "bisenet_id, official_name",
    [(0, "background"), (1, "face skin"), (2, "left eyebrow"), (6, "eyeglasses"), (9, "earring"),
     (10, "nose"), (11, "inner mouth"), (15, "necklace"), (16, "cloth"), (17, "hair"), (18, "hat")],
)
def test_bisenet_ids_map_to_the_documented_official_classes(bisenet_id, official_name):
    # ../shared/data/README.md lists the face-parsing.PyTorch order.
    assert labels.BISENET_TO_OFFICIAL[bisenet_id] == labels.class_id(official_name)


def test_label_orders():
    assert labels.LABEL_ORDERS == ("official", "bisenet")


def test_class_ids_from_names():
    from facemogle.errors import InputError
    from facemogle.labels import class_ids

    assert class_ids("hair, hat,hair") == [13, 14] and class_ids(["eyeglasses"]) == [3] and class_ids(None) == []
    with pytest.raises(InputError, match="'halo'.*known: background"):
        class_ids("hair,halo")
