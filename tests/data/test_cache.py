"""The latent cache: contents, reuse, invalidation, resumable building, dropout on cached tensors."""

from __future__ import annotations

import os

import pytest
import torch
from tolerances import BATCH_ROUNDOFF, ROUNDOFF

from facemogle.data.cache import CacheSettings, CachedTrainingDataset, LatentCache, build_cache
from facemogle.data.datasets import FaceDataset, index_dataset
from facemogle.labels import NUM_CLASSES, NUM_CONDITIONS
from facemogle.latents import encode_condition_images, encode_images
from facemogle.masks import condition_images
from facemogle.specs import load_pipeline
from facemogle.train.bench import write_synthetic_dataset

RESOLUTION = 32


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("tiny-random", seed=0)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is faster than two (and the test machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def faces(tmp_path):
    root = write_synthetic_dataset(tmp_path / "data", num_samples=5, resolution=RESOLUTION)
    return FaceDataset(index_dataset(root, num_val=0).split("train"), RESOLUTION)


def settings(**overrides) -> CacheSettings:
    return CacheSettings(**{"resolution": RESOLUTION, "shard_size": 2, "encode_batch_size": 4, **overrides})


def test_cached_values_are_the_encodings(pipe, faces, tmp_path):
    cache = build_cache(pipe, faces, tmp_path / "cache", settings(), progress=False)
    assert cache.stats["computed_samples"] == 5 and cache.num_samples == 5
    assert len(cache.manifest["sample_shards"]) == 3  # 5 samples, shards of 2
    item = faces[3]
    sample = cache.sample(3)
    # the cache encoded in batches of 4; here one face at a time: equal up to kernel round-off
    torch.testing.assert_close(sample["image_tokens"], encode_images(pipe.vae, item["image"][None])[0], **ROUNDOFF)
    assert (sample["image_tokens"] - cache.sample(2)["image_tokens"]).abs().max() > 0.1  # faces differ
    expected = encode_condition_images(pipe.vae, condition_images(item["mask"].numpy())[None])[0]  # (E, N, D)
    tokens = cache.condition_tokens(sample)
    assert tokens.shape == (NUM_CONDITIONS, *cache.token_shape)
    torch.testing.assert_close(tokens, expected, **ROUNDOFF)  # absent classes = blank latents
    absent = (~sample["local_present"]).nonzero()[:, 0]
    assert len(absent) > 0 and all(torch.equal(tokens[1 + c], cache.blank_local_tokens) for c in absent)
    sentence = cache.sentences.index(item["captions"][0])
    assert int(sentence) in sample["caption_ids"].tolist()
    embeds, pooled = cache.text(sentence)
    ref_embeds, ref_pooled, _ = pipe.encode_prompt(item["captions"][0], prompt_2=None, max_sequence_length=512)
    torch.testing.assert_close(embeds, ref_embeds[0], **BATCH_ROUNDOFF)  # cached in batches of sentences
    torch.testing.assert_close(pooled, ref_pooled[0], **ROUNDOFF)


def test_second_build_computes_nothing_and_changes_invalidate(pipe, faces, tmp_path):
    first = build_cache(pipe, faces, tmp_path / "cache", settings(), progress=False)
    again = build_cache(pipe, faces, tmp_path / "cache", settings(), progress=False)
    assert again.stats["computed_samples"] == 0 and again.stats["computed_sentences"] == 0
    assert again.key == first.key

    # data: one image file rewritten (new mtime) -> another cache, everything recomputed
    image = faces.records[0].image
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = build_cache(pipe, faces, tmp_path / "cache", settings(), progress=False)
    assert touched.key != first.key and touched.stats["computed_samples"] == 5
    # data settings (resolution-independent ones too) -> another cache
    assert build_cache(pipe, faces, tmp_path / "cache", settings(dtype="bfloat16"), progress=False).key != touched.key
    # model: other VAE / text encoder weights -> another cache
    other = load_pipeline("tiny-random", seed=1)
    changed = build_cache(other, faces, tmp_path / "cache", settings(), progress=False)
    assert changed.key != touched.key and changed.stats["computed_samples"] == 5


def test_an_interrupted_build_computes_only_the_missing_shards(pipe, faces, tmp_path):
    cache = build_cache(pipe, faces, tmp_path / "cache", settings(), progress=False)
    reference = cache.sample(4)["image_tokens"].clone()
    os.remove(cache.directory / "manifest.json")  # as if killed before the end...
    os.remove(cache.directory / "samples-00002.safetensors")  # ...and before the last shard
    (cache.directory / "samples-00001.safetensors").write_bytes(b"half a file")  # a damaged shard is redone
    resumed = build_cache(pipe, faces, tmp_path / "cache", settings(), progress=False)
    assert resumed.stats["computed_samples"] == 3  # shard 1 (2 samples) + shard 2 (1 sample)
    assert resumed.stats["computed_sentences"] == 0
    assert torch.equal(resumed.sample(4)["image_tokens"], reference)


def test_dropout_on_cached_tensors_has_the_configured_rates(pipe, faces, tmp_path):
    cache = build_cache(pipe, faces, tmp_path / "cache", settings(), progress=False)
    dataset = CachedTrainingDataset(cache, seed=0, text_dropout=0.3, mask_dropout=0.2)
    positions = range(400)
    items = [dataset[p] for p in positions]
    text_rate = sum(bool(item["text_dropped"]) for item in items) / len(items)
    local_rate = torch.stack([item["local_dropped"] for item in items]).float().mean().item()
    assert abs(text_rate - 0.3) < 0.07  # 3 binomial standard deviations (0.023)
    assert abs(local_rate - 0.2) < 0.015  # 7600 coins: sd 0.0046
    for item in items[:40]:
        sample = cache.sample(item["index"])
        assert torch.equal(item["condition_tokens"][0], sample["global_tokens"].float())  # global never dropped
        dropped = item["local_dropped"] | ~sample["local_present"]
        for c in range(NUM_CLASSES):  # blank exactly where dropped or absent
            assert torch.equal(item["condition_tokens"][1 + c], cache.blank_local_tokens.float()) == bool(dropped[c])
        if item["text_dropped"]:
            assert torch.equal(item["prompt_embeds"], cache.empty_prompt_embeds.float())
        else:
            assert not torch.equal(item["prompt_embeds"], cache.empty_prompt_embeds.float())
    again = CachedTrainingDataset(LatentCache(cache.directory, preload=False), seed=0, text_dropout=0.3,
                                  mask_dropout=0.2)[17]  # seeded, and the lazy reader gives the same tensors
    assert all(torch.equal(again[k], items[17][k]) for k in ("condition_tokens", "prompt_embeds", "noise"))
    none = CachedTrainingDataset(cache, seed=0, text_dropout=0.0, mask_dropout=0.0)
    assert not any(none[p]["local_dropped"].any() or none[p]["text_dropped"] for p in range(50))


def test_empty_mask_dropout_blanks_every_map_at_its_rate(pipe, faces, tmp_path):
    """A text-only sample: the global map too becomes the blank (all-background) latents, which are
    what the pipeline encodes for ``mask=None``."""
    cache = build_cache(pipe, faces, tmp_path / "cache", settings(), progress=False)
    dataset = CachedTrainingDataset(cache, seed=0, text_dropout=0.0, mask_dropout=0.0, empty_mask_dropout=0.25)
    items = [dataset[p] for p in range(400)]
    emptied = [bool(item["mask_emptied"]) for item in items]
    assert abs(sum(emptied) / len(items) - 0.25) < 0.07
    blank = cache.blank_local_tokens.float()
    for item, empty in zip(items[:60], emptied[:60]):
        all_blank = all(torch.equal(item["condition_tokens"][e], blank) for e in range(NUM_CONDITIONS))
        assert all_blank == empty
    empty_mask = pipe.encode_masks([None], RESOLUTION, RESOLUTION)[0]  # (E, N, D): every map black
    # the same black image, through the conv VAE in a batch of another size: equal up to kernel choice
    torch.testing.assert_close(empty_mask.float(), blank.expand_as(empty_mask), **ROUNDOFF)
    assert not torch.allclose(empty_mask.float(), cache.sample(0)["global_tokens"].float().expand_as(empty_mask),
                              atol=1e-2)  # a face's own map is something else
    # the coin is drawn last: turning it on leaves every other draw of a position unchanged
    plain = CachedTrainingDataset(cache, seed=0, text_dropout=0.0, mask_dropout=0.0)
    for p in range(20):
        assert torch.equal(plain[p]["noise"], items[p]["noise"]) and plain[p]["timestep"] == items[p]["timestep"]


def test_part_tokens_are_the_masks_own_parts_whatever_was_dropped(pipe, faces, tmp_path):
    """The loss weighs a sample's small parts by its own mask, also when the sample is trained
    without it (text-only): ``part_tokens`` ignore every dropout draw."""
    cache = build_cache(pipe, faces, tmp_path / "cache", settings(), progress=False)
    parts = [1, 13]  # face skin and hair: in every synthetic face
    dataset = CachedTrainingDataset(cache, seed=0, text_dropout=0.0, mask_dropout=0.5, empty_mask_dropout=0.5,
                                    part_classes=parts)
    items = [dataset[p] for p in range(30)]
    assert {bool(i["mask_emptied"]) for i in items} == {True, False}  # both kinds are checked
    for item in items:
        expected = cache.covered_tokens(cache.sample(int(item["index"])), parts)
        assert item["part_tokens"].dtype == torch.bool and torch.equal(item["part_tokens"], expected)
    assert any(item["part_tokens"].any() for item in items)
    absent = [c for c in range(NUM_CLASSES) if not cache.sample(0)["local_present"][c]]
    assert not cache.covered_tokens(cache.sample(0), absent[:1]).any()
    assert "part_tokens" not in CachedTrainingDataset(cache, seed=0, text_dropout=0.0, mask_dropout=0.0)[0]
