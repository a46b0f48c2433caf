"""Read, validate, convert and render face label maps, and build the condition images.

A *mask* (label map) is an ``(H, W)`` ``uint8`` array of class ids in the **official**
CelebAMask-HQ order (``facemogle.labels``). Users bring masks in several formats; ``load_mask``
turns every accepted one into that array and refuses anything else with a one-sentence
``MaskError``:

* **palette PNG** (PIL mode ``"P"``, the dataset files): the pixel values *are* the ids. They are
  never converted to luminance (``convert("L")`` turns ids into brightness values, a known bug of the
  reference demo). One exception: when every palette entry in use is a CelebAMask-HQ colour but at
  another index (a colour-rendered mask that an optimiser such as ``optipng`` re-encoded as a palette
  image), the colours are decoded instead.
* **greyscale** (``"L"``, ``"I"``, ``"I;16"``, ``"LA"``): pixel values are ids.
* **colour-rendered** (``"RGB"``/``"RGBA"``, alpha ignored): each colour must be a CelebAMask-HQ
  palette colour. Colours at most ``max_color_distance`` away (largest per-channel difference) from
  a palette colour are snapped to it, which repairs mild lossy artefacts (a JPEG saved at quality 95
  without chroma subsampling). The default bound, 24, is below half the smallest distance between
  two palette colours (51), so the snap is never ambiguous. Colours farther away are refused:
  JPEGs with chroma subsampling and resized renders blend neighbouring colours at every region
  border; raise the bound (up to 255 = snap everything) to accept such a file knowingly.
* **ids stored as RGB greys**: a 3-channel image whose three channels are equal everywhere with all
  values <= 18 is read as ids, not colours. The only grey palette colour is black (background), so
  the colour reading would refuse any such image with a non-zero value, and for an all-black image
  both readings agree (all background).
* ``order="bisenet"``: ids are in the face-parsing.PyTorch / BiSeNet order and are converted to the
  official order. Colour-rendered masks use the CelebAMask-HQ palette, which is always official, so
  the option is refused for them.

Ids read from a lossy JPEG are refused (JPEG changes grey values, hence ids, silently). Images are
capped at ``MAX_MASK_PIXELS`` before decoding (decompression-bomb guard).

From a mask, ``condition_images`` builds the ``NUM_CONDITIONS`` condition images of METHOD.md
section 2: index 0 the colour render (global mask), index ``1 + i`` the binary map of class ``i``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image

from facemogle.errors import InputError, MaskError
from facemogle.files import atomic_write
from facemogle.labels import (
    BISENET_TO_OFFICIAL,
    LABEL_ORDERS,
    NUM_CLASSES,
    OFFICIAL_TO_BISENET,
    PALETTE,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

MaskSource = Union[str, os.PathLike, Image.Image, np.ndarray]

MAX_ID: int = NUM_CLASSES - 1
#: Default bound for snapping near-palette colours (largest per-channel difference).
DEFAULT_MAX_COLOR_DISTANCE: int = 24
#: Largest mask accepted, in pixels (4096 x 4096), checked before any pixel is decoded.
MAX_MASK_SIDE: int = 4096
MAX_MASK_PIXELS: int = MAX_MASK_SIDE * MAX_MASK_SIDE
#: Largest image side ``check_size`` accepts by default.
MAX_GENERATION_SIDE: int = 2048

#: ``(NUM_CLASSES, 3)`` uint8, row = official class id.
PALETTE_ARRAY: np.ndarray = np.array(PALETTE, dtype=np.uint8)
#: The shipped example mask (our own drawing, scripts/make_example_mask.py): the README's demo mask.
EXAMPLE_MASK = Path(__file__).resolve().parent / "assets" / "masks" / "example.png"

_BISENET_TO_OFFICIAL_LUT = np.array(BISENET_TO_OFFICIAL, dtype=np.uint8)
_OFFICIAL_TO_BISENET_LUT = np.array(OFFICIAL_TO_BISENET, dtype=np.uint8)

_ID_MODES = ("L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N")
_COLOUR_MODES = ("RGB", "RGBA", "RGBX")
_LOSSY_FORMATS = ("JPEG", "MPO")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_mask(
    source: MaskSource,
    *,
    order: str = "official",
    max_color_distance: float = DEFAULT_MAX_COLOR_DISTANCE,
) -> np.ndarray:
    """Read a mask in any accepted format as official-order class ids.

    Args:
        source: a file path, a PIL image, or a numpy array, either ``(H, W)`` integer ids or
            ``(H, W, 3)`` ``uint8`` colours.
        order: label order of id masks, ``"official"`` or ``"bisenet"``.
        max_color_distance: colour-rendered masks only; largest per-channel difference between a
            pixel and the palette colour it is snapped to (0 = exact colours only, 255 = any colour).

    Returns:
        ``(H, W)`` ``uint8`` ids in ``0..NUM_CLASSES-1``, official order.

    Raises:
        MaskError: the source is not a readable mask (see the module docstring for the rules).
        FileNotFoundError / IsADirectoryError / PermissionError: the path cannot be opened.
    """
    _check_order(order)
    if not 0 <= max_color_distance <= 255:  # NaN fails this too
        raise InputError(f"max_color_distance must be >= 0 and <= 255, got {max_color_distance}")

    if isinstance(source, (str, os.PathLike)):
        return _load_mask_file(Path(source), order, max_color_distance)
    if isinstance(source, Image.Image):
        return _decode_image(source, order, max_color_distance, name="the image")
    if isinstance(source, np.ndarray):
        return _decode_array(source, order, max_color_distance, name="the array", lossy=False)
    raise MaskError(
        f"cannot read a mask from a {type(source).__name__}; "
        "expected a file path, a PIL image or a numpy array"
    )


def _load_mask_file(path: Path, order: str, max_color_distance: float) -> np.ndarray:
    from facemogle.images import decode_image_file  # the one image decoder (pixel cap, truncation)

    try:
        image = decode_image_file(path, what="mask", max_pixels=MAX_MASK_PIXELS, error=MaskError)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise  # standard meaning; the CLI reports them as one line
    except MaskError:
        raise
    except OSError as err:  # e.g. a path component is a file (NotADirectoryError)
        raise MaskError(f"cannot open {path}: {err.strerror or err}") from err
    with image:
        return _decode_image(image, order, max_color_distance, name=str(path))


def _decode_image(image: Image.Image, order: str, max_color_distance: float, *, name: str) -> np.ndarray:
    from facemogle.images import load_checked  # the one decoder's checks: pixel cap, empty, truncated

    load_checked(image, name=name, what="mask", max_pixels=MAX_MASK_PIXELS, error=MaskError)

    lossy = image.format in _LOSSY_FORMATS
    mode = image.mode
    if mode in ("P", "PA"):
        return _decode_palette_image(image, order, max_color_distance, name=name)
    if mode in _ID_MODES:
        band = image.getchannel(0) if mode == "LA" else image
        return _decode_array(np.asarray(band), order, max_color_distance, name=name, lossy=lossy)
    if mode in _COLOUR_MODES:
        rgb = np.asarray(image)[..., :3]  # alpha / padding channel ignored
        return _decode_array(rgb, order, max_color_distance, name=name, lossy=lossy)
    raise MaskError(
        f"{name} has image mode {mode!r}, which holds neither class ids nor palette colours "
        "(accepted: palette, greyscale, RGB, RGBA)"
    )


def _decode_palette_image(image: Image.Image, order: str, max_color_distance: float, *, name: str) -> np.ndarray:
    indices = np.asarray(image.getchannel(0) if image.mode == "PA" else image)  # (H, W) uint8
    palette = np.array(image.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)  # (P, 3)
    used = np.unique(indices)
    if used.max() < len(palette):
        used_colours = palette[used]  # (U, 3)
        is_dataset_palette = used.max() <= MAX_ID and np.array_equal(used_colours, PALETTE_ARRAY[used])
        is_palette_colour = (used_colours[:, None, :] == PALETTE_ARRAY[None]).all(-1).any(-1)
        if not is_dataset_palette and is_palette_colour.all():
            # A colour render stored as a palette image: the colours carry the labels, not the indices.
            return _decode_array(palette[indices], order, max_color_distance, name=name, lossy=False)
    return _decode_array(indices, order, max_color_distance, name=name, lossy=False)


def _decode_array(
    array: np.ndarray, order: str, max_color_distance: float, *, name: str, lossy: bool
) -> np.ndarray:
    if array.size == 0:
        raise MaskError(f"{name} is empty (shape {tuple(array.shape)})")
    if array.ndim == 2:
        return _ids_from_values(array, order, name=name, lossy=lossy)
    if array.ndim == 3 and array.shape[-1] == 3:
        if array.dtype != np.uint8:
            raise MaskError(f"{name} is an (H, W, 3) colour array of dtype {array.dtype}; colours must be uint8")
        if _is_grey_ids(array):
            return _ids_from_values(array[..., 0], order, name=name, lossy=lossy)
        if order != "official":
            raise MaskError(
                f"{name} is a colour-rendered mask (CelebAMask-HQ palette, always the official order); "
                f"order={order!r} applies only to id masks"
            )
        return _ids_from_colours(array, max_color_distance, name=name)
    raise MaskError(
        f"{name} has shape {tuple(array.shape)}; a mask is (H, W) class ids or (H, W, 3) palette colours"
    )


def _is_grey_ids(rgb: np.ndarray) -> bool:
    """True for ids stored as RGB greys: equal channels everywhere and every value <= MAX_ID."""
    red = rgb[..., 0]
    return bool(
        (red <= MAX_ID).all() and np.array_equal(red, rgb[..., 1]) and np.array_equal(red, rgb[..., 2])
    )


def _ids_from_values(values: np.ndarray, order: str, *, name: str, lossy: bool) -> np.ndarray:
    if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.integer):
        raise MaskError(f"{name} has dtype {values.dtype}; class ids must be integers (uint8 preferred)")
    if lossy:
        raise MaskError(
            f"{name} stores class ids in a lossy JPEG, which alters them; save id masks as PNG"
        )
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > MAX_ID:
        bad = np.unique(values[(values < 0) | (values > MAX_ID)])
        count = int(((values < 0) | (values > MAX_ID)).sum())
        shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
        raise MaskError(
            f"{name} has class ids outside 0..{MAX_ID}: {shown} ({count:,} pixels); "
            f"a mask holds ids of the {NUM_CLASSES} CelebAMask-HQ classes"
        )
    ids = values.astype(np.uint8)
    return from_order(ids, order)


def snap_to_palette(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel of ``rgb`` (H, W, 3) snapped to its nearest palette colour: (H, W) class ids and
    (H, W) the distance to that colour (the largest per-channel difference, 0..255)."""
    rgb = np.asarray(rgb)[..., :3]
    _, _, inverse, nearest, nearest_distance = _nearest_palette(rgb)
    return nearest[inverse].reshape(rgb.shape[:2]), nearest_distance[inverse].reshape(rgb.shape[:2])


