"""Tests of facemogle.data.captions.phrasing (``phrase``): determinism, distinct sentences, fallbacks,
and the forbidden-word scan on synthetic and real masks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facemogle.data.captions import (
    DEFAULT_SENTENCES,
    FALLBACK_SENTENCES,
    FORBIDDEN_WORDS,
    HAIR_COLOURS,
    POSSESSIVES,
    SUBJECTS,
    describe,
    find_pairs,
    forbidden_words_in,
    phrase,
)
from facemogle.errors import InputError
from facemogle.masks import load_mask

from .caption_faces import HAIR_RGB, synthetic_face

#: Sentence openings the captioner may use: its subjects, possessives, and scene sentences.
ALLOWED_OPENINGS = tuple(subject for subject, _ in SUBJECTS) + POSSESSIVES + (
    "The background", "The photo", "There is", "Earrings", "A necklace",
)


def sentences_of(photo: np.ndarray, ids: np.ndarray, n: int = DEFAULT_SENTENCES, seed: int = 0) -> list[str]:
    return phrase(describe(photo, ids), n, seed)


def rich_attributes() -> dict:
    return describe(*synthetic_face(hair_rgb=HAIR_RGB["blond"], glasses="eyeglasses", hat=True,
                                    earrings=True, mouth="smile"))


def test_phrase_is_deterministic_for_a_seed():
    attributes = rich_attributes()
    assert phrase(attributes, 10, seed=7) == phrase(attributes, 10, seed=7)
    assert phrase(attributes, 10, seed=7) != phrase(attributes, 10, seed=8)


def test_phrase_first_sentence_states_every_face_fact_and_sentences_are_distinct():
    sentences = phrase(rich_attributes(), 10, 3)
    assert len(sentences) == 10 and len(set(sentences)) == 10
    first = sentences[0]
    assert first.startswith("This person ")
    for fact in ("long blond hair", "eyeglasses", "a hat", "earrings", "smiling", "open"):
        assert fact in first, fact
    assert all(sentence.endswith(".") and sentence[0].isupper() for sentence in sentences)


def test_phrase_with_one_fact_still_gives_distinct_sentences():
    attributes = describe(*synthetic_face(hair=None, background_rgb=(128, 128, 128), cloth_rgb=(128, 128, 128)))
    attributes["clothing_colour"]["value"] = attributes["background_colour"]["value"] = None
    assert [key for key, entry in attributes.items() if entry["value"] not in (None, False)] == ["photo", "face", "hair"]
    sentences = phrase(attributes, 10, 0)
    assert len(set(sentences)) == 10


def test_phrase_with_nothing_to_say_uses_neutral_sentences():
    attributes = {"hair": {"value": None}, "eyeglasses": {"value": False}}
    sentences = phrase(attributes, 5, 1)
    assert len(set(sentences)) == 5 and set(sentences) <= set(FALLBACK_SENTENCES)


def test_phrase_rejects_bad_counts():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="number of sentences"):
            phrase({}, bad, 0)


def test_forbidden_word_scanner_catches_gendered_words():
    assert forbidden_words_in("She has blond hair and he is an old man.") == ["she", "he", "old", "man"]
    assert forbidden_words_in("They wear a hat; the person is smiling.") == []
    assert {"he", "she", "woman", "man", "young", "old", "asian"} <= FORBIDDEN_WORDS


def test_no_forbidden_words_in_any_synthetic_caption():
    variants = [
        dict(hair=hair, hat=hat, glasses=glasses, mouth=mouth)
        for hair in ("long", "short", None) for hat in (False, True)
        for glasses in (None, "sunglasses") for mouth in ("closed", "smile")
    ]
    for variant in variants:
        for sentence in sentences_of(*synthetic_face(**variant), n=10, seed=5):
            assert forbidden_words_in(sentence) == [], (variant, sentence)
            assert sentence.startswith(ALLOWED_OPENINGS) or sentence in FALLBACK_SENTENCES, sentence


def test_no_forbidden_words_on_real_masks(mini_dataset_dir):
    pairs = find_pairs(mini_dataset_dir)[::18]  # 50 of the 900 pairs
    assert len(pairs) == 50
    named_hair = 0
    for stem, image_path, mask_path in pairs:
        attributes = describe(Image.open(image_path), load_mask(mask_path))
        sentences = phrase(attributes, DEFAULT_SENTENCES, 0)
        assert len(sentences) == DEFAULT_SENTENCES
        for sentence in sentences:
            assert forbidden_words_in(sentence) == [], (stem, sentence)
            assert sentence.startswith(ALLOWED_OPENINGS) or sentence in FALLBACK_SENTENCES, (stem, sentence)
        assert attributes["hair_colour"]["value"] in (None, *HAIR_COLOURS)
        named_hair += attributes["hair_colour"]["value"] is not None
    assert named_hair >= 15  # the scan covers real hair-colour sentences, not only fallbacks
