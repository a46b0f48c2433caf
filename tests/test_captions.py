"""Tests of facemogle.data.captions and `facemogle caption`: synthetic faces with known attributes,
determinism, the forbidden-word scan on real masks, and the MM-CelebA-HQ output layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facemogle.cli import main
from facemogle.data.captions import (
    ACCESSORY_MIN_AREA,
    COLOUR_NAMES,
    DEFAULT_SENTENCES,
    FALLBACK_SENTENCES,
    FORBIDDEN_WORDS,
    HAIR_COLOURS,
    POSSESSIVES,
    SUBJECTS,
    caption_folder,
    colour_names,
    describe,
    find_pairs,
    forbidden_words_in,
    phrase,
    srgb_to_lab,
)
from facemogle.errors import InputError
from facemogle.labels import class_id
from facemogle.masks import load_mask, save_mask

SIZE = 256
SKIN = (224, 172, 140)
HAIR_RGB = {
    "black": (15, 13, 12),
    "brown": (90, 60, 40),
    "blond": (225, 195, 130),
    "red": (150, 50, 25),
    "grey": (150, 150, 150),
    "white": (235, 235, 235),
}
#: Between black and dark brown (L 12, chroma 7): the captioner must say nothing.
AMBIGUOUS_DARK_HAIR = (40, 30, 25)
CLASS_RGB = {
    "face skin": SKIN,
    "neck": SKIN,
    "nose": (215, 160, 130),
    "left eye": (60, 50, 40),
    "right eye": (60, 50, 40),
    "left eyebrow": (60, 40, 30),
    "right eyebrow": (60, 40, 30),
    "upper lip": (180, 90, 90),
    "lower lip": (180, 90, 90),
    "inner mouth": (70, 20, 20),
    "eyeglasses": (30, 30, 30),
    "hat": (120, 30, 30),
    "earring": (230, 210, 120),
    "necklace": (220, 200, 120),
}
#: Sentence openings the captioner may use: its subjects, possessives, and scene sentences.
ALLOWED_OPENINGS = tuple(subject for subject, _ in SUBJECTS) + POSSESSIVES + (
    "The background", "The photo", "There is", "Earrings", "A necklace",
)


def synthetic_face(
    *,
    hair: str | None = "long",
    hair_rgb: tuple[int, int, int] = HAIR_RGB["brown"],
    hat: bool = False,
    glasses: str | None = None,
    earrings: bool = False,
    necklace: bool = False,
    mouth: str = "closed",
    cloth_rgb: tuple[int, int, int] = (30, 60, 200),
    background_rgb: tuple[int, int, int] = (245, 245, 245),
    noise_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A frontal face (SIZE x SIZE): ``(photo (H, W, 3) uint8, ids (H, W) uint8)``.

    Face ellipse centred at (125, 128), eye row ~108, chin row ~190, so the face is ~10k pixels.
    hair: "long" (cap + strands down to the bottom edge), "short" (cap ending at the eyes) or None.
    glasses: "eyeglasses" (eyes visible through them), "sunglasses" (eyes hidden) or None.
    mouth: "closed" (narrow, no inner mouth) or "smile" (wide, teeth showing).
    """
    ids = np.zeros((SIZE, SIZE), np.uint8)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]

    def put(name: str, region: np.ndarray) -> None:
        ids[region] = class_id(name)

    put("cloth", rows >= 215)
    put("neck", (rows >= 180) & (rows < 215) & (cols >= 108) & (cols < 148))
    if hair is not None:
        cap = ((rows - 115) / 80.0) ** 2 + ((cols - 128) / 62.0) ** 2 <= 1
        put("hair", cap & (rows < 115))
        if hair == "long":
            put("hair", (rows >= 90) & (((cols >= 66) & (cols < 80)) | ((cols >= 176) & (cols < 190))))
    put("face skin", ((rows - 125) / 65.0) ** 2 + ((cols - 128) / 50.0) ** 2 <= 1)
    for side, (left, right) in (("left", (100, 116)), ("right", (141, 157))):
        put(f"{side} eyebrow", (rows >= 95) & (rows < 100) & (cols >= left) & (cols < right))
        put(f"{side} eye", (rows >= 105) & (rows < 112) & (cols >= left) & (cols < right))
    put("nose", (rows >= 115) & (rows < 145) & (cols >= 122) & (cols < 134))
    if mouth == "closed":
        put("upper lip", (rows >= 155) & (rows < 160) & (cols >= 110) & (cols < 146))
        put("lower lip", (rows >= 160) & (rows < 166) & (cols >= 110) & (cols < 146))
    else:
        put("upper lip", (rows >= 152) & (rows < 156) & (cols >= 96) & (cols < 161))
        put("inner mouth", (rows >= 156) & (rows < 165) & (cols >= 96) & (cols < 161))
        put("lower lip", (rows >= 165) & (rows < 169) & (cols >= 96) & (cols < 161))
    if glasses is not None:
        eyes = np.isin(ids, (class_id("left eye"), class_id("right eye")))
        put("eyeglasses", (rows >= 100) & (rows < 117) & (cols >= 94) & (cols < 163))
        if glasses == "eyeglasses":  # clear lenses: the eyes stay visible
            ids[eyes] = np.where(cols[eyes] < 128, class_id("left eye"), class_id("right eye"))
    if hat:
        put("hat", (rows >= 20) & (rows < 61) & (cols >= 60) & (cols < 197))
    if earrings:
        put("earring", (rows >= 150) & (rows < 154) & (((cols >= 74) & (cols < 78)) | ((cols >= 179) & (cols < 183))))
    if necklace:
        put("necklace", (rows >= 200) & (rows < 202) & (cols >= 110) & (cols < 147))

    colours = {class_id(name): rgb for name, rgb in CLASS_RGB.items()}
    colours.update({class_id("hair"): hair_rgb, class_id("cloth"): cloth_rgb, class_id("background"): background_rgb})
    photo = np.zeros((SIZE, SIZE, 3), np.float64)
    for index, rgb in colours.items():
        photo[ids == index] = rgb
    noise = np.random.default_rng(noise_seed).normal(0.0, 3.0, photo.shape)
    return np.clip(photo + noise, 0, 255).round().astype(np.uint8), ids


