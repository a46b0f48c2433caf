"""Reading the photo of a photo/mask pair, and bringing it to the mask's size.

``describe`` takes the photo as a path, a PIL image or an ``(H, W, 3)`` uint8 array; MM-CelebA-HQ
pairs 1024-pixel photos with 512-pixel masks, so a larger photo is box-filtered down to the mask.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from facemogle.errors import InputError

ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray]
_PHOTO_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def read_image(path: str | os.PathLike) -> Image.Image:
    """Read a photo as an RGB PIL image (:func:`facemogle.images.read_photo`); an unreadable,
    truncated or oversized file raises ``InputError`` naming it."""
    from facemogle.images import read_photo

    path = Path(path)
    if not path.is_file():
        raise InputError(f"photo {path} does not exist or is not a file")
    return read_photo(path)


def rgb_at_mask_size(image: ImageSource, shape: tuple[int, int]) -> np.ndarray:
    """The photo as an ``(H, W, 3)`` uint8 RGB array at the mask's ``shape`` (box-filtered).

    Raises:
        InputError: an unreadable photo, a wrong array or type, or an aspect ratio other than the mask's.
    """
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise InputError(f"the photo must be an (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}")
        if image.shape[:2] == tuple(shape):
            return image
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise InputError(f"cannot read a photo from a {type(image).__name__}")
    height, width = shape
    if abs(image.width * height - image.height * width) > max(image.width, width):
        raise InputError(
            f"the photo is {image.width}x{image.height} but the mask is {width}x{height}: "
            "their aspect ratios differ, so they cannot be a pair"
        )
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.BOX)
    return np.asarray(image)
