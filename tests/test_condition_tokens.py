"""facemogle.condition_tokens: the one mask -> condition tokens path (generation, training, cache)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facemogle.condition_tokens import encode_blank, encode_mask_latents, present_classes
from facemogle.labels import NUM_CLASSES, NUM_CONDITIONS
from facemogle.latents import encode_condition_images
from facemogle.masks import condition_images, resize_mask
from facemogle.specs import load_pipeline


@pytest.fixture(scope="module")
def vae():
    return load_pipeline("tiny-random", seed=0).vae


@pytest.fixture(scope="module")
def masks(example_mask_ids):
    face = resize_mask(example_mask_ids, 64)
    top_half = face.copy()
    top_half[32:] = 0  # fewer classes
    return np.stack([face, top_half, np.zeros_like(face)])  # (3, 64, 64); the last is the empty mask


def counting(vae, monkeypatch) -> list[int]:
    calls, encode = [], vae.encode

    def spy(x, *a, **k):
        calls.append(x.shape[0])
        return encode(x, *a, **k)

    monkeypatch.setattr(vae, "encode", spy)
    return calls


def test_dense_tokens_are_the_encodings_of_all_twenty_images(vae, masks, monkeypatch):
    calls = counting(vae, monkeypatch)
    latents = encode_mask_latents(vae, masks, chunk_size=8)
    present = present_classes(masks)
    assert present.shape == (3, NUM_CLASSES) and present[2].tolist() == [True] + [False] * (NUM_CLASSES - 1)
    # only the colour maps, the classes present and one blank map reach the VAE
    assert sum(calls) == 3 + int(present.sum()) + 1 and max(calls) <= 8
    dense = latents.dense()  # (M, E, N, D)
    reference = encode_condition_images(vae, condition_images(masks), chunk_size=60)  # every map encoded
    assert dense.shape == reference.shape == (3, NUM_CONDITIONS, 16, 64)
    torch.testing.assert_close(dense, reference, atol=1e-5, rtol=1e-5)
    absent = ~present
    assert torch.equal(dense[:, 1:][absent], latents.blank_tokens.expand(int(absent.sum()), 16, 64))
    # the empty mask's colour map is black: its tokens are the blank ones too
    torch.testing.assert_close(dense[2, 0], latents.blank_tokens, atol=1e-5, rtol=1e-5)


def test_dropped_local_masks_become_blank_and_the_global_map_stays(vae, masks):
    latents = encode_mask_latents(vae, masks[:2])
    dropped = torch.zeros(2, NUM_CLASSES, dtype=torch.bool)
    dropped[0, [1, 12]] = True  # face skin and hair of the first mask
    dropped[1, 0] = True
    plain, with_dropout = latents.dense(), latents.dense(dropped)
    changed = (with_dropout != plain).flatten(2).any(dim=2)  # (2, E)
    assert changed[:, 0].tolist() == [False, False]  # the global map is never dropped
    assert changed[:, 1:].tolist() == dropped.tolist()
    assert all(torch.equal(with_dropout[m, 1 + c], latents.blank_tokens) for m, c in dropped.nonzero().tolist())


def test_given_blank_tokens_are_used_and_fixed_shape_pads_every_call(vae, masks, monkeypatch):
    blank = encode_blank(vae, 64, 64)
    calls = counting(vae, monkeypatch)
    latents = encode_mask_latents(vae, masks[:1], blank_tokens=blank, chunk_size=6, fixed_shape=True)
    count = 1 + int(present_classes(masks[:1]).sum())
    assert calls == [6] * -(-count // 6)  # no blank encoded, every VAE call the same size
    assert torch.equal(latents.blank_tokens, blank)
    again = encode_mask_latents(vae, masks[:1], chunk_size=40)
    torch.testing.assert_close(latents.dense(), again.dense(), atol=1e-5, rtol=1e-5)  # chunking changes nothing


def test_no_mask_is_every_map_blank_unlike_an_all_background_mask(vae, masks, monkeypatch):
    """``empty`` rows (text-only: no mask) get the blank map everywhere; an all-background *mask*
    keeps its white background map. The pipeline's mask=None is such a row."""
    calls = counting(vae, monkeypatch)
    latents = encode_mask_latents(vae, masks, empty=[False, False, True])
    dense = latents.dense()
    assert not latents.local_present[2].any()
    assert all(torch.equal(dense[2, e], latents.blank_tokens) for e in range(NUM_CONDITIONS))
    assert sum(calls) == 2 + int(present_classes(masks[:2]).sum()) + 1  # nothing of the empty row's maps
    torch.testing.assert_close(dense[:2], encode_mask_latents(vae, masks[:2]).dense(), atol=1e-5, rtol=1e-5)
    background_mask = encode_mask_latents(vae, masks[2:]).dense()[0]  # all background, given as a mask
    assert not torch.allclose(background_mask[1], latents.blank_tokens, atol=1e-3)  # its background map is white

    pipe = load_pipeline("tiny-random", seed=0)
    none, zeros = pipe.encode_masks([None, np.zeros((64, 64), np.uint8)], 64, 64)
    assert torch.allclose(none, none[:1].expand_as(none), atol=1e-5)  # every map the same (blank) map
    assert not torch.allclose(zeros[1], none[1], atol=1e-3)


def test_covered_tokens_are_the_tokens_a_class_touches(example_mask_ids):
    """On the bundled model's patch codec (local: one 128 px face token is 8 x 8 px) the tokens read
    off the encoded class maps are exactly the blocks holding a pixel of the class, mask by mask."""
    from facemogle.labels import class_ids

    vae = load_pipeline("tiny").vae
    face = resize_mask(example_mask_ids, 128)
    eyes, mouth = class_ids(["left eye", "right eye"]), class_ids(["inner mouth", "upper lip", "lower lip"])
    no_mouth = face.copy()
    no_mouth[np.isin(face, mouth)] = class_ids(["face skin"])[0]
    ids = np.stack([face, no_mouth, np.zeros_like(face)])  # the last one: an empty mask
    latents = encode_mask_latents(vae, ids)

    def pooled(classes):
        hit = np.isin(ids, classes).reshape(3, 16, 8, 16, 8).any(axis=(2, 4))  # (3, 16, 16) token blocks
        return torch.from_numpy(hit.reshape(3, 256))

    for classes in (eyes, mouth, eyes + mouth):
        expected = pooled(classes)
        assert torch.equal(latents.covered_tokens(classes), expected)
    assert 2 <= int(pooled(eyes)[0].sum()) <= 12 and not pooled(mouth)[1].any() and not pooled(eyes)[2].any()
    assert not latents.covered_tokens(class_ids(["hat"])).any()  # a class no mask has
