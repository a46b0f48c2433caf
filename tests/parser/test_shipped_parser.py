"""facemogle.parser.loading: the shipped parser (weights, model card, accuracy) and load_parser's errors."""

from __future__ import annotations

import importlib
import re

import numpy as np
import pytest
from PIL import Image

from facemogle.data.splits import split_folder
from facemogle.errors import CheckpointError
from facemogle.eval.metrics import confusion_matrix, iou_per_class
from facemogle.labels import NUM_CLASSES, class_id
from facemogle.parser import SHIPPED_PARSER_DIR, FaceParser, evaluate_parser, load_parser

from .conftest import random_photo

MODEL_CARD = SHIPPED_PARSER_DIR / "MODEL_CARD.md"
CARD_MEAN_IOU = re.compile(r"Validation mean IoU \(\d+ classes\): \*\*([0-9.]+)\*\*")
CARD_FINGERPRINT = re.compile(r"Val fingerprint.*?`([0-9a-f]{64})`", re.DOTALL)
CARD_TOLERANCE = 0.005
CARD_CODE_REFERENCE = re.compile(r"`(facemogle(?:\.\w+)+)")


def test_shipped_parser_outputs_ids_at_each_input_size(shipped_parser):
    assert isinstance(shipped_parser, FaceParser) and not shipped_parser.training
    ids = shipped_parser.parse(random_photo(300, 200))
    assert ids.shape == (200, 300) and ids.dtype == np.uint8 and ids.max() < NUM_CLASSES
    batch = shipped_parser.parse([random_photo(64, 64, 1), random_photo(64, 64, 2)])
    assert batch.shape == (2, 64, 64) and batch.dtype == np.uint8
    mixed = shipped_parser.parse([random_photo(40, 30), random_photo(20, 50)])
    assert [m.shape for m in mixed] == [(30, 40), (50, 20)]
    assert np.array_equal(shipped_parser.parse(random_photo(300, 200)), ids)  # deterministic


def test_shipped_parser_weights_are_small():
    sizes = [p.stat().st_size for p in SHIPPED_PARSER_DIR.glob("*.safetensors")]
    assert len(sizes) == 1 and sizes[0] < 16 * 2**20
    assert "non-commercial" in MODEL_CARD.read_text()


def test_model_card_names_code_that_exists():
    """Every `facemogle.module.name` the card cites can be imported (the card outlives code moves)."""
    references = set(CARD_CODE_REFERENCE.findall(MODEL_CARD.read_text()))
    assert {"facemogle.parser.load_parser", "facemogle.parser.evaluate_parser"} <= references
    for reference in references:
        module_name, _, attribute = reference.rpartition(".")
        assert hasattr(importlib.import_module(module_name), attribute), reference


def test_shipped_parser_finds_the_face_on_real_photos(shipped_parser, fixtures_dir):
    """MaskGAN sample photos (1024 px, not in the training data) against their 512 px masks."""
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for index in range(4):
        photo = Image.open(fixtures_dir / "maskgan-samples" / f"{index}.jpg").convert("RGB")
        target = np.asarray(Image.open(fixtures_dir / "maskgan-samples" / f"{index}.png"))
        predicted = shipped_parser.parse(photo.resize(target.shape[::-1], Image.BILINEAR))
        confusion += confusion_matrix(predicted, target)
    iou = iou_per_class(confusion)
    for name in ("background", "face skin", "hair"):
        assert iou[class_id(name)] > 0.75, (name, iou[class_id(name)])
    assert np.nanmean(iou) > 0.5


def test_shipped_parser_validation_miou_matches_model_card(shipped_parser, mini_dataset_dir):
    """Recompute the card's number: full-resolution IoU over the 100 val images of the split rule."""
    card = MODEL_CARD.read_text()
    split = split_folder(mini_dataset_dir)
    assert split.fingerprint == CARD_FINGERPRINT.search(card).group(1)
    metrics = evaluate_parser(shipped_parser, mini_dataset_dir, split.val)
    assert metrics["num_images"] == len(split.val)
    assert abs(metrics["mean_iou"] - float(CARD_MEAN_IOU.search(card).group(1))) <= CARD_TOLERANCE


def test_load_parser_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_parser(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no FaceParser config"):
        load_parser(tmp_path)