def _nearest_palette(rgb: np.ndarray):
    """Per unique colour of ``rgb`` (H, W, 3): the colours (U, 3), their pixel counts, each pixel's
    index into them, and the nearest palette id and its distance (U,)."""
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    unique_codes, inverse, counts = np.unique(codes.ravel(), return_inverse=True, return_counts=True)
    unique_rgb = np.stack(
        [(unique_codes >> 16) & 0xFF, (unique_codes >> 8) & 0xFF, unique_codes & 0xFF], axis=-1
    )  # (U, 3)
    distance = np.abs(unique_rgb[:, None, :] - PALETTE_ARRAY[None].astype(np.int32)).max(-1)  # (U, NUM_CLASSES)
    nearest = distance.argmin(-1).astype(np.uint8)  # (U,)
    nearest_distance = distance.min(-1)  # (U,)
    return unique_rgb, counts, inverse, nearest, nearest_distance


def _ids_from_colours(rgb: np.ndarray, max_color_distance: float, *, name: str) -> np.ndarray:
    height, width, _ = rgb.shape
    unique_rgb, counts, inverse, nearest, nearest_distance = _nearest_palette(rgb)
    far = nearest_distance > max_color_distance  # (U,)
    if far.any():
        far_pixels = int(counts[far].sum())
        example = int(np.argmax(np.where(far, counts, -1)))  # the most frequent unknown colour
        where = int(np.argmax(inverse == example))
        row, column = divmod(where, width)
        colour = tuple(int(c) for c in unique_rgb[example])
        raise MaskError(
            f"{name} has {far_pixels:,} pixels ({100 * far_pixels / (height * width):.2f}%) whose colour "
            f"is more than {max_color_distance:g} from every CelebAMask-HQ palette colour, e.g. RGB {colour} "
            f"at row {row}, column {column}; give a colour-coded mask in that palette (PNG, not a "
            "subsampled JPEG or a resized render), an id mask, or a larger max_color_distance"
        )
    return nearest.astype(np.uint8)[inverse].reshape(height, width)


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_order(order: str) -> None:
    if order not in LABEL_ORDERS:
        raise InputError(f"unknown label order {order!r}; known: {', '.join(LABEL_ORDERS)}")


