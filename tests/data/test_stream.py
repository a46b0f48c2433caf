"""The seeded sample stream: permutations, per-position draws, batches across processes."""

from __future__ import annotations

import torch
from accelerate.data_loader import BatchSamplerShard

from facemogle.data.stream import EpochPermutations, PositionBatchSampler, draw_for_position


def test_every_epoch_is_a_permutation_and_epochs_differ():
    order = EpochPermutations(10, seed=1)
    epochs = [[order.sample_index(e * 10 + i) for i in range(10)] for e in range(3)]
    assert all(sorted(epoch) == list(range(10)) for epoch in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    again = EpochPermutations(10, seed=1)
    assert [again.sample_index(p) for p in (25, 3, 17)] == [epochs[2][5], epochs[0][3], epochs[1][7]]
    assert [EpochPermutations(10, seed=2).sample_index(i) for i in range(10)] != epochs[0]


def test_draws_depend_only_on_seed_and_position():
    kwargs = dict(token_shape=(4, 8), num_local=19, num_captions=3, text_dropout=0.5, mask_dropout=0.5)
    a, b, c = (draw_for_position(0, 7, **kwargs), draw_for_position(0, 7, **kwargs), draw_for_position(0, 8, **kwargs))
    assert torch.equal(a.noise, b.noise) and a.timestep == b.timestep and a.caption == b.caption
    assert torch.equal(a.local_dropped, b.local_dropped) and a.text_dropped == b.text_dropped
    assert not torch.equal(a.noise, c.noise)
    assert 0 < float(a.timestep) < 1 and a.noise.shape == (4, 8) and a.local_dropped.shape == (19,)
    assert not draw_for_position(0, 7, **{**kwargs, "mask_dropout": 0.0}).local_dropped.any()


def test_two_processes_see_the_samples_of_one_process_with_twice_the_batch():
    """accelerate deals batch k to process k % P: each step of P processes x b covers the same
    stream positions as one process with batch P*b."""
    steps, b = 5, 3
    single = list(PositionBatchSampler(start=6, batch_size=2 * b, num_batches=steps))
    shards = [list(BatchSamplerShard(PositionBatchSampler(6, b, 2 * steps), num_processes=2, process_index=r))
              for r in range(2)]
    assert all(len(shard) == steps for shard in shards)
    for step in range(steps):
        assert shards[0][step] + shards[1][step] == single[step]


def test_empty_mask_coin_has_its_rate_and_leaves_the_other_draws_alone():
    kwargs = dict(token_shape=(4, 8), num_local=19, num_captions=3, text_dropout=0.5, mask_dropout=0.5)
    with_coin = [draw_for_position(3, p, **kwargs, empty_mask_dropout=0.3) for p in range(500)]
    without = [draw_for_position(3, p, **kwargs) for p in range(500)]
    assert abs(sum(d.mask_emptied for d in with_coin) / 500 - 0.3) < 0.065  # 3 sd
    assert not any(d.mask_emptied for d in without)
    for a, b in zip(with_coin[:50], without[:50]):
        assert torch.equal(a.noise, b.noise) and torch.equal(a.local_dropped, b.local_dropped)
        assert (a.timestep, a.caption, a.text_dropped) == (b.timestep, b.caption, b.text_dropped)


def test_raw_stream_empties_the_mask_to_background():
    import numpy as np

    from facemogle.data.stream import RawTrainingDataset

    class Faces:
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return {"image": torch.zeros(3, 8, 8, dtype=torch.uint8),
                    "mask": torch.from_numpy(np.full((8, 8), 5, np.uint8)), "captions": ["a"]}

    dataset = RawTrainingDataset(Faces(), seed=0, token_shape=(4, 64), num_local=19, text_dropout=0.0,
                                 mask_dropout=0.0, empty_mask_dropout=0.5)
    items = [dataset[p] for p in range(60)]
    assert 10 < sum(item["mask_emptied"] for item in items) < 50
    for item in items:
        assert int(item["mask"].max()) == (0 if item["mask_emptied"] else 5)


def test_weighted_positions_draw_in_proportion_and_depend_only_on_the_position():
    from facemogle.data.stream import WeightedPositions, sample_order

    order = WeightedPositions([1.0, 3.0, 0.0], seed=5)
    drawn = [order.sample_index(p) for p in range(4000)]
    assert 2 not in drawn  # weight 0: never
    assert abs(drawn.count(1) / 4000 - 0.75) < 0.021  # 3 sd of a binomial share
    again = WeightedPositions([1.0, 3.0, 0.0], seed=5)
    assert [again.sample_index(p) for p in (3999, 7, 1234)] == [drawn[3999], drawn[7], drawn[1234]]
    assert [WeightedPositions([1.0, 3.0, 0.0], seed=6).sample_index(p) for p in range(40)] != drawn[:40]
    assert isinstance(sample_order(3, 5), EpochPermutations)
    assert isinstance(sample_order(3, 5, [1, 1, 1]), WeightedPositions)


def test_weighted_positions_never_draw_a_leading_zero_weight(monkeypatch):
    import torch

    from facemogle.data.stream import WeightedPositions

    order = WeightedPositions([0.0, 0.0, 2.0, 0.0, 1.0], seed=0)
    assert {order.sample_index(p) for p in range(200)} == {2, 4}
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.zeros(1, dtype=torch.float64))  # u = 0 exactly
    assert order.sample_index(0) == 2


def test_weighted_positions_refuse_bad_weights():
    import pytest

    from facemogle.data.stream import WeightedPositions
    from facemogle.errors import InputError

    for bad in ([], [0.0, 0.0], [1.0, -1.0], [1.0, float("nan")], [float("inf")]):
        with pytest.raises(InputError):
            WeightedPositions(bad, seed=0)


def test_first_caption_coin_picks_sentence_zero_and_leaves_the_other_draws_alone():
    kwargs = dict(token_shape=(4, 8), num_local=19, num_captions=10, text_dropout=0.1, mask_dropout=0.1,
                  empty_mask_dropout=0.2)
    plain = [draw_for_position(2, p, **kwargs) for p in range(600)]
    half = [draw_for_position(2, p, **kwargs, first_caption_share=0.5) for p in range(600)]
    always = [draw_for_position(2, p, **kwargs, first_caption_share=1.0) for p in range(600)]
    assert all(d.caption == 0 for d in always)
    zero_share = sum(d.caption == 0 for d in half) / 600
    assert abs(zero_share - (0.5 + 0.5 / 10)) < 0.062  # 3 sd
    for a, b in zip(plain, half):
        assert torch.equal(a.noise, b.noise) and torch.equal(a.local_dropped, b.local_dropped)
        assert (a.timestep, a.text_dropped, a.mask_emptied) == (b.timestep, b.text_dropped, b.mask_emptied)
        assert b.caption in (0, a.caption)  # either the coin's sentence 0 or the draw without it
