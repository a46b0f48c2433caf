"""facemogle.provenance: the invisible watermark, the PNG metadata, and reading both back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from facemogle.errors import InputError
from facemogle.eval.watermark_benchmark import ATTACKS, psnr
from facemogle.provenance import (DIGITAL_SOURCE_TYPE, MIN_MATCHING_BITS, mark_image, payload_bits, read_mark,
                                  read_provenance, save_image, xmp_packet)
from facemogle.specs import load_pipeline


@pytest.fixture(scope="module")
def face():
    pipe = load_pipeline("tiny")
    return pipe(prompt="This person has blond hair.", seed=5, num_inference_steps=6, watermark=False).images[0]


def test_the_mark_decodes_its_payload_and_survives_common_handling(face):
    assert face.size == (128, 128) and not read_mark(face).readable  # the library cannot read 128 px
    marked = mark_image(face, "tiny", {"seed": 5})
    assert marked.size == (512, 512)  # upscaled to be marked
    assert psnr(marked, face.resize((512, 512), Image.Resampling.LANCZOS)) >= 38
    for name in ("none", "jpeg90", "jpeg75", "resize50", "screenshot"):
        reading = read_mark(ATTACKS[name](marked))
        assert reading.present and reading.model_spec == "tiny" and reading.matching_bits >= MIN_MATCHING_BITS, name
    assert payload_bits("tiny") != payload_bits("flux-dev") and len(payload_bits("tiny")) == 48


def test_real_photos_read_as_unmarked(mini_dataset_dir):
    photos = sorted((mini_dataset_dir / "images").iterdir())[:20]
    readings = [read_mark(Image.open(p)) for p in photos]
    assert not any(r.present for r in readings) and max(r.matching_bits for r in readings) < MIN_MATCHING_BITS


def test_metadata_round_trips_in_png_and_the_mark_in_jpeg(face, tmp_path):
    marked = mark_image(face, "tiny", {"seed": 5, "prompt": "é blond"})
    found = read_provenance(save_image(marked, tmp_path / "face.png"))
    assert found.marked and found.trained_algorithmic_media
    assert found.parameters == {"model_spec": "tiny", "seed": 5, "prompt": "é blond"}
    assert DIGITAL_SOURCE_TYPE in xmp_packet()
    jpeg = read_provenance(save_image(marked, tmp_path / "face.jpg"))
    assert jpeg.marked and jpeg.parameters is None  # JPEG keeps the mark, not the PNG chunks
    plain = read_provenance(save_image(face.resize((512, 512)), tmp_path / "plain.png"))
    assert not plain.marked and not plain.trained_algorithmic_media and plain.parameters is None
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(InputError, match="not a readable image"):
        read_provenance(tmp_path / "bad.png")


def test_pipeline_pil_outputs_are_marked_and_the_others_are_not():
    pipe = load_pipeline("tiny-random", seed=0)
    call = dict(prompt=["a", "b"], seed=[7, 9], num_inference_steps=1)
    marked = pipe(**call).images
    assert [read_mark(m).model_spec for m in marked] == ["tiny-random", "tiny-random"]
    assert [json.loads(m.info["parameters"])["seed"] for m in marked] == [7, 9]
    assert json.loads(marked[1].info["parameters"])["prompt"] == "b"
    plain = pipe(**call, watermark=False).images
    assert plain[0].size == (64, 64) and "parameters" not in plain[0].info
    array = pipe(**call, output_type="np").images  # never marked
    np.testing.assert_allclose(array[0], np.asarray(plain[0]) / 255, atol=1 / 255 + 1e-6)
