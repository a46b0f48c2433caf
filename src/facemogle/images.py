"""Reading image files: the one place photos and masks are decoded from disk.

:func:`decode_image_file` opens a file the same way for every reader (the face parser, the
captioner, the training data, evaluation, masks), so the same limits hold everywhere:

* only regular files (a FIFO or a device would block or never end), not empty;
* a pixel cap checked from the header, before any pixel is decoded (``max_pixels``; Pillow's own
  decompression-bomb limit is turned into the same one-line error, never a traceback);
* every pixel decoded now, and a file that ends early is refused instead of zero-filled: Pillow
  raises on most short files, and a PNG whose compressed data ends cleanly but holds fewer rows than
  its header declares is caught by :func:`png_rows_missing`.

Errors are one line naming the file (``InputError`` or the ``error`` class given, e.g. ``MaskError``).
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import Union

from PIL import Image, UnidentifiedImageError

from facemogle.errors import InputError

#: Largest photo decoded (pixels): 8192 x 8192, far above any face photo, below Pillow's bomb limit.
MAX_IMAGE_PIXELS = 8192 * 8192
#: What a failing decode raises besides OSError.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, UnidentifiedImageError)

ImagePath = Union[str, os.PathLike]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
# Adam7 passes: (x start, y start, x step, y step)
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def decode_image_file(path: ImagePath, *, what: str = "image", max_pixels: int = MAX_IMAGE_PIXELS,
                      error: type[Exception] = InputError) -> Image.Image:
    """Open ``path`` and decode every pixel (any mode); see the module docstring for the checks.

    Args:
        what: the word the errors use for the file ("photo", "mask", ...).
        max_pixels: the pixel cap.
        error: the exception class of the refusals. ``FileNotFoundError``, ``IsADirectoryError``
            and ``PermissionError`` keep their standard meaning.
    """
    path = Path(path)
    name = f"{what} {path}"
    if path.exists() and not path.is_file() and not path.is_dir():
        raise error(f"{name} is not a regular file")
    with open(path, "rb") as handle:  # FileNotFoundError / IsADirectoryError / PermissionError as they are
        if os.fstat(handle.fileno()).st_size == 0:
            raise error(f"{name} is an empty file, not an image")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(handle)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise error(f"{name} declares an image too large to decode as a {what} (limit {max_pixels:,} "
                        f"pixels): {err}") from None
        except UnidentifiedImageError:
            raise error(f"{name} is not an image file that can be read (no known image format)") from None
        except DECODE_ERRORS as err:
            raise error(f"{name} is not an image file that can be read ({_one_line(err)})") from None
        load_checked(image, name=name, what=what, max_pixels=max_pixels, error=error)
        if image.format == "PNG":
            handle.seek(0)
            missing = png_rows_missing(handle.read())
            if missing:
                raise error(f"{name} is truncated: its PNG data ends {missing} bytes before the last row")
    return image


def load_checked(image: Image.Image, *, name: str, what: str = "image", max_pixels: int = MAX_IMAGE_PIXELS,
                 error: type[Exception] = InputError) -> Image.Image:
    """Decode an opened image's pixels after checking its size against ``max_pixels`` (and not
    empty); a decoding failure is one ``error`` line naming ``name``."""
    width, height = image.size
    if width * height > max_pixels:
        raise error(f"{name} is {width}x{height} = {width * height:,} pixels, more than the {what} limit of "
                    f"{max_pixels:,}; refusing to decode it")
    if width == 0 or height == 0:
        raise error(f"{name} is empty ({width}x{height} pixels)")
    try:
        image.load()
    except DECODE_ERRORS as err:
        raise error(f"{name} could not be decoded, the file is truncated or corrupt ({_one_line(err)})") from None
    return image


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def read_photo(source: Union[ImagePath, Image.Image], *, what: str = "photo", max_pixels: int = MAX_IMAGE_PIXELS,
               error: type[Exception] = InputError) -> Image.Image:
    """A photo as an RGB PIL image, from a path (:func:`decode_image_file`) or a PIL image."""
    if isinstance(source, Image.Image):
        width, height = source.size
        if width * height > max_pixels:
            raise error(f"the {what} is {width}x{height} pixels, more than the limit of {max_pixels:,}")
        return source.convert("RGB")
    if not isinstance(source, (str, os.PathLike)):
        raise error(f"cannot read a {what} from a {type(source).__name__}; give a path or a PIL image")
    return decode_image_file(source, what=what, max_pixels=max_pixels, error=error).convert("RGB")


def png_rows_missing(data: bytes) -> int:
    """How many bytes of filtered scanlines a PNG's image data lacks (0: complete, or not a PNG we
    can check). Pillow fills the rows of a PNG whose zlib stream ends early with zeros, silently."""
    if not data.startswith(_PNG_SIGNATURE):
        return 0
    position, header, compressed = len(_PNG_SIGNATURE), None, []
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        if kind == b"IHDR" and len(body) >= 13:
            header = struct.unpack(">IIBBBBB", body[:13])
        elif kind == b"IDAT":
            compressed.append(body)
        elif kind == b"IEND":
            break
        position += 12 + length
    if header is None:
        return 0
    width, height, depth, colour, _, _, interlace = header
    if colour not in _PNG_CHANNELS:
        return 0
    bits = depth * _PNG_CHANNELS[colour]

    def scanline_bytes(w: int, h: int) -> int:
        return 0 if w == 0 or h == 0 else h * (1 + (w * bits + 7) // 8)

    if interlace:
        expected = sum(scanline_bytes((width - x0 + dx - 1) // dx if width > x0 else 0,
                                      (height - y0 + dy - 1) // dy if height > y0 else 0)
                       for x0, y0, dx, dy in _ADAM7)
    else:
        expected = scanline_bytes(width, height)
    decompressor = zlib.decompressobj()
    produced = 0  # counted in pieces of at most 1 MiB: memory stays flat whatever the image size
    try:
        for part in compressed:
            pending = part
            while pending and produced <= expected:
                produced += len(decompressor.decompress(pending, 1 << 20))
                pending = decompressor.unconsumed_tail
            if produced > expected:
                break
    except zlib.error:
        return 0  # Pillow reports a corrupt stream itself
    return max(0, expected - produced)
