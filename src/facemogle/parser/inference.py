"""Photos in, ids out: the ``parse`` API every face parser shares, and the photo conventions.

Every parser (``FaceParser`` in ``facemogle.parser.model``, ``BiSeNetParser`` in
``facemogle.parser.bisenet``) mixes in ``PhotoParserMixin`` and gives two things: the model input of
a batch of photos (``_pixel_values``) and logits in the official CelebAMask-HQ label order
(``_official_logits``). ``parse(images) -> (B, H, W) uint8`` then batches the photos, runs in eval
mode, upsamples each photo's logits (bilinear) to the photo's own size and takes the argmax.
"""

from __future__ import annotations

import os
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from facemogle.errors import InputError

DEFAULT_BATCH_SIZE = 8
RGB_CHANNELS = 3

ImageSource = Union[Image.Image, str, os.PathLike]


def open_image(source: ImageSource) -> Image.Image:
    """An RGB PIL image from a PIL image or a path (:func:`facemogle.images.read_photo`: pixel cap,
    truncated files refused); unreadable files raise ``InputError``."""
    from facemogle.images import read_photo

    if not isinstance(source, (Image.Image, str, os.PathLike)):
        raise InputError(f"cannot parse a {type(source).__name__}; give a PIL image or an image path")
    return read_photo(source)


def resize_photo(image: Image.Image, size: int) -> np.ndarray:
    """``(size, size, 3)`` uint8 RGB: bilinear (antialiased) resize, the parser's input convention.

    The training recipe pre-decodes its data with this same function.
    """
    return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)


class PhotoParserMixin:
    """``parse``: photos -> official ids. Subclasses give the input tensor and official-order logits."""

    def _pixel_values(self, photos: list[Image.Image]) -> torch.Tensor:
        """(B, 3, S, S) float model input."""
        raise NotImplementedError

    def _official_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, NUM_CLASSES, h, w) logits, channel ``k`` = official class ``k``."""
        raise NotImplementedError

    def _photo_logits(self, photos: list[Image.Image]) -> torch.Tensor:
        """(B, NUM_CLASSES, h, w) official-order scores of a batch of photos (argmax = the ids)."""
        return self._official_logits(self._pixel_values(photos))

    @torch.no_grad()
    def parse(
        self, images: ImageSource | Sequence[ImageSource], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> np.ndarray | list[np.ndarray]:
        """Face masks of photos, official CelebAMask-HQ ids.

        Args:
            images: a list of PIL images / image paths (any sizes), or a single one.
            batch_size: photos per forward pass.

        Returns:
            ``(B, H, W)`` uint8 ids for a list of same-size photos (a list of ``(H_i, W_i)`` arrays
            when sizes differ); ``(H, W)`` for a single photo. Deterministic; runs in eval mode.
        """
        single = isinstance(images, (Image.Image, str, os.PathLike))
        sources = [images] if single else list(images)
        if not sources:
            raise InputError("parse needs at least one image")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        was_training = self.training
        self.eval()
        try:
            masks = []
            for start in range(0, len(sources), batch_size):
                photos = [open_image(source) for source in sources[start : start + batch_size]]
                logits = self._photo_logits(photos).float()  # (b, C, h, w)
                for photo, photo_logits in zip(photos, logits):
                    masks.append(logits_to_ids(photo_logits, (photo.height, photo.width)))
        finally:
            self.train(was_training)
        if single:
            return masks[0]
        if len({mask.shape for mask in masks}) == 1:
            return np.stack(masks)
        return masks


def logits_to_ids(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """``(C, h, w)`` logits -> ``(H, W)`` uint8 argmax ids after a bilinear upsampling to ``size``."""
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    # ``max(...).indices`` gives the argmax ids several times faster than ``argmax`` on CPU.
    return logits.max(dim=0).indices.to(torch.uint8).cpu().numpy()
