"""facemogle.masks: reading every mask format, refusing bad ones, conversions, condition images."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from facemogle.errors import InputError, MaskError
from facemogle.labels import NUM_CLASSES, NUM_CONDITIONS, PALETTE, class_id
from facemogle.masks import (
    DEFAULT_MAX_COLOR_DISTANCE,
    EXAMPLE_MASK,
    MAX_MASK_PIXELS,
    check_size,
    condition_images,
    from_order,
    load_mask,
    present_classes,
    render_mask,
    resize_mask,
    save_mask,
    to_order,
    to_palette_image,
)

MAX_ID = NUM_CLASSES - 1

# Classes of ../shared/data/fixtures/masks/27000.png (GOLDEN.md, Golden B).
CLASSES_27000 = [0, 1, 2, 4, 5, 6, 7, 9, 11, 12, 13, 17]


def _ids(*names: str) -> list[int]:
    return [class_id(name) for name in names]


def _small_ids() -> np.ndarray:
    """A 6x8 id map using every class id at least once (row-major 0..18, then hair)."""
    ids = np.full(6 * 8, class_id("hair"), dtype=np.uint8)
    ids[:NUM_CLASSES] = np.arange(NUM_CLASSES)
    return ids.reshape(6, 8)


def _png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _png_declaring_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height greyscale pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------------
# Real fixtures
# --------------------------------------------------------------------------------------------


def test_palette_masks_decode_to_their_pixel_values(fixtures_dir):
    for name in ("27000.png", "27007.png", "29980.png"):
        path = fixtures_dir / "masks" / name
        with Image.open(path) as image:
            assert image.mode == "P"
            raw = np.asarray(image).copy()
        ids = load_mask(path)
        assert ids.dtype == np.uint8 and ids.shape == (512, 512)
        np.testing.assert_array_equal(ids, raw)
        assert ids.max() <= MAX_ID
        assert set(_ids("background", "face skin", "nose", "hair", "neck", "upper lip", "lower lip")) <= set(
            present_classes(ids)
        )
    assert present_classes(load_mask(fixtures_dir / "masks/27000.png")) == CLASSES_27000


def test_27000_has_its_parts_where_a_face_has_them(fixtures_dir):
    ids = load_mask(fixtures_dir / "masks/27000.png")

    def centre(name: str) -> tuple[float, float]:
        rows, columns = np.nonzero(ids == class_id(name))
        return rows.mean(), columns.mean()

    assert centre("hair")[0] < centre("nose")[0] < centre("upper lip")[0] < centre("lower lip")[0]
    # CelebAMask-HQ "left" is the person's left: the image's right.
    assert centre("left eye")[1] > centre("right eye")[1]
    assert centre("left eyebrow")[0] < centre("left eye")[0]


def test_greyscale_maskgan_samples_decode(fixtures_dir):
    for path in sorted((fixtures_dir / "maskgan-samples").glob("*.png")):
        with Image.open(path) as image:
            assert image.mode == "L"
            raw = np.asarray(image).copy()
        ids = load_mask(path)
        np.testing.assert_array_equal(ids, raw)
        assert set(_ids("face skin", "nose", "hair", "left eye", "right eye")) <= set(present_classes(ids))


def test_colour_coded_masks_round_trip_exactly(fixtures_dir):
    paths = sorted((fixtures_dir / "masks").glob("color-coded-*.png"))
    assert len(paths) == 2
    for path in paths:
        with Image.open(path) as image:
            assert image.mode == "RGB"
            pixels = np.asarray(image).copy()
        ids = load_mask(path)
        np.testing.assert_array_equal(render_mask(ids), pixels)
        assert set(_ids("face skin", "hair", "nose", "cloth")) <= set(present_classes(ids))
    assert class_id("hat") in present_classes(load_mask(fixtures_dir / "masks/color-coded-2.png"))


def test_face_parsing_order_masks_convert_both_ways(fixtures_dir):
    paths = sorted((fixtures_dir / "face-parsing-order").glob("*_mask.png"))
    assert len(paths) == 9
    for path in paths:
        with Image.open(path) as image:
            raw = np.asarray(image).copy()
        ids = load_mask(path, order="bisenet")
        np.testing.assert_array_equal(to_order(ids, "bisenet"), raw)  # bisenet -> official -> bisenet
        # BiSeNet hair (17) is official hair (13); BiSeNet skin (1) stays 1; BiSeNet nose (10) is 2.
        np.testing.assert_array_equal(ids == class_id("hair"), raw == 17)
        np.testing.assert_array_equal(ids == class_id("nose"), raw == 10)
        np.testing.assert_array_equal(ids == class_id("face skin"), raw == 1)
        # Read as official order the same file is a different (wrong) map: the option matters.
        assert not np.array_equal(load_mask(path), ids)


def test_all_fixture_masks_decode(fixtures_dir):
    decoded = 0
    for path in sorted(fixtures_dir.rglob("*.png")):
        order = "bisenet" if path.parent.name == "face-parsing-order" else "official"
        ids = load_mask(path, order=order)
        assert ids.ndim == 2 and ids.dtype == np.uint8 and ids.max() <= MAX_ID
        decoded += 1
    assert decoded == 18


def test_jpeg_copy_of_a_colour_mask(fixtures_dir, tmp_path):
    path = fixtures_dir / "masks/color-coded-1.png"
    ids = load_mask(path)
    with Image.open(path) as image:
        image.save(tmp_path / "high.jpg", quality=95, subsampling=0)  # 4:4:4, every colour within the bound
        image.save(tmp_path / "typical.jpg", quality=90)  # 4:2:0: borders blend into non-palette colours
    np.testing.assert_array_equal(load_mask(tmp_path / "high.jpg"), ids)

    with pytest.raises(MaskError, match=r"pixels \([0-9.]+%\) whose colour is more than 24 from every"):
        load_mask(tmp_path / "typical.jpg")
    snapped = load_mask(tmp_path / "typical.jpg", max_color_distance=255)
    agreement = (snapped == ids).mean()
    assert 0.97 < agreement < 1.0


# --------------------------------------------------------------------------------------------
# Parity with the reference condition images
# --------------------------------------------------------------------------------------------


def test_condition_images_match_golden_b(fixtures_dir, golden_dir):
    golden = load_file(str(golden_dir / "golden_B_train_forward.safetensors"))["condition_images_u8"]
    assert golden.shape == (2, NUM_CONDITIONS, 3, 64, 64) and golden.dtype == torch.uint8
    ids = resize_mask(load_mask(fixtures_dir / "masks/27000.png"), 64)
    assert torch.equal(condition_images(ids), golden[0])
    assert torch.equal(golden[1], golden[0].flip(-1))  # item 1 = item 0 mirrored left-right
    batch = condition_images(np.stack([ids, ids[:, ::-1]]))
    assert torch.equal(batch, golden)


def test_condition_images_match_golden_c_128(fixtures_dir, golden_dir):
    golden = load_file(str(golden_dir / "golden_C_generate_128_mogle_t_div1000.safetensors"))["condition_images_u8"]
    ids = resize_mask(load_mask(fixtures_dir / "masks/27000.png"), 128)
    assert present_classes(ids) == CLASSES_27000
    assert torch.equal(condition_images(ids), golden)


def test_local_maps_of_27000_partition_the_image(fixtures_dir):
    ids = load_mask(fixtures_dir / "masks/27000.png")
    conditions = condition_images(ids)  # (20, 3, 512, 512)
    assert conditions.shape == (NUM_CONDITIONS, 3, 512, 512) and conditions.dtype == torch.uint8
    local = conditions[1:]
    assert set(local.unique().tolist()) == {0, 255}
    assert torch.equal(local, local[:, :1].expand_as(local))  # three identical channels
    binary = local[:, 0] == 255  # (19, H, W)
    assert torch.equal(binary.sum(0), torch.ones(512, 512, dtype=torch.long))  # union = all, pairwise disjoint
    for class_index in range(NUM_CLASSES):
        assert torch.equal(binary[class_index], torch.from_numpy(ids == class_index))
    nonempty = [i for i in range(NUM_CLASSES) if binary[i].any()]
    assert nonempty == CLASSES_27000
    assert torch.equal(conditions[0].permute(1, 2, 0), torch.from_numpy(render_mask(ids)))


# --------------------------------------------------------------------------------------------
# Formats (synthetic)
# --------------------------------------------------------------------------------------------


def test_path_pil_image_and_array_give_the_same_ids(tmp_path):
    ids = _small_ids()
    save_mask(ids, tmp_path / "m.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png"), ids)
    np.testing.assert_array_equal(load_mask(str(tmp_path / "m.png")), ids)
    np.testing.assert_array_equal(load_mask(to_palette_image(ids)), ids)
    np.testing.assert_array_equal(load_mask(ids), ids)
    np.testing.assert_array_equal(load_mask(ids.astype(np.int64)), ids)
    np.testing.assert_array_equal(load_mask(render_mask(ids)), ids)


def test_palette_values_are_ids_not_luminance():
    ids = _small_ids()
    image = to_palette_image(ids)
    np.testing.assert_array_equal(load_mask(image), ids)
    assert not np.array_equal(np.asarray(image.convert("L")), ids)  # the reference demo's bug


def test_palette_image_with_another_palette_still_holds_ids():
    ids = _small_ids()
    image = to_palette_image(ids)
    image.putpalette([value for grey in range(256) for value in (grey, grey, grey)])
    np.testing.assert_array_equal(load_mask(image), ids)


def test_colour_render_stored_as_palette_image_is_decoded_by_colour():
    ids = _small_ids()
    shuffled = np.random.default_rng(0).permutation(NUM_CLASSES)  # palette slot -> class
    slot_of_class = np.argsort(shuffled)
    image = Image.fromarray(slot_of_class[ids].astype(np.uint8)).convert("L")
    image = Image.frombytes("P", image.size, image.tobytes())
    image.putpalette([c for slot in range(NUM_CLASSES) for c in PALETTE[shuffled[slot]]])
    np.testing.assert_array_equal(load_mask(image), ids)


def test_wide_greyscale_ids(tmp_path):
    ids = _small_ids()
    image = Image.fromarray(ids.astype(np.uint16))
    assert image.mode == "I;16"
    image.save(tmp_path / "wide.png")  # a 16-bit greyscale PNG
    np.testing.assert_array_equal(load_mask(tmp_path / "wide.png"), ids)
    image = Image.fromarray(ids.astype(np.int32))
    assert image.mode == "I"
    np.testing.assert_array_equal(load_mask(image), ids)


def test_rgba_colour_mask_ignores_alpha():
    ids = _small_ids()
    rgba = np.concatenate([render_mask(ids), np.full((*ids.shape, 1), 128, np.uint8)], axis=-1)
    np.testing.assert_array_equal(load_mask(Image.fromarray(rgba)), ids)


def test_near_palette_colours_snap_within_the_bound():
    ids = _small_ids()
    colours = render_mask(ids).astype(np.int16)
    noise = np.random.default_rng(1).integers(-DEFAULT_MAX_COLOR_DISTANCE, DEFAULT_MAX_COLOR_DISTANCE + 1, colours.shape)
    noisy = np.clip(colours + noise, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(load_mask(noisy), ids)
    with pytest.raises(MaskError, match="more than 0 from every"):
        load_mask(noisy, max_color_distance=0)


def test_ids_stored_as_rgb_greys_are_ids():
    ids = _small_ids()
    grey = np.repeat(ids[..., None], 3, axis=-1)
    np.testing.assert_array_equal(load_mask(grey), ids)
    np.testing.assert_array_equal(load_mask(grey, order="bisenet"), from_order(ids, "bisenet"))
    black = np.zeros((4, 4, 3), np.uint8)  # all background under either reading
    np.testing.assert_array_equal(load_mask(black), np.zeros((4, 4), np.uint8))


def test_bisenet_order_is_refused_for_colour_masks():
    with pytest.raises(MaskError, match="colour-rendered mask .* applies only to id masks"):
        load_mask(render_mask(_small_ids()), order="bisenet")


# --------------------------------------------------------------------------------------------
# Bad inputs: each one is a MaskError (or InputError) with a message naming the problem
# --------------------------------------------------------------------------------------------


def test_non_image_bytes(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(MaskError, match="notes.png is not an image file that can be read"):
        load_mask(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(MaskError, match="empty.png is an empty file"):
        load_mask(path)


def test_truncated_png(tmp_path):
    data = _png_bytes(Image.fromarray(np.random.default_rng(2).integers(0, NUM_CLASSES, (256, 256), dtype=np.uint8)))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MaskError, match="cut.png could not be decoded, the file is truncated or corrupt"):
        load_mask(path)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_mask(tmp_path / "absent.png")


def test_unknown_colours_give_count_and_example():
    colours = render_mask(np.zeros((10, 10), np.uint8))
    colours[2:4, 5:8] = (255, 255, 255)  # 6 white pixels, white is not a palette colour
    with pytest.raises(MaskError, match=r"has 6 pixels \(6.00%\) whose colour .* e.g. RGB \(255, 255, 255\) at row 2, column 5"):
        load_mask(colours)


def test_photo_is_refused_as_a_colour_mask():
    photo = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with pytest.raises(MaskError, match="CelebAMask-HQ palette colour"):
        load_mask(photo)


def test_id_19_is_refused_naming_it(tmp_path):
    ids = _small_ids()
    ids[0, :3] = NUM_CLASSES
    Image.fromarray(ids).save(tmp_path / "nineteen.png")
    with pytest.raises(MaskError, match=r"class ids outside 0\.\.18: 19 \(3 pixels\)"):
        load_mask(tmp_path / "nineteen.png")


def test_negative_ids_are_refused():
    with pytest.raises(MaskError, match="outside 0..18: -1"):
        load_mask(np.full((4, 4), -1, np.int16))


def test_grey_rgb_above_18_is_not_taken_as_ids():
    with pytest.raises(MaskError, match=r"RGB \(40, 40, 40\)"):
        load_mask(np.full((4, 4, 3), 40, np.uint8))


@pytest.mark.parametrize("shape", [(1, 8, 8, 3), (8,), (8, 8, 4), (8, 8, 1)])
def test_wrong_array_shapes(shape):
    with pytest.raises(MaskError, match=r"has shape .*; a mask is \(H, W\) class ids or \(H, W, 3\)"):
        load_mask(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.bool_])
def test_wrong_dtype_ids(dtype):
    with pytest.raises(MaskError, match="dtype"):
        load_mask(np.zeros((8, 8), dtype))


def test_wrong_dtype_colours():
    with pytest.raises(MaskError, match="colours must be uint8"):
        load_mask(np.zeros((8, 8, 3), np.int32))


def test_empty_array():
    with pytest.raises(MaskError, match="empty"):
        load_mask(np.zeros((0, 8), np.uint8))


def test_unsupported_source_type():
    with pytest.raises(MaskError, match="cannot read a mask from a list"):
        load_mask([[0, 1], [1, 0]])


def test_declared_size_above_the_mask_limit(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(_png_declaring_size(5000, 5000))  # 25 M pixels: under PIL's own guard, over ours
    with pytest.raises(MaskError, match=f"5000x5000 = 25,000,000 pixels, more than the mask limit of {MAX_MASK_PIXELS:,}"):
        load_mask(path)


def test_decompression_bomb(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_declaring_size(100_000, 100_000))
    with pytest.raises(MaskError, match=f"too large to decode as a mask \\(limit {MAX_MASK_PIXELS:,} pixels"):
        load_mask(path)


def test_greyscale_jpeg_ids_are_refused(tmp_path):
    Image.fromarray(_small_ids()).save(tmp_path / "ids.jpg", quality=95)
    with pytest.raises(MaskError, match="lossy JPEG"):
        load_mask(tmp_path / "ids.jpg")


def test_unsupported_image_mode():
    with pytest.raises(MaskError, match="image mode 'F'"):
        load_mask(Image.fromarray(np.zeros((4, 4), np.float32)))


def test_bad_options():
    with pytest.raises(InputError, match="unknown label order 'celeba'"):
        load_mask(_small_ids(), order="celeba")
    with pytest.raises(InputError, match="max_color_distance must be >= 0"):
        load_mask(_small_ids(), max_color_distance=-1)


# --------------------------------------------------------------------------------------------
# Conversions and helpers
# --------------------------------------------------------------------------------------------


def test_order_conversion_round_trip_and_values():
    every_id = np.arange(NUM_CLASSES, dtype=np.uint8).reshape(1, -1)
    bisenet = to_order(every_id, "bisenet")
    assert bisenet[0, class_id("hair")] == 17 and bisenet[0, class_id("nose")] == 10
    assert bisenet[0, class_id("cloth")] == 16 and bisenet[0, class_id("background")] == 0
    np.testing.assert_array_equal(from_order(bisenet, "bisenet"), every_id)
    np.testing.assert_array_equal(to_order(every_id, "official"), every_id)
    with pytest.raises(MaskError, match="outside 0..18: 19"):
        to_order(np.array([[19]]), "bisenet")


def test_resize_mask_is_nearest_neighbour():
    ids = np.array([[1, 2], [3, 4]], np.uint8)
    np.testing.assert_array_equal(resize_mask(ids, 4), np.kron(ids, np.ones((2, 2), np.uint8)))
    tall = resize_mask(_small_ids(), (32, 48))
    assert tall.shape == (32, 48) and tall.dtype == np.uint8
    assert set(np.unique(tall)) <= set(np.unique(_small_ids()))
    with pytest.raises(InputError, match="positive int"):
        resize_mask(ids, 0)


def test_resize_mask_picks_the_pixels_pil_picks(fixtures_dir):
    with Image.open(fixtures_dir / "masks/27000.png") as image:
        reference = np.asarray(image.resize((96, 80), Image.NEAREST))
    np.testing.assert_array_equal(resize_mask(load_mask(fixtures_dir / "masks/27000.png"), (80, 96)), reference)


def test_render_and_palette_image():
    ids = _small_ids()
    colours = render_mask(ids)
    assert colours.shape == (6, 8, 3) and colours.dtype == np.uint8
    assert [tuple(colour) for colour in colours.reshape(-1, 3)[:NUM_CLASSES]] == list(PALETTE)
    image = to_palette_image(ids)
    assert image.mode == "P" and image.size == (8, 6)
    np.testing.assert_array_equal(np.asarray(image), ids)
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), colours)


def test_save_mask_round_trips(tmp_path):
    ids = _small_ids()
    save_mask(ids, tmp_path / "ids.png", to="ids")
    save_mask(ids, tmp_path / "colour.png", to="color")
    with Image.open(tmp_path / "ids.png") as image:
        assert image.mode == "P"
        assert image.getpalette()[: 3 * NUM_CLASSES] == [c for colour in PALETTE for c in colour]
    with Image.open(tmp_path / "colour.png") as image:
        assert image.mode == "RGB"
    np.testing.assert_array_equal(load_mask(tmp_path / "ids.png"), ids)
    np.testing.assert_array_equal(load_mask(tmp_path / "colour.png"), ids)
    with pytest.raises(InputError, match="ending in .png"):
        save_mask(ids, tmp_path / "ids.jpg")
    with pytest.raises(InputError, match="choose 'ids' or 'color'"):
        save_mask(ids, tmp_path / "x.png", to="rgb")


def test_present_classes():
    assert present_classes(np.array([[13, 0], [13, 2]], np.uint8)) == [0, 2, 13]
    assert present_classes(_small_ids()) == list(range(NUM_CLASSES))


def test_condition_images_small_and_batched():
    ids = np.array([[0, 13], [1, 1]], np.uint8)
    conditions = condition_images(ids)
    assert conditions.shape == (NUM_CONDITIONS, 3, 2, 2) and conditions.dtype == torch.uint8
    assert conditions[0, :, 0, 1].tolist() == list(PALETTE[13])
    assert conditions[1 + 13, 0].tolist() == [[0, 255], [0, 0]]
    assert conditions[1 + 0, 2].tolist() == [[255, 0], [0, 0]]  # background has its own local map
    assert conditions[1 + 1, 1].tolist() == [[0, 0], [255, 255]]
    assert int(conditions[1 + class_id("hat")].sum()) == 0
    batch = condition_images(np.stack([ids, ids.T]))
    assert batch.shape == (2, NUM_CONDITIONS, 3, 2, 2)
    assert torch.equal(batch[1], condition_images(ids.T))
    with pytest.raises(MaskError, match="shape"):
        condition_images(np.zeros((1, 1, 2, 2), np.uint8))


def test_check_size():
    assert check_size(512, 768, multiple_of=16) == (512, 768)
    with pytest.raises(InputError, match="height 500 is not a multiple of 16, which the model needs \\(try 496\\)"):
        check_size(500, 512, multiple_of=16)
    with pytest.raises(InputError, match="width 0 is too small; it must be a positive multiple of 16"):
        check_size(512, 0, multiple_of=16)
    with pytest.raises(InputError, match="too small"):
        check_size(-16, 512, multiple_of=16)
    with pytest.raises(InputError, match="width 4096 is larger than the supported maximum of 2048"):
        check_size(512, 4096, multiple_of=16)
    with pytest.raises(InputError, match="height must be an integer"):
        check_size(512.0, 512, multiple_of=16)
    with pytest.raises(InputError, match="multiple_of must be a positive integer"):
        check_size(512, 512, multiple_of=0)


# --------------------------------------------------------------------------------------------
# The shipped example mask
# --------------------------------------------------------------------------------------------


def test_example_mask_is_a_palette_face():
    with Image.open(EXAMPLE_MASK) as image:
        assert image.mode == "P" and image.size == (512, 512)
    ids = load_mask(EXAMPLE_MASK)
    expected = _ids("background", "face skin", "nose", "left eye", "right eye", "left eyebrow", "right eyebrow",
                    "left ear", "right ear", "inner mouth", "upper lip", "lower lip", "hair", "neck", "cloth")
    assert present_classes(ids) == sorted(expected)


def test_example_mask_is_what_the_script_draws():
    from facemogle.example_mask import draw_example_mask

    np.testing.assert_array_equal(draw_example_mask(), load_mask(EXAMPLE_MASK))
