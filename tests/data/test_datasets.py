"""Folder datasets: layouts, captions, default and file splits, loading at a resolution."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from facemogle.data import splits
from facemogle.data.datasets import (
    FOLDER,
    MM_CELEBA_HQ,
    MM_CELEBA_HQ_FIRST_TEST_ID,
    FaceDataset,
    detect_layout,
    index_dataset,
    load_image,
    load_mask_ids,
)
from facemogle.errors import InputError
from facemogle.masks import render_mask, save_mask


def _face(path, size=64, value=128):
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)


def _mask(path, size=32, top_class=13):
    ids = np.ones((size, size), dtype=np.uint8)  # face skin
    ids[: size // 4] = top_class
    save_mask(ids, path)


@pytest.fixture
def mm_celeba(tmp_path):
    """MM-CelebA-HQ layout with ids on both sides of the official boundary."""
    root = tmp_path / "mm"
    for name in ("face", "mask", "text"):
        (root / name).mkdir(parents=True)
    ids = [0, 7, 26999, 27000, 29999]
    for i in ids:
        _face(root / "face" / f"{i}.jpg")
        _mask(root / "mask" / f"{i}.png")
    (root / "text" / "0.txt").write_text("She is smiling.\n\n She wears lipstick. \n")
    (root / "text.json").write_text(json.dumps({"7.jpg": ["He has a beard."], "0.jpg": ["not used: text/0.txt wins"]}))
    _face(root / "face" / "123.jpg")  # an image without a mask is not a sample
    return root


def test_mm_celeba_default_split_is_the_official_one_of_the_ids_present(mm_celeba):
    index = index_dataset(mm_celeba)
    assert index.layout is MM_CELEBA_HQ
    assert index.splits["train"] == ("0", "7", "26999")  # numeric order
    assert index.splits["test"] == ("27000", "29999")
    assert index.splits["val"] == ()
    assert MM_CELEBA_HQ_FIRST_TEST_ID == 27000
    # captions: text/<i>.txt (stripped, blank lines dropped) before text.json; json by image name
    records = index.records
    assert records["0"].captions == ("She is smiling.", "She wears lipstick.")
    assert records["7"].captions == ("He has a beard.",)
    assert records["26999"].captions == () and records["26999"].caption_file is None


def test_mm_celeba_val_is_carved_from_train_by_the_split_rule(mm_celeba):
    index = index_dataset(mm_celeba, num_val=1, salt="s")
    expected = splits.make_split(["0", "7", "26999"], num_val=1, salt="s")
    assert index.splits["val"] == expected.val
    assert set(index.splits["train"]) == set(expected.train)
    assert index.splits["test"] == ("27000", "29999")


def test_mm_celeba_refuses_non_numeric_stems(tmp_path):
    root = tmp_path / "mm"
    (root / "face").mkdir(parents=True)
    (root / "mask").mkdir()
    _face(root / "face" / "abc.jpg")
    _mask(root / "mask" / "abc.png")
    with pytest.raises(InputError, match="integer ids"):
        index_dataset(root)


def test_folder_layout_default_split_uses_the_splits_module(tmp_path):
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    stems = [f"s{i}" for i in range(6)]
    for stem in stems:
        _face(root / "images" / f"{stem}.png")
        _mask(root / "masks" / f"{stem}.png")
    index = index_dataset(root, num_val=2)
    assert index.layout is FOLDER
    expected = splits.make_split(stems, num_val=2)
    assert index.splits["val"] == expected.val and index.splits["train"] == expected.train
    assert index.splits["test"] == ()
    assert index_dataset(root, num_val=2).splits == index.splits  # deterministic


def test_split_file_fixes_train_val_test(mm_celeba, tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["27000", "0"], "val": ["7"], "test": ["29999"]}))
    index = index_dataset(mm_celeba, split_file=path)
    assert index.splits == {"train": ("0", "27000"), "val": ("7",), "test": ("29999",)}
    assert [r.stem for r in index.split("train")] == ["0", "27000"]

    path.write_text(json.dumps({"train": ["0", "404"], "val": []}))
    with pytest.raises(InputError, match="404"):
        index_dataset(mm_celeba, split_file=path)
    path.write_text(json.dumps({"train": ["0"], "val": [], "test": ["0"]}))
    with pytest.raises(InputError, match="test and in train"):
        index_dataset(mm_celeba, split_file=path)


def test_layout_detection_errors(tmp_path):
    with pytest.raises(InputError, match="neither layout"):
        detect_layout(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        detect_layout(tmp_path / "missing")


def test_loading_resizes_images_with_the_filter_and_masks_nearest(tmp_path):
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[:, 32:] = 200
    pixels[::2, ::2] = 40  # high-frequency detail: area and bicubic differ
    Image.fromarray(pixels).save(tmp_path / "face.png")
    area = load_image(tmp_path / "face.png", 16, "area")
    bicubic = load_image(tmp_path / "face.png", 16, "bicubic")
    assert area.shape == (3, 16, 16) and area.dtype == torch.uint8
    box = pixels.reshape(16, 4, 16, 4, 3).mean(axis=(1, 3))  # the exact area average
    assert np.abs(area.permute(1, 2, 0).numpy().astype(float) - box).max() <= 1
    assert not np.array_equal(area.numpy(), bicubic.numpy())

    ids = np.zeros((32, 32), dtype=np.uint8)
    ids[:, 16:] = 13
    ids[5, 5] = 4
    Image.fromarray(render_mask(ids)).save(tmp_path / "colour.png")  # colour-rendered mask: accepted too
    small = load_mask_ids(tmp_path / "colour.png", 8)
    assert small.shape == (8, 8) and set(np.unique(small)) <= {0, 4, 13}
    assert (small[:, 4:] == 13).all() and (small[:, :4] != 13).all()


def test_non_square_pairs_are_centre_cropped(tmp_path):
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:, 16:48] = 255  # the central square is white
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    assert (load_image(tmp_path / "wide.png", 16, "area") == 255).all()
    ids = np.zeros((32, 64), dtype=np.uint8)
    ids[:, 16:48] = 1
    save_mask(ids, tmp_path / "wide_mask.png")
    assert (load_mask_ids(tmp_path / "wide_mask.png", 16) == 1).all()


def test_face_dataset_items(mm_celeba):
    index = index_dataset(mm_celeba)
    dataset = FaceDataset(index.split("train"), resolution=16)
    item = dataset[0]
    assert item["stem"] == "0" and item["captions"] == ["She is smiling.", "She wears lipstick."]
    assert tuple(item["image"].shape) == (3, 16, 16) and tuple(item["mask"].shape) == (16, 16)
    assert set(item["mask"].unique().tolist()) == {1, 13}


def test_captions_can_live_in_another_folder(tmp_path):
    root = tmp_path / "readonly"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    _face(root / "images" / "a.png")
    _mask(root / "masks" / "a.png")
    captions = tmp_path / "captions"
    (captions / "text").mkdir(parents=True)
    (captions / "text" / "a.txt").write_text("Black hair.\n")
    assert index_dataset(root, num_val=0).records["a"].captions == ()
    record = index_dataset(root, num_val=0, captions_dir=captions).records["a"]
    assert record.captions == ("Black hair.",) and record.caption_file == captions / "text" / "a.txt"


def test_mirrored_records_flip_the_photo_and_swap_left_and_right(tmp_path):
    from facemogle.data.datasets import FaceRecord, with_mirrored
    from facemogle.labels import class_id

    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    pixels[:, :4] = 255  # a white stripe on the left
    Image.fromarray(pixels).save(tmp_path / "face.png")
    ids = np.zeros((16, 16), dtype=np.uint8)
    ids[2:4, 1:3] = class_id("left eye")
    ids[2:4, 12:14] = class_id("right eye")
    ids[8:10, 0:2] = class_id("left ear")
    ids[12:14, 7:9] = class_id("nose")
    save_mask(ids, tmp_path / "mask.png")
    records = with_mirrored([FaceRecord("a", tmp_path / "face.png", tmp_path / "mask.png", ("x",))])
    assert [r.stem for r in records] == ["a", "a~mirrored"] and records[1].captions == ("x",)
    dataset = FaceDataset(records, resolution=16)
    plain, mirrored = dataset[0], dataset[1]
    assert torch.equal(mirrored["image"], plain["image"].flip(-1))
    flipped = mirrored["mask"].numpy()
    assert (flipped[2:4, 13:15] == class_id("right eye")).all()  # the left eye, now on the right, is the right eye
    assert (flipped[2:4, 2:4] == class_id("left eye")).all()
    assert (flipped[8:10, 14:16] == class_id("right ear")).all()
    assert (flipped[12:14, 7:9] == class_id("nose")).all()
    assert (flipped == 0).sum() == (ids == 0).sum()