def _as_ids(ids: np.ndarray, *, batched: bool = False) -> np.ndarray:
    """Validate an id array produced by this module (or by a user) and return it as uint8."""
    ids = np.asarray(ids)
    allowed = (2, 3) if batched else (2,)
    if ids.ndim not in allowed:
        expected = "(H, W) or (B, H, W)" if batched else "(H, W)"
        raise MaskError(f"class ids must have shape {expected}, got {tuple(ids.shape)}")
    if ids.size == 0:
        raise MaskError(f"class ids are empty (shape {tuple(ids.shape)})")
    if ids.dtype == np.bool_ or not np.issubdtype(ids.dtype, np.integer):
        raise MaskError(f"class ids must be integers, got dtype {ids.dtype}")
    if int(ids.min()) < 0 or int(ids.max()) > MAX_ID:
        bad = np.unique(ids[(ids < 0) | (ids > MAX_ID)])
        raise MaskError(f"class ids outside 0..{MAX_ID}: {', '.join(str(int(v)) for v in bad[:8])}")
    return ids.astype(np.uint8, copy=False)


# --------------------------------------------------------------------------------------------
# Label orders
# --------------------------------------------------------------------------------------------


def to_order(ids: np.ndarray, order: str) -> np.ndarray:
    """Official ids -> ids in ``order`` (``"official"``: unchanged copy, ``"bisenet"``). Same shape, uint8."""
    _check_order(order)
    ids = _as_ids(ids, batched=True)
    return _OFFICIAL_TO_BISENET_LUT[ids] if order == "bisenet" else ids.copy()