def sentences_of(photo: np.ndarray, ids: np.ndarray, n: int = DEFAULT_SENTENCES, seed: int = 0) -> list[str]:
    return phrase(describe(photo, ids), n, seed)


def words(sentences: list[str]) -> set[str]:
    return {word for sentence in sentences for word in re.findall(r"[a-z]+", sentence.lower())}


# --------------------------------------------------------------------------------------------
# describe: synthetic faces with known attributes
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# phrase
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Folders and the CLI
# --------------------------------------------------------------------------------------------


def write_pair(folder: Path, stem: str, *, image_dir="images", mask_dir="masks", photo_scale=1, **face) -> None:
    photo, ids = synthetic_face(**face)
    (folder / image_dir).mkdir(parents=True, exist_ok=True)
    (folder / mask_dir).mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(photo)
    if photo_scale != 1:
        image = image.resize((SIZE * photo_scale, SIZE * photo_scale), Image.BICUBIC)
    image.save(folder / image_dir / f"{stem}.jpg", quality=95)
    save_mask(ids, folder / mask_dir / f"{stem}.png")


def test_cli_writes_mm_celeba_layout(tmp_path, capsys):
    dataset, out = tmp_path / "dataset", tmp_path / "out"
    write_pair(dataset, "a1", hair_rgb=HAIR_RGB["blond"], glasses="eyeglasses")
    write_pair(dataset, "b2", hair=None, hat=True, mouth="smile")
    (dataset / "images" / "notes.txt").write_text("not an image")
    before = sorted(path.relative_to(dataset) for path in dataset.rglob("*"))

    assert main(["caption", str(dataset), "--out", str(out), "--sentences", "4", "--seed", "3"]) == 0
    assert "wrote 2 captions" in capsys.readouterr().out
    assert sorted(path.relative_to(dataset) for path in dataset.rglob("*")) == before  # dataset untouched

    captions = json.loads((out / "text.json").read_text())
    assert list(captions) == ["a1.jpg", "b2.jpg"]
    assert sorted(path.name for path in (out / "text").iterdir()) == ["a1.txt", "b2.txt"]
    for stem in ("a1", "b2"):
        lines = (out / "text" / f"{stem}.txt").read_text().splitlines()
        assert lines == captions[f"{stem}.jpg"] and len(lines) == 4
    assert "blond hair" in captions["a1.jpg"][0] and "eyeglasses" in captions["a1.jpg"][0]
    assert "hat" in captions["b2.jpg"][0] and "smil" in captions["b2.jpg"][0]

    # Existing captions are kept unless --overwrite; the same seed gives the same captions.
    assert main(["caption", str(dataset), "--out", str(out), "--sentences", "4", "--seed", "3"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["caption", str(dataset), "--out", str(out), "--sentences", "4", "--seed", "3", "--overwrite"]) == 0
    assert json.loads((out / "text.json").read_text()) == captions


def test_caption_folder_mm_layout_with_large_photos_and_evidence(tmp_path):
    write_pair(tmp_path, "0", image_dir="face", mask_dir="mask", photo_scale=2, hair_rgb=HAIR_RGB["red"])
    captions = caption_folder(tmp_path, sentences=3, seed=0, evidence=True, progress=False)
    assert list(captions) == ["0.jpg"] and "red hair" in captions["0.jpg"][0]
    assert (tmp_path / "text" / "0.txt").read_text().splitlines() == captions["0.jpg"]
    evidence = json.loads((tmp_path / "caption_attributes.json").read_text())
    assert evidence["0.jpg"]["hair_colour"]["value"] == "red"


def test_captions_do_not_depend_on_the_other_images(tmp_path):
    write_pair(tmp_path / "one", "m", hair_rgb=HAIR_RGB["blond"], earrings=True, mouth="smile")
    for stem in ("a", "m", "z"):
        write_pair(tmp_path / "three", stem, hair_rgb=HAIR_RGB["blond"], earrings=True, mouth="smile")
    alone = caption_folder(tmp_path / "one", tmp_path / "out1", sentences=6, seed=1, progress=False)
    among = caption_folder(tmp_path / "three", tmp_path / "out3", sentences=6, seed=1, progress=False)
    assert alone["m.jpg"] == among["m.jpg"]
    assert among["a.jpg"] != among["m.jpg"]  # per-image seeds differ


def test_cli_errors_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    assert main(["caption", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no photo/mask pairs" in capsys.readouterr().err

    assert main(["caption", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err

    broken = tmp_path / "broken"
    write_pair(broken, "x")
    (broken / "images" / "x.jpg").write_bytes(b"not a jpeg")
    assert main(["caption", str(broken), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cannot read photo" in err and "x.jpg" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing half-written

    write_pair(broken, "x")
    (broken / "masks" / "x.png").write_bytes(b"not a png")
    assert main(["caption", str(broken), "--out", str(tmp_path / "o")]) == 2
    assert "x.png" in capsys.readouterr().err

    assert main(["caption", str(broken), "--sentences", "0"]) == 2
    assert "--sentences" in capsys.readouterr().err
