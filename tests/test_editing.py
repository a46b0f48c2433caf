"""Editing a photo through its mask (facemogle.editing, FaceMoGLEPipeline.edit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facemogle.editing import edit_region, feathered_alpha, grow_region, plan_edit, work_size
from facemogle.errors import InputError
from facemogle.eval.edit_benchmark import EDIT_REGIONS, changed_class_iou, scripted_edit
from facemogle.labels import class_id
from facemogle.masks import load_mask
from facemogle.specs import load_pipeline

HAIR = class_id("hair")


@pytest.fixture(scope="module")
def random_pipe():
    return load_pipeline("tiny-random", seed=0)


@pytest.fixture(scope="module")
def face(mini_dataset_dir):
    """A held-out photo with its ground-truth mask and a scripted edit of it (hair shrunk)."""
    from facemogle.data.datasets import index_dataset

    record = index_dataset(mini_dataset_dir, layout="folder").split("val")[0]
    photo = Image.open(record.image).convert("RGB")
    source = load_mask(record.mask)
    return photo, source, scripted_edit(source, "hair-shrunk")


def test_region_is_the_change_plus_named_classes_grown():
    source = np.zeros((40, 40), np.uint8)
    source[10:20, 10:20] = HAIR
    edited = source.copy()
    edited[10:20, 18:20] = 0  # hair shrunk by two columns
    assert edit_region(source, edited, grow=0).sum() == 20
    grown = edit_region(source, edited, grow=3)
    assert grown.sum() == (10 + 6) * (2 + 6) and grown[7, 15] and not grown[6, 15]
    with_hair = edit_region(source, edited, [HAIR], grow=0)
    assert with_hair.sum() == 100  # every pixel that is hair in either mask
    alpha = feathered_alpha(grow_region(with_hair, 4), 4)
    assert alpha[~grow_region(with_hair, 4)].max() == 0 and alpha[15, 15] == 1 and 0 < alpha[7, 15] < 1
    assert work_size(512, 384, 128, 16) == (128, 96) and work_size(100, 1000, 128, 16) == (16, 128)


def test_outside_the_region_the_photo_is_kept_bit_for_bit(random_pipe, face):
    photo, source, edited = face
    out = random_pipe.edit(photo, edited, source_mask=source, seed=3, num_inference_steps=3, watermark=False)
    result, pixels = np.asarray(out.images[0]), np.asarray(photo)
    assert result.shape == pixels.shape and out.region.shape == source.shape
    assert 0 < out.region.mean() < 0.5 and (out.region >= (edited != source)).all()
    assert np.array_equal(result[~out.region], pixels[~out.region])
    assert np.abs(result[out.region].astype(int) - pixels[out.region]).mean() > 5  # the region was redrawn
    # a photo that is not square, nor a multiple of the token size, keeps its own size
    crop, crop_source, crop_edited = photo.crop((0, 0, 500, 300)), source[:300, :500], edited[:300, :500]
    out = random_pipe.edit(crop, crop_edited, source_mask=crop_source, seed=3, num_inference_steps=2, watermark=False)
    assert out.images[0].size == (500, 300)
    assert np.array_equal(np.asarray(out.images[0])[~out.region], np.asarray(crop)[~out.region])


def test_same_seed_same_edit_and_strength(random_pipe, face):
    photo, source, edited = face
    call = dict(source_mask=source, num_inference_steps=4, output_type="np")
    first = random_pipe.edit(photo, edited, seed=1, **call).images
    assert np.array_equal(first, random_pipe.edit(photo, edited, seed=1, **call).images)
    assert not np.array_equal(first, random_pipe.edit(photo, edited, seed=2, **call).images)
    assert np.array_equal(random_pipe.edit(photo, edited, strength=0.0, seed=1, **call).images, np.asarray(photo))
    half = random_pipe.edit(photo, edited, strength=0.5, seed=1, **call)
    region = half.region
    assert np.array_equal(half.images[~region], np.asarray(photo)[~region])
    # starting from the partly noised photo stays closer to it than drawing from noise
    distance = lambda image: np.abs(image[region].astype(int) - np.asarray(photo)[region]).mean()  # noqa: E731
    assert distance(half.images) < distance(first)


def test_every_model_spec_edits(golden_dir, face):
    photo, source, edited = face
    flux = load_pipeline("flux-dev", base=golden_dir / "tiny-flux", lora=golden_dir / "pytorch_lora_weights.safetensors",
                         mogle=golden_dir / "global_local_mask_moe.pt", device="cpu")
    for pipe in (flux, load_pipeline("tiny")):
        out = pipe.edit(photo, edited, source_mask=source, seed=0, num_inference_steps=2, size=64, watermark=False)
        assert out.images[0].size == photo.size
        assert np.array_equal(np.asarray(out.images[0])[~out.region], np.asarray(photo)[~out.region])


def test_an_edited_photo_carries_the_mark_unless_asked_not_to(random_pipe, face):
    from facemogle.eval.watermark_benchmark import psnr
    from facemogle.provenance import read_mark

    photo, source, edited = face
    marked = random_pipe.edit(photo, edited, source_mask=source, seed=3, num_inference_steps=2)
    plain = random_pipe.edit(photo, edited, source_mask=source, seed=3, num_inference_steps=2, watermark=False)
    reading = read_mark(marked.images[0])
    assert reading.present and reading.model_spec == "tiny-random" and not read_mark(plain.images[0]).present
    assert '"edit": true' in marked.images[0].info["parameters"]
    assert psnr(marked.images[0], plain.images[0]) >= 38


@pytest.mark.parametrize("kind", ["hair-shrunk", "eyeglasses-removed", "hair-grown"])
def test_the_shipped_model_follows_the_edited_mask(mini_dataset_dir, kind):
    """On held-out photos, the shipped parser reads the edited classes back in the changed pixels
    better from the result than from the unedited photo (mouth-opened does not hold yet: README)."""
    from facemogle.data.datasets import index_dataset
    from facemogle.parser import load_parser

    pipe, parser = load_pipeline("tiny"), load_parser()
    before, after = [], []
    for record in index_dataset(mini_dataset_dir, layout="folder").split("val"):
        source = load_mask(record.mask)
        edited = scripted_edit(source, kind)
        if edited is None:
            continue
        photo = Image.open(record.image).convert("RGB")
        out = pipe.edit(photo, edited, source_mask=source, regions=EDIT_REGIONS.get(kind), seed=0, watermark=False)
        before.append(changed_class_iou(parser.parse(photo), edited, source))
        after.append(changed_class_iou(parser.parse(out.images[0]), edited, source))
        if len(after) == 3:
            break
    assert len(after) == 3
    assert np.mean(after) > np.mean(before) + 0.05, (before, after)


def test_bad_edits_are_refused_before_any_model_runs(tmp_path, face):
    photo, source, edited = face
    with pytest.raises(InputError, match="aspect ratios differ"):
        plan_edit(photo, edited[:, :400], source_mask=source)
    with pytest.raises(InputError, match="nothing to edit"):
        plan_edit(photo, source, source_mask=source)
    assert plan_edit(photo, source, source_mask=source, regions="hair").region.sum() > 0
    with pytest.raises(InputError, match="unknown class name.*'hairdo'"):
        plan_edit(photo, edited, source_mask=source, regions=["hair", "hairdo"])
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputError):
        plan_edit(tmp_path / "empty.jpg", edited, source_mask=source)
    pipe = load_pipeline("tiny-random", seed=0)
    for kwargs, message in ((dict(strength=1.5), "strength"), (dict(strength=float("nan")), "strength"),
                            (dict(grow=-1), "grow"), (dict(output_type="pt"), "output_type"),
                            (dict(seed=1, generator=torch.Generator()), "seed or generator")):
        with pytest.raises(InputError, match=message):
            pipe.edit(photo, edited, source_mask=source, **kwargs)
