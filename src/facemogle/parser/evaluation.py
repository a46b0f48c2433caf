"""Measuring a face parser: the validation IoU protocol, the quick IoU of training, the parse speed.

The validation protocol (``evaluate_parser``, the number on the model card) accumulates a confusion
matrix over every pixel of the validation images at their full resolution; per-class IoU =
TP / (TP + FP + FN) from those totals, mean IoU = mean over the classes with a non-empty union.
``quick_val_iou`` is the cheap progress signal of training (at the model's sample size).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from facemogle.errors import InputError
from facemogle.eval.metrics import confusion_matrix, iou_per_class
from facemogle.files import files_by_stem
from facemogle.labels import CLASS_NAMES, NUM_CLASSES
from facemogle.parser.inference import DEFAULT_BATCH_SIZE, PhotoParserMixin
from facemogle.parser.model import FaceParser

#: ``time_parse``: the photo side, the thread counts the card reports, the repeats (median taken).
TIMING_PHOTO_SIZE = 512
TIMING_THREADS = (1, 2)
TIMING_REPEATS = 10


def image_paths(images_dir: str | os.PathLike, stems: Sequence[str]) -> list[Path]:
    """The photo of each stem in ``images_dir`` (``facemogle.files.IMAGE_EXTENSIONS``), in the order given.

    Raises:
        InputError: a stem has no photo, or two photos share a stem.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(f"image folder {str(images_dir)!r} does not exist")
    found = files_by_stem(images_dir, stems=stems)
    missing = [stem for stem in stems if stem not in found]
    if missing:
        more = f" ({len(missing)} stems in all)" if len(missing) > 1 else ""
        raise InputError(f"no image for stem {missing[0]!r} in {str(images_dir)!r}{more}")
    return [found[stem] for stem in stems]


def evaluate_parser(
    parser: PhotoParserMixin,
    dataset_dir: str | os.PathLike,
    stems: Iterable[str],
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict:
    """Per-class and mean IoU of ``parser`` on ``dataset_dir/{images,masks}/<stem>.*``.

    Every image is parsed at its own resolution (the masks' resolution) and all pixels are
    accumulated into one confusion matrix before the IoUs are taken.

    Returns:
        ``{"per_class_iou": {name: iou}, "mean_iou": float, "num_images": int, "confusion": (C, C)}``.
    """
    from facemogle.masks import load_mask

    dataset_dir = Path(dataset_dir)
    stems = list(stems)
    photo_paths = image_paths(dataset_dir / "images", stems)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for start in range(0, len(stems), batch_size):
        chunk = stems[start : start + batch_size]
        predictions = parser.parse(photo_paths[start : start + batch_size], batch_size=batch_size)
        for stem, predicted in zip(chunk, predictions):
            target = load_mask(dataset_dir / "masks" / f"{stem}.png")
            confusion += confusion_matrix(predicted, target)
    ious = iou_per_class(confusion)
    return {
        "per_class_iou": {name: float(iou) for name, iou in zip(CLASS_NAMES, ious)},
        "mean_iou": float(np.nanmean(ious)),
        "num_images": len(stems),
        "confusion": confusion,
    }


@torch.no_grad()
def quick_val_iou(model: FaceParser, photos: torch.Tensor, masks: torch.Tensor, batch_size: int) -> np.ndarray:
    """Per-class IoU at the model's sample size (cheap progress signal; the card uses evaluate_parser).

    photos (N, S, S, 3) uint8, masks (N, S, S) uint8 official ids; leaves the model in training mode.
    """
    model.eval()
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for start in range(0, len(photos), batch_size):
        pixels = FaceParser.normalize(photos[start : start + batch_size].permute(0, 3, 1, 2))
        predicted = model(pixels, output_size=tuple(masks.shape[-2:])).argmax(1)
        confusion += confusion_matrix(predicted.numpy(), masks[start : start + batch_size].numpy())
    model.train()
    return iou_per_class(confusion)


def time_parse(parser: PhotoParserMixin, images_dir: str | os.PathLike, stem: str) -> float:
    """Median wall time of ``parser.parse`` on one photo resized to 512 x 512 (torch's current threads)."""
    with Image.open(image_paths(images_dir, [stem])[0]) as photo:
        photo = photo.convert("RGB").resize((TIMING_PHOTO_SIZE, TIMING_PHOTO_SIZE), Image.BILINEAR)
    parser.parse(photo)  # warm-up
    times = []
    for _ in range(TIMING_REPEATS):
        start = time.perf_counter()
        parser.parse(photo)
        times.append(time.perf_counter() - start)
    return float(np.median(times))
