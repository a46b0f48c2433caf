"""facemogle.parser.evaluation: the IoU protocol's pieces and the photos of a folder dataset."""

from __future__ import annotations

import numpy as np
import pytest

from facemogle.errors import InputError
from facemogle.eval.metrics import confusion_matrix, iou_per_class
from facemogle.parser import image_paths

from .conftest import random_photo


def test_confusion_and_iou():
    target = np.array([[0, 0, 1], [1, 2, 2]])
    predicted = np.array([[0, 1, 1], [1, 2, 0]])
    confusion = confusion_matrix(predicted, target, num_classes=4)
    assert confusion.sum() == 6 and confusion[0, 1] == 1 and confusion[2, 0] == 1
    iou = iou_per_class(confusion)
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 1 / 2])
    assert np.isnan(iou[3])


def test_image_paths_finds_each_stem_in_the_order_given(tmp_path):
    random_photo(8, 8).save(tmp_path / "10.png")
    random_photo(8, 8).save(tmp_path / "2.jpg")
    (tmp_path / "notes.txt").write_text("not a photo")
    assert image_paths(tmp_path, ["10", "2"]) == [tmp_path / "10.png", tmp_path / "2.jpg"]
    with pytest.raises(InputError, match="no image for stem 'notes'"):
        image_paths(tmp_path, ["2", "notes"])
    random_photo(8, 8).save(tmp_path / "2.png")
    with pytest.raises(InputError, match=r"two files .*stem '2'"):
        image_paths(tmp_path, ["2"])
    with pytest.raises(InputError, match="does not exist"):
        image_paths(tmp_path / "nowhere", ["2"])