def from_order(ids: np.ndarray, order: str) -> np.ndarray:
    """Ids in ``order`` -> official ids. Same shape, uint8."""
    _check_order(order)
    ids = _as_ids(ids, batched=True)
    return _BISENET_TO_OFFICIAL_LUT[ids] if order == "bisenet" else ids.copy()


# --------------------------------------------------------------------------------------------
# Resizing, rendering, saving
# --------------------------------------------------------------------------------------------


def resize_mask(ids: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``(H, W)`` id map to ``size`` (int = square, or ``(H, W)``).

    Uses PIL ``Image.NEAREST``, the sampler the reference applies to its palette masks, so the
    picked pixels (hence the condition images) match it exactly. Returns ``(H', W')`` uint8.
    """
    ids = _as_ids(ids)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if not all(isinstance(side, (int, np.integer)) and side > 0 for side in (height, width)):
        raise InputError(f"mask size must be a positive int or (height, width), got {size!r}")
    resized = Image.fromarray(ids).resize((int(width), int(height)), Image.NEAREST)
    return np.asarray(resized).copy()


def render_mask(ids: np.ndarray) -> np.ndarray:
    """Colour render in the CelebAMask-HQ palette: ``(H, W)`` ids -> ``(H, W, 3)`` uint8 (batches too)."""
    return PALETTE_ARRAY[_as_ids(ids, batched=True)]


def to_palette_image(ids: np.ndarray) -> Image.Image:
    """The ids as a PIL ``"P"`` image with the CelebAMask-HQ palette, like a dataset mask file."""
    ids = np.ascontiguousarray(_as_ids(ids))
    height, width = ids.shape
    image = Image.frombytes("P", (width, height), ids.tobytes())
    image.putpalette(PALETTE_ARRAY.ravel().tolist())
    return image


def save_mask(ids: np.ndarray, path: str | os.PathLike, *, to: str = "ids") -> Path:
    """Write ``ids`` as a PNG: ``to="ids"`` a palette PNG (official ids), ``to="color"`` an RGB render."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"masks are written as lossless PNG; give an output path ending in .png, not {path.name!r}")
    if to == "ids":
        image = to_palette_image(ids)
    elif to == "color":
        image = Image.fromarray(render_mask(_as_ids(ids)))
    else:
        raise InputError(f"unknown mask output {to!r}; choose 'ids' or 'color'")
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


# --------------------------------------------------------------------------------------------
# Queries and model inputs
# --------------------------------------------------------------------------------------------


def present_classes(ids: np.ndarray) -> list[int]:
    """Sorted official ids that occur in ``ids``."""
    counts = np.bincount(_as_ids(ids, batched=True).ravel(), minlength=NUM_CLASSES)
    return [int(class_id) for class_id in np.flatnonzero(counts)]


def class_fractions(ids: np.ndarray) -> dict[int, float]:
    """``{class id: fraction of pixels}`` for the classes present, in id order."""
    counts = np.bincount(_as_ids(ids, batched=True).ravel(), minlength=NUM_CLASSES)
    total = counts.sum()
    return {int(class_id): float(counts[class_id] / total) for class_id in np.flatnonzero(counts)}


def condition_images(ids: np.ndarray) -> "torch.Tensor":
    """The ``NUM_CONDITIONS`` condition images of a mask (METHOD.md section 2).

    Args:
        ids: ``(H, W)`` or ``(B, H, W)`` official ids.

    Returns:
        ``(NUM_CONDITIONS, 3, H, W)`` (or ``(B, NUM_CONDITIONS, 3, H, W)``) uint8: index 0 the colour
        render (global mask), index ``1 + i`` 255 where ``ids == i`` else 0, three equal channels.
    """
    import torch

    ids = torch.from_numpy(_as_ids(ids, batched=True).astype(np.int64))  # (..., H, W)
    palette = torch.from_numpy(PALETTE_ARRAY)  # (NUM_CLASSES, 3)
    global_mask = palette[ids].movedim(-1, -3).unsqueeze(-4)  # (..., 1, 3, H, W)
    classes = torch.arange(NUM_CLASSES).view(NUM_CLASSES, 1, 1)  # (NUM_CLASSES, 1, 1)
    local_masks = (ids.unsqueeze(-3) == classes).to(torch.uint8) * 255  # (..., NUM_CLASSES, H, W)
    local_masks = local_masks.unsqueeze(-3).expand(*local_masks.shape[:-2], 3, *local_masks.shape[-2:])
    return torch.cat([global_mask, local_masks], dim=-4).contiguous()  # (..., NUM_CONDITIONS, 3, H, W)


def check_size(
    height: int, width: int, *, multiple_of: int, max_side: int = MAX_GENERATION_SIDE
) -> tuple[int, int]:
    """Check an output size for a model that needs sides that are multiples of ``multiple_of``.

    Returns ``(height, width)`` as ints; raises ``InputError`` naming the problem and a valid size.
    """
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, (int, np.integer)) or multiple_of < 1:
        raise InputError(f"multiple_of must be a positive integer, got {multiple_of!r}")
    for label, side in (("height", height), ("width", width)):
        if isinstance(side, bool) or not isinstance(side, (int, np.integer)):
            raise InputError(f"{label} must be an integer number of pixels, got {side!r}")
        if side < multiple_of:
            raise InputError(f"{label} {side} is too small; it must be a positive multiple of {multiple_of}")
        if side % multiple_of:
            nearest = max(multiple_of, round(side / multiple_of) * multiple_of)
            raise InputError(
                f"{label} {side} is not a multiple of {multiple_of}, which the model needs (try {nearest})"
            )
        if side > max_side:
            raise InputError(f"{label} {side} is larger than the supported maximum of {max_side} pixels")
    return int(height), int(width)

