"""The one image decoder: regular files only, a pixel cap before decoding, short files refused."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from facemogle.errors import InputError, MaskError
from facemogle.images import MAX_IMAGE_PIXELS, decode_image_file, png_rows_missing, read_photo


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png(width: int, height: int, rows: int | None = None, interlace: int = 0) -> bytes:
    """An 8-bit RGB PNG whose zlib stream is complete but holds only ``rows`` scanlines."""
    rows = height if rows is None else rows
    raw = b"".join(b"\x00" + bytes([(7 * y + x) % 256 for x in range(3 * width)]) for y in range(rows))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def photo_bytes(fmt: str = "PNG") -> bytes:
    pixels = (np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def test_a_whole_image_decodes(tmp_path):
    (tmp_path / "ok.png").write_bytes(png(6, 5))
    image = decode_image_file(tmp_path / "ok.png")
    assert image.size == (6, 5) and png_rows_missing(png(6, 5)) == 0
    (tmp_path / "ok.jpg").write_bytes(photo_bytes("JPEG"))
    assert read_photo(tmp_path / "ok.jpg").size == (40, 48)


def test_a_png_with_rows_missing_is_refused_not_zero_filled(tmp_path):
    short = png(6, 5, rows=2)  # a clean zlib stream with 2 of 5 rows: Pillow fills 3 rows with zeros
    assert png_rows_missing(short) == 3 * (1 + 18)
    (tmp_path / "short.png").write_bytes(short)
    with pytest.raises(InputError, match=r"short.png is truncated: its PNG data ends 57 bytes before the last row"):
        read_photo(tmp_path / "short.png")


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_files_cut_short_are_refused(tmp_path, fmt, keep):
    data = photo_bytes(fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError, match="cut"):
        read_photo(path)


def test_the_pixel_cap_is_checked_before_decoding(tmp_path):
    header = struct.pack(">IIBBBBB", 9000, 9000, 8, 2, 0, 0, 0)  # 81 M pixels declared, no data
    (tmp_path / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    with pytest.raises(InputError, match=f"9000x9000 = 81,000,000 pixels, more than the photo limit of {MAX_IMAGE_PIXELS:,}"):
        read_photo(tmp_path / "huge.png")
    with pytest.raises(InputError, match="more than the limit of 100"):
        read_photo(Image.new("RGB", (20, 20)), max_pixels=100)


def test_not_regular_empty_or_not_an_image(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(InputError, match="pipe.png is not a regular file"):
        read_photo(tmp_path / "pipe.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty.png is an empty file"):
        read_photo(tmp_path / "empty.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(InputError, match="notes.png is not an image file that can be read"):
        read_photo(tmp_path / "notes.png")
    with pytest.raises(FileNotFoundError):
        read_photo(tmp_path / "missing.png")
    with pytest.raises(InputError, match="from a list"):
        read_photo([1, 2])


def test_masks_and_the_parser_use_it(tmp_path):
    from facemogle.masks import load_mask
    from facemogle.parser.inference import open_image

    (tmp_path / "short.png").write_bytes(png(6, 5, rows=2))
    with pytest.raises(MaskError, match="short.png is truncated"):
        load_mask(tmp_path / "short.png")
    with pytest.raises(InputError, match="short.png is truncated"):
        open_image(tmp_path / "short.png")


def test_interlaced_sizes_are_computed_per_pass():
    # Adam7 passes of an 8 x 8 image: widths 1,1,2,2,4,4,8 and heights 1,1,1,2,2,4,4 -> 7 rows + bytes
    full = sum(h * (1 + 3 * w) for w, h in ((1, 1), (1, 1), (2, 1), (2, 2), (4, 2), (4, 4), (8, 4)))
    raw = b"\x00" * full
    header = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 1)
    whole = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    assert png_rows_missing(whole) == 0
    cut = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw[:-10])) + chunk(b"IEND", b"")
    assert png_rows_missing(cut) == 10
