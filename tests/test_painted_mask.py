"""facemogle.painted_mask: a browser canvas -> class ids (brush edges snapped, bad canvases refused)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from facemogle.errors import MaskError
from facemogle.example_mask import draw_example_mask
from facemogle.labels import PALETTE, class_id
from facemogle.masks import render_mask
from facemogle.painted_mask import canvas_from_ids, ids_from_canvas, palette_hex


def test_a_canvas_made_from_a_mask_reads_back_as_that_mask():
    ids = draw_example_mask()
    value = canvas_from_ids(ids)
    assert value["composite"].shape == (512, 512, 4)
    assert np.array_equal(ids_from_canvas(value["composite"]), ids)
    assert (ids_from_canvas(value["background"]) == class_id("background")).all()  # the backdrop: background
    assert len(palette_hex()) == 19 and palette_hex()[class_id("hair")] == "#%02x%02x%02x" % PALETTE[class_id("hair")]


def test_antialiased_brush_edges_snap_to_the_nearest_class_colour():
    ids = draw_example_mask()
    image = Image.fromarray(render_mask(ids)).convert("RGBA")
    stroke = Image.new("RGBA", image.size, (0, 0, 0, 0))
    ImageDraw.Draw(stroke).line((100, 60, 400, 70), fill=PALETTE[class_id("hat")] + (255,), width=18)
    stroke = stroke.resize((128, 128), Image.Resampling.BILINEAR).resize((512, 512), Image.Resampling.BILINEAR)
    painted = np.asarray(Image.alpha_composite(image, stroke))  # soft, blended edges like a browser brush
    out = ids_from_canvas(painted)
    assert (out[62:68, 200:300] == class_id("hat")).all()  # the stroke's core
    assert set(np.unique(out)) <= set(np.unique(ids)) | {class_id("hat")}  # blends became class ids, no others
    assert (out[400:, 10] == ids[400:, 10]).all()  # away from the stroke: unchanged


def test_erased_pixels_are_background():
    canvas = canvas_from_ids(draw_example_mask())["composite"].copy()
    canvas[200:260, 200:300, 3] = 0  # the eraser leaves transparent pixels on the layer
    assert (ids_from_canvas(canvas)[200:260, 200:300] == class_id("background")).all()


@pytest.mark.parametrize("canvas,message", [
    (np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8), "are not class colours"),
    (np.zeros((512, 300, 3), np.uint8), "must be square"),
    (np.zeros((8, 8, 3), np.uint8), "each side must be in 32..4096"),
    (np.zeros((64, 64), np.uint8), "RGB or RGBA"),
    (np.zeros((64, 64, 3), np.float32), "8-bit"),
])
def test_a_canvas_that_is_not_a_mask_is_refused_by_name(canvas, message):
    with pytest.raises(MaskError, match=message):
        ids_from_canvas(canvas)
